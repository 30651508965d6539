"""A self-contained SavedModel: text in, text out, with the exact BPE and the library's decode path inside.

The SavedModel's signatures:

- `serving_default`: `prompt` string [batch] -> `text` [batch], the completion, with the sampling settings fixed
  at export time (`--max_new_tokens`, `--temperature`, `--top_k`, `--top_p`, `--seed`: random per call unless given).
- `generate`: `prompt` and, per row, `max_new_tokens` int32, `temperature` float32 (0 = greedy), `top_k` int32
  (0 = off), `top_p` float32, `seed` int32, and the numeric decoding controls: `presence_penalty`,
  `frequency_penalty` float32 (0 = off), `no_repeat_ngram_size` int32 (0 = off), `min_p` float32 (0 = off),
  `typical_p` float32 (1 = off) -> `text`, `tokens` int32 [batch, max(max_new_tokens)] (-1 after a row's end),
  `num_tokens` int32 [batch].
- `beam_search`: `prompt`, per row `max_new_tokens` int32 and `no_repeat_ngram_size` int32 -> the `--num_beams`
  best hypotheses of each prompt, best first: `text` [batch, num_beams], `tokens` int32 [batch, num_beams,
  max(max_new_tokens)] (-1 after a hypothesis's end), `scores` float32 [batch, num_beams] (transformers'
  `sequences_scores`); beam count, `--length_penalty` and `--early_stopping` are fixed at export
  (`gpt2tf.decode.beams`: transformers' rules).
- `encode`: `text` -> `tokens` [batch, n] (-1 padded), `num_tokens`; `decode`: `tokens` (-1 ignored) -> `text`.
- `score`: `tokens` [batch, n] (right-padded with -1) -> `logprobs` [batch, n]: log p(token_i | tokens before it),
  0 at position 0 and at padding.

Generation is the library's own: the prompts prepared by the one prompt rule (`gpt2tf.decode.prompts`, in graph
ops), the model run by the runner's compiled pieces and the tokens chosen by its `decode_loop`
(`gpt2tf.decode.runner`), with the same filters, the same noise keyed by (seed, sample 0, step) and the same stop at
<|endoftext|>, so `generate` gives the tokens `gpt2tf.decode.generate` gives. The runner's cache here is tensors (the
batch size is known only when the SavedModel runs) and its kernels TensorFlow's own (a SavedModel must run without
gpt2tf). A prompt longer than `n_ctx - max_new_tokens` keeps its last tokens; `max_new_tokens` is clamped to
1..`--max_new_tokens_limit`. Only core ops are used.
"""

import tensorflow as tf

from gpt2tf.decode import beams
from gpt2tf.decode.prompts import prepare_prompts_in_graph
from gpt2tf.decode.runner import decode_loop, off_controls, runner_for
from gpt2tf.export.tf_encoder import TFEncoder
from gpt2tf.layout import EOT_ID, PROMPT_BUCKET
from gpt2tf.score import Scorer
from gpt2tf.settings import MAX_SEED

SIGNATURES = ("serving_default", "generate", "beam_search", "encode", "decode", "score")
CONTROLS = (  # the generate signature's numeric controls, per row: (name, dtype, off)
    ("presence_penalty", tf.float32, 0.0),
    ("frequency_penalty", tf.float32, 0.0),
    ("no_repeat_ngram_size", tf.int32, 0),
    ("min_p", tf.float32, 0.0),
    ("typical_p", tf.float32, 1.0),
)


