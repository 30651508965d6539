"""GPT-2's byte-level BPE in core TensorFlow ops: `TFEncoder.encode` / `decode`, exact to `gpt2tf.encoder`.

The export puts this in the SavedModel so that it takes and returns text with nothing beside it: no Python
tokenizer, no tensorflow-text. Everything here is built from the vocabulary in Python at export time and stored as
constant tensors; at run time only core ops run (unicode_decode, searchsorted, segment ops, a while loop).

**Pre-split.** OpenAI's pattern (see `gpt2tf.encoder.PATTERN`) needs a lookahead, `\\s+(?!\\S)`, that TensorFlow's
RE2 lacks, so the pieces are found from each character's class instead — letter (`\\p{L}`), number (`\\p{N}`),
whitespace (`\\s`) or other, taken from the `regex` module for every code point at export time — with the
pattern's rules written out as where a piece starts:
  - at a change of class, except that a space before a letter, number or other run belongs to that run
    (` ?\\p{L}+` etc.): the piece starts at the space;
  - a whitespace run followed by a non-space is cut before its last character (`\\s+(?!\\S)`), which either
    prefixes the next run (a space) or stands alone (`\\s+`);
  - a contraction (`'s 't 're 've 'm 'll 'd`) is a piece where the pattern can start a match at its apostrophe:
    at the text's start or after a letter, a number or a whitespace character other than a space (after a space or
    other punctuation the apostrophe is inside an "other" run); the piece after it starts fresh.

**BPE.** Every piece is looked up whole first: the pieces that BPE turns into one token (found at export time by
running `gpt2tf.encoder`'s own BPE on every vocabulary entry) need no merging. The rest merge as OpenAI's loop
does, all pieces at once: each round, each piece's lowest-ranked adjacent pair is merged everywhere in it, left to
right without overlap, until no piece has a pair in the merge list.

**Decode** joins the tokens' bytes and replaces invalid UTF-8 by U+FFFD (as `bytes.decode(errors="replace")`).
"""

import numpy as np
import regex
import tensorflow as tf

# Character classes of OpenAI's pre-split pattern.
OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
_CONTRACTIONS_1 = tuple(ord(c) for c in "sdmt")
_CONTRACTIONS_2 = tuple((ord(a), ord(b)) for a, b in ("ll", "ve", "re"))


def class_ranges():
    """(starts, classes): code point ranges [starts[i], starts[i+1]) of one class each, from the `regex` module."""
    every = "".join(map(chr, range(0x110000)))
    classes = np.zeros(0x110000, np.int8)
    for cls, pattern in ((LETTER, r"\p{L}"), (NUMBER, r"\p{N}"), (SPACE, r"\s")):
        for match in regex.finditer(pattern + "+", every):
            classes[match.start() : match.end()] = cls
    starts = np.flatnonzero(np.diff(classes, prepend=-1))
    return starts.astype(np.int32), classes[starts].astype(np.int32)


