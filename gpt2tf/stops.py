"""Stop strings: the one place that decides where generated text ends, on tokens and on text.

A stop string may begin or end inside a token, so the rule works on the text's bytes: `stop_cut` says how many
generated tokens to keep (through the token where a stop string that begins inside a token ends, so the text still
holds it and `cut_at_stop` can cut it exactly); `safe_end` says how many can be released while decoding goes on
(those that cannot be part of a stop string still being written).
"""

import numpy as np


def token_ends(encoder, ids):
    """Byte offset at which each token's text ends."""
    return np.cumsum([len(encoder.decode_bytes([t])) for t in ids])


def stop_cut(encoder, ids, stop):
    """How many tokens to keep before the earliest stop string, or None if there is none.

    Tokens before the one where the stop string begins; if it begins inside a token, through the token where it
    ends, so the text still holds the whole stop string and can be cut exactly.
    """
    text = encoder.decode_bytes(ids)
    hits = sorted((h, len(s.encode("utf-8"))) for s in stop if (h := text.find(s.encode("utf-8"))) >= 0)
    if not hits:
        return None
    first, size = hits[0]
    ends = token_ends(encoder, ids)
    containing = int(np.searchsorted(ends, first, side="right"))  # the token holding byte `first`
    if (ends[containing - 1] if containing else 0) == first:
        return containing
    return int(np.searchsorted(ends, first + size - 1, side="right")) + 1


def safe_end(encoder, ids, stop):
    """How many tokens can be released: those ending before the last (longest stop - 1) bytes."""
    ends = token_ends(encoder, ids)
    if not len(ends):
        return 0
    limit = ends[-1] - (max(len(s.encode("utf-8")) for s in stop) - 1)
    return int(np.searchsorted(ends, limit, side="right"))


def cut_at_stop(text, stop):
    """`text` up to the earliest of the `stop` strings in it."""
    hits = [text.find(s) for s in stop if s and s in text]
    return text[:min(hits)] if hits else text