class Exported(tf.Module):
    """The tf.Module the SavedModel holds (also usable directly, without saving)."""

    def __init__(self, model, encoder, config):
        super().__init__(name="gpt2tf")
        self.config = config
        self.hparams = model.hparams
        self.compute_dtype = model.compute_dtype
        n_ctx = model.hparams.n_ctx
        limit = config.max_new_tokens_limit or max(n_ctx // 2, config.max_new_tokens)
        self.limit = min(limit, n_ctx - 1)
        # Keras variables' TensorFlow variables: what the SavedModel saves and the functions read.
        self.weights = [w.value for w in model.weights]
        self.tokenizer = TFEncoder(encoder)
        self._runner = runner_for(model, jit_compile=not config.no_xla, kernels=None)
        self._scorer = Scorer(model, jit_compile=not config.no_xla)

    def _prompts(self, prompt, max_new):
        """The prompts' tokens [batch, width] (right-padded to whole buckets) and their lengths [batch]."""
        tokens, kept = prepare_prompts_in_graph(self.tokenizer.encode(prompt), max_new, self.hparams.n_ctx)
        width = tf.minimum(_round_up(tf.reduce_max(kept), PROMPT_BUCKET), self.hparams.n_ctx)
        return tf.pad(tokens, [[0, 0], [0, width - tf.shape(tokens)[1]]]), kept, width

    def _generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed, controls=None):
        hp = self.hparams
        batch = tf.shape(prompt)[0]
        max_new = tf.clip_by_value(max_new_tokens, 1, self.limit)
        tokens, kept, width = self._prompts(prompt, max_new)
        length = tf.minimum(hp.n_ctx, tf.maximum(width, _round_up(tf.reduce_max(kept + max_new), PROMPT_BUCKET)))
        shape = tf.stack([batch, hp.n_head, length, hp.head_size])
        cache = tuple(
            (tf.zeros(shape, self.compute_dtype), tf.zeros(shape, self.compute_dtype)) for _ in range(hp.n_layer)
        )
        logits, cache = self._runner.prefill_tensors(tokens, kept, cache)
        settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=tf.ones([batch]))
        if controls is not None:  # each row's tokens so far, for the bans and penalties to read
            history = tf.pad(tokens, [[0, 0], [0, length - tf.shape(tokens)[1]]])
            controls = dict(
                off_controls(batch),
                history=history,
                presence_penalty=controls["presence_penalty"],
                frequency_penalty=controls["frequency_penalty"],
                no_repeat_ngram_size=tf.maximum(controls["no_repeat_ngram_size"], 0),
                min_p=tf.clip_by_value(controls["min_p"], 0.0, 1.0),
                typical_p=tf.clip_by_value(controls["typical_p"], 1e-6, 1.0),
            )
        out = decode_loop(
            self._runner.step_tensors,
            cache,
            count=tf.reduce_max(max_new),
            logits=logits,
            seen=tf.zeros([batch, hp.n_vocab], tf.bool),
            decoding=tf.ones([batch], tf.bool),
            position=kept,
            steps=tf.zeros([batch], tf.int32),
            limit=max_new,
            stop_at_eos=tf.ones([batch], tf.bool),
            logprobs=tf.zeros([batch], tf.bool),
            row_seeds=tf.stack([seed, tf.zeros_like(seed)], axis=1),  # (seed, sample 0), as the library keys it
            settings=settings,
            max_length=length,
            last_step=False,
            controls=controls,
        )
        # A row's tokens: what it chose while decoding, but not the <|endoftext|> that ended it; -1 after.
        chosen = tf.transpose(tf.where(out["live"] & (out["tokens"] != EOT_ID), out["tokens"], -1))  # [batch, run]
        steps = tf.reduce_max(max_new)
        new = tf.reshape(tf.pad(chosen, [[0, 0], [0, steps - tf.shape(chosen)[1]]], constant_values=-1), [batch, steps])
        return {
            "text": self.tokenizer.decode(new),
            "tokens": new,
            "num_tokens": tf.reduce_sum(tf.cast(new >= 0, tf.int32), axis=1),
        }

    # ---- the signatures ----------------------------------------------------------------------------------

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="prompt"),
            tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([None], tf.float32, name="temperature"),
            tf.TensorSpec([None], tf.int32, name="top_k"),
            tf.TensorSpec([None], tf.float32, name="top_p"),
            tf.TensorSpec([None], tf.int32, name="seed"),
            *(tf.TensorSpec([None], dtype, name=name) for name, dtype, _ in CONTROLS),
        ]
    )
    def generate(
        self,
        prompt,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        presence_penalty,
        frequency_penalty,
        no_repeat_ngram_size,
        min_p,
        typical_p,
    ):
        controls = dict(
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            min_p=min_p,
            typical_p=typical_p,
        )
        return self._generate(prompt, max_new_tokens, temperature, top_k, top_p, seed, controls)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="prompt"),
            tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([None], tf.int32, name="no_repeat_ngram_size"),
        ]
    )
    def beam_search(self, prompt, max_new_tokens, no_repeat_ngram_size):
        return self._beam_search(prompt, max_new_tokens, no_repeat_ngram_size)

    def _beam_search(self, prompt, max_new_tokens, no_repeat_ngram_size):
        """Every prompt's search, all in one graph: the same bookkeeping (`gpt2tf.decode.beams`) and the same
        candidates as the library's engine, on a cache of tensors whose rows are gathered as beams continue."""
        hp, k = self.hparams, self.config.num_beams
        batch = tf.shape(prompt)[0]
        max_new = tf.clip_by_value(max_new_tokens, 1, self.limit)
        tokens, kept, width = self._prompts(prompt, max_new)
        steps = tf.reduce_max(max_new)
        length = tf.minimum(hp.n_ctx, tf.maximum(width, _round_up(tf.reduce_max(kept) + steps, PROMPT_BUCKET)))
        shape = tf.stack([batch, hp.n_head, length, hp.head_size])
        cache = tuple(
            (tf.zeros(shape, self.compute_dtype), tf.zeros(shape, self.compute_dtype)) for _ in range(hp.n_layer)
        )
        logits, cache = self._runner.prefill_tensors(tokens, kept, cache)
        rows = tf.repeat(tf.range(batch), k)  # beam j of prompt b is row b * k + j, each from its prompt's prefill
        cache = tf.nest.map_structure(lambda t: tf.gather(t, rows), cache)
        logits, position = tf.gather(logits, rows), tf.gather(kept, rows)
        history = tf.gather(tf.pad(tokens, [[0, 0], [0, length - tf.shape(tokens)[1]]]), rows)
        ngram = tf.gather(tf.maximum(no_repeat_ngram_size, 0), rows)
        state = beams.beam_init(batch, k, steps)
        early = {"true": True, "false": False}.get(self.config.early_stopping, self.config.early_stopping)

        def body(state, done, logits, position, history, cache):
            log_p = beams.beam_log_probs(logits, history=history, lengths=position, no_repeat_ngram_size=ngram)
            values, ids = beams.candidates(log_p, 2 * k)
            new, parents, chosen, ended = beams.beam_step(
                state,
                tf.reshape(values, [batch, k, 2 * k]),
                tf.reshape(ids, [batch, k, 2 * k]),
                max_new_tokens=max_new,
                length_penalty=self.config.length_penalty,
                early_stopping=early,
            )
            # A group that is done keeps its state (its rows run on, unread).
            state = {
                name: value if name == "generated" else _where_groups(done, state[name], value)
                for name, value in new.items()
            }
            source = tf.reshape(parents + tf.range(batch)[:, None] * k, [-1])
            token = tf.reshape(chosen, [-1])
            cache = tf.nest.map_structure(lambda t: tf.gather(t, source), cache)
            history = tf.tensor_scatter_nd_update(
                tf.gather(history, source),
                tf.stack([tf.range(batch * k), tf.minimum(position, length - 1)], -1),
                token,
            )
            logits, cache = self._runner.step_tensors(token, tf.minimum(position, length - 1), cache)
            return state, done | ended, logits, position + 1, history, cache

        state, *_ = tf.while_loop(
            lambda state, done, *_: ~tf.reduce_all(done),
            body,
            (state, tf.zeros([batch], tf.bool), logits, position, history, cache),
            shape_invariants=(
                tf.nest.map_structure(lambda t: tf.TensorShape([None] * len(t.shape)), state),
                tf.TensorShape([None]),
                logits.shape,
                position.shape,
                tf.TensorShape([None, None]),
                tf.nest.map_structure(lambda t: tf.TensorShape([None] * 4), cache),
            ),
        )
        positions = tf.range(steps)[None, None, :]
        ids = state["finished_tokens"]
        ended_at_eot = tf.gather(ids, tf.maximum(state["finished_lengths"] - 1, 0), batch_dims=2) == EOT_ID
        kept_length = state["finished_lengths"] - tf.cast(ended_at_eot, tf.int32)  # <|endoftext|> left out
        ids = tf.where(positions < kept_length[:, :, None], ids, -1)
        text = tf.reshape(self.tokenizer.decode(tf.reshape(ids, [batch * k, steps])), [batch, k])
        return {"text": text, "tokens": ids, "scores": state["finished_scores"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt")])
    def serving_default(self, prompt):
        batch = tf.shape(prompt)[0]
        if self.config.seed is None:
            seed = tf.random.uniform([batch], 0, MAX_SEED, tf.int32)
        else:
            seed = tf.fill([batch], tf.constant(self.config.seed, tf.int32))
        out = self._generate(
            prompt,
            tf.fill([batch], self.config.max_new_tokens),
            tf.fill([batch], tf.constant(self.config.temperature, tf.float32)),
            tf.fill([batch], self.config.top_k),
            tf.fill([batch], tf.constant(self.config.top_p, tf.float32)),
            seed,
        )
        return {"text": out["text"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def encode(self, text):
        ids = self.tokenizer.encode(text)
        return {"tokens": ids.to_tensor(-1), "num_tokens": tf.cast(ids.row_lengths(), tf.int32)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
    def decode(self, tokens):
        return {"text": self.tokenizer.decode(tokens)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
    def score(self, tokens):
        n, n_ctx = tf.shape(tokens)[1], self.hparams.n_ctx
        tf.debugging.assert_less_equal(n, n_ctx, message=f"score takes at most n_ctx = {n_ctx} tokens a row")
        real = tokens >= 0
        padded = tf.pad(tf.where(real, tokens, 0), [[0, 0], [0, tf.maximum(2 - n, 0)]])
        log_p = self._scorer.score_batch(padded)["log_p"]
        log_p = tf.concat([tf.zeros_like(log_p[:, :1]), log_p], axis=1)[:, :n]
        return {"logprobs": tf.where(real, log_p, 0.0)}


def _where_groups(done, old, new):
    """Per group (the first axis): `old` where the group is done, else `new`."""
    return tf.where(tf.reshape(done, [-1] + [1] * (len(new.shape) - 1)), old, new)


def _round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


def signatures(module):
    return {name: getattr(module, name) for name in SIGNATURES}