class TFEncoder(tf.Module):
    """`encode` (strings [batch] -> ids, a RaggedTensor [batch, None] int32) and `decode` (int32 ids [batch, n],
    -1 = padding -> strings [batch]) as TensorFlow functions of constant tables built from `encoder`."""

    def __init__(self, encoder):
        super().__init__(name="tf_encoder")
        starts, classes = class_ranges()
        self._class_starts = tf.constant(starts)
        self._classes = tf.constant(classes)
        token_bytes = [encoder.decode_bytes([i]) for i in range(len(encoder))]
        self._token_bytes = tf.constant(token_bytes, tf.string)
        self._byte_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([bytes([b]) for b in range(256)], tf.string), tf.constant(encoder._byte_ids, tf.int32)
            ),
            default_value=-1,
        )
        # Merges as sorted int64 keys (first * n + second) -> (rank, merged id): searched with searchsorted.
        n = len(encoder)
        self._n = n
        merges = encoder._merges  # [(first, second, merged)] by rank
        keys = np.array([a * n + b for a, b, _ in merges], np.int64)
        order = np.argsort(keys)
        self._merge_keys = tf.constant(keys[order])
        self._merge_ranks = tf.constant(order.astype(np.int32))
        self._merge_ids = tf.constant(np.array([m[2] for m in merges], np.int32)[order])
        # Pieces that BPE leaves as one token: looked up whole (bytes -> id), sorted for searchsorted on hashes.
        whole = [(b, i) for i, b in enumerate(token_bytes) if encoder._bpe([encoder._byte_ids[x] for x in b]) == [i]]
        self._whole = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([b for b, _ in whole], tf.string), tf.constant([i for _, i in whole], tf.int32)
            ),
            default_value=-1,
        )

    # ---- pre-split -------------------------------------------------------------------------------------------

    def _pieces(self, text):
        """text [batch] -> (piece bytes [pieces], the batch row of each piece [pieces]) in order."""
        chars = tf.strings.unicode_decode(text, "UTF-8", errors="replace")
        cp, row = chars.flat_values, tf.cast(chars.value_rowids(), tf.int32)
        cls = tf.gather(self._classes, tf.searchsorted(self._class_starts, cp, side="right") - 1)
        starts_row = tf.concat([[True], row[1:] != row[:-1]], 0)  # the first character of its text

        def shifted(x, by, fill):  # x[i - by] (by > 0) or x[i + |by|], `fill` past the ends
            pad = tf.fill([abs(by)], tf.constant(fill, x.dtype))
            n = tf.shape(x)[0]  # (slicing after padding: the text may be shorter than the shift)
            return tf.concat([pad, x], 0)[:n] if by > 0 else tf.concat([x, pad], 0)[-by:]

        def same_row(by):  # whether i - by (or i + |by|) is in the same text as i
            return shifted(row, by, -1) == row

        prev_cls = tf.where(same_row(1), shifted(cls, 1, -1), -1)
        next_cls = tf.where(same_row(-1), shifted(cls, -1, -1), -1)
        prev_is_space = same_row(1) & (shifted(cp, 1, 0) == 32)
        white = cls == SPACE
        # Contractions: an apostrophe where a match may start, then s/d/m/t or ll/ve/re in the same text.
        nxt1 = tf.where(same_row(-1), shifted(cp, -1, 0), 0)
        nxt2 = tf.where(same_row(-2), shifted(cp, -2, 0), 0)
        may_start = starts_row | (prev_cls == LETTER) | (prev_cls == NUMBER) | ((prev_cls == SPACE) & ~prev_is_space)
        apostrophe = (cp == 39) & may_start
        short = apostrophe & tf.reduce_any(nxt1[:, None] == tf.constant(_CONTRACTIONS_1)[None], axis=1)
        long_ = apostrophe & tf.reduce_any(
            (nxt1[:, None] == tf.constant([a for a, _ in _CONTRACTIONS_2])[None])
            & (nxt2[:, None] == tf.constant([b for _, b in _CONTRACTIONS_2])[None]),
            axis=1,
        )
        inside = shifted(short, 1, False) | shifted(long_, 1, False) | shifted(long_, 2, False)
        after = shifted(short, 2, False) | shifted(long_, 3, False)
        # Where pieces start.
        run_start = starts_row | (prev_cls != cls)
        white_start = white & (run_start | ((next_cls >= 0) & (next_cls != SPACE)))  # a run, or its last character
        other_start = ~white & ~inside & (after | short | long_ | (run_start & ~prev_is_space))
        boundary = white_start | other_start
        first_char = tf.cast(tf.where(boundary)[:, 0], tf.int32)  # [pieces]
        pieces = tf.strings.unicode_encode(tf.RaggedTensor.from_row_starts(cp, first_char), "UTF-8")
        return pieces, tf.gather(row, first_char)

    # ---- BPE -----------------------------------------------------------------------------------------------------

    def _bpe(self, pieces):
        """pieces [p] (bytes) -> ids as (flat values, piece index of each value), pieces in order."""
        whole = self._whole.lookup(pieces)  # [p]: the token, or -1
        todo = tf.cast(tf.where(whole < 0)[:, 0], tf.int32)
        rest = tf.gather(pieces, todo)
        raw = tf.strings.bytes_split(rest)  # [rest, None] one-byte strings
        values = self._byte_table.lookup(raw.flat_values)
        owner = tf.cast(raw.value_rowids(), tf.int32)  # index into `rest`
        big = tf.int32.max
        n_rest = tf.shape(rest)[0]

        def merge_round(values, owner):
            count = tf.shape(values)[0]
            last = tf.concat([owner[1:] != owner[:-1], [True]], 0)
            key = tf.cast(values, tf.int64) * self._n + tf.cast(tf.concat([values[1:], [0]], 0), tf.int64)
            at = tf.minimum(tf.searchsorted(self._merge_keys, key), tf.size(self._merge_keys) - 1)
            found = (tf.gather(self._merge_keys, at) == key) & ~last
            rank = tf.where(found, tf.gather(self._merge_ranks, at), big)
            best = tf.math.unsorted_segment_min(rank, owner, n_rest)
            match = found & (rank == tf.gather(best, owner))
            # Runs of matches (only a pair of equal tokens can overlap itself) merge at even offsets from their start.
            index = tf.range(count)
            run = tf.cumsum(tf.cast(~match, tf.int32))
            first = tf.math.unsorted_segment_min(tf.where(match, index, big), run, count + 1)
            take = match & ((index - tf.gather(first, run)) % 2 == 0)
            values = tf.where(take, tf.gather(self._merge_ids, at), values)
            keep = ~tf.concat([[False], take[:-1]], 0)
            return tf.boolean_mask(values, keep), tf.boolean_mask(owner, keep), tf.reduce_any(match)

        def body(values, owner, _):
            return merge_round(values, owner)

        values, owner, _ = tf.while_loop(
            lambda v, o, more: more,
            body,
            (values, owner, tf.size(values) > 0),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])),
        )
        # Put the whole-token pieces and the merged ones back in piece order.
        done = tf.cast(tf.where(whole >= 0)[:, 0], tf.int32)
        all_values = tf.concat([tf.gather(whole, done), values], 0)
        all_owner = tf.concat([done, tf.gather(todo, owner)], 0)
        order = tf.argsort(all_owner, stable=True)
        return tf.gather(all_values, order), tf.gather(all_owner, order)

    # ---- the API ---------------------------------------------------------------------------------------------------

    def encode(self, text):
        """strings [batch] -> token ids, a RaggedTensor [batch, None] of int32."""
        text = tf.convert_to_tensor(text, tf.string)
        pieces, piece_row = self._pieces(text)
        ids, piece = self._bpe(pieces)
        return tf.RaggedTensor.from_value_rowids(ids, tf.gather(piece_row, piece), nrows=tf.shape(text)[0])

    def decode(self, tokens):
        """int32 ids [batch, n] (-1 = padding, ignored) -> strings [batch]; invalid UTF-8 becomes U+FFFD."""
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        valid = tokens >= 0
        ragged = tf.ragged.boolean_mask(tokens, valid)
        joined = tf.strings.reduce_join(tf.gather(self._token_bytes, ragged), axis=-1)
        return tf.strings.unicode_transcode(
            joined, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD, replace_control_characters=False
        )
