"""A self-contained SavedModel: text in, text out, with the exact BPE and cached decoding inside.

    python export.py --model_dir models/124M --export_dir exported/gpt2      # -> exported/gpt2/1/

`ExportConfig` owns the flags; `export(config)` writes `EXPORT_DIR/VERSION/` (TensorFlow Serving's layout) through
a temporary dir renamed into place. The SavedModel's signatures:

- `serving_default`: `prompt` string [batch] -> `text` [batch], the completion, with the sampling settings fixed
  at export time (`--max_new_tokens`, `--temperature`, `--top_k`, `--top_p`, `--seed`: random per call unless given).
- `generate`: `prompt` and, per row, `max_new_tokens` int32, `temperature` float32 (0 = greedy), `top_k` int32
  (0 = off), `top_p` float32, `seed` int32 -> `text`, `tokens` int32 [batch, max(max_new_tokens)] (-1 after a row's
  end), `num_tokens` int32 [batch].
- `encode`: `text` -> `tokens` [batch, n] (-1 padded), `num_tokens`; `decode`: `tokens` (-1 ignored) -> `text`.
- `score`: `tokens` [batch, n] (right-padded with -1) -> `logprobs` [batch, n]: log p(token_i | tokens before it),
  0 at position 0 and at padding.

Generation is the library's: the same filters (`gpt2tf.filters.choose_tokens`, settings as per-row tensors), the
same noise keyed by (seed, sample 0, step), the same stop at <|endoftext|>, so `generate` gives the tokens
`gpt2tf.sample.generate` gives. A prompt longer than `n_ctx - max_new_tokens` keeps its last tokens (as the
library's `truncate_prompt`); `max_new_tokens` is clamped to 1..`--max_new_tokens_limit`. The model runs as two
XLA-compiled functions — the prompt (right-padded to a multiple of 64 tokens) and one token per row against a
key/value cache of a fixed, bucketed length — inside a plain TensorFlow loop that samples; only core ops are used.
"""

import dataclasses
import os
import shutil
import sys
from pathlib import Path

from gpt2tf.cli import flag
from gpt2tf.errors import GPT2TFError
from gpt2tf.inference import DEFAULT_MODEL_DIR
from gpt2tf.layout import EOT_ID, PROMPT_BUCKET, QUANTIZED_FILE
from gpt2tf.settings import MAX_SEED


@dataclasses.dataclass
class ExportConfig:
    """What `export.py` (and `gpt2tf export`) does; each field is the flag of the same name."""

    model_dir: str = flag(None, f"an OpenAI model dir or a fine-tuning run dir (default: {DEFAULT_MODEL_DIR})")
    export_dir: str = flag(
        None, "where the export goes: EXPORT_DIR/VERSION/ (TF Serving's layout) (default: exported/<model dir name>)"
    )
    version: int = flag(1, "the version subdirectory TF Serving loads (the highest)")
    overwrite: bool = flag(False, "replace an existing version dir")
    max_new_tokens: int = flag(64, "serving_default: tokens generated per prompt")
    temperature: float = flag(1.0, "serving_default: sampling temperature; 0 = greedy")
    top_k: int = flag(40, "serving_default: keep the k most likely tokens; 0 = off")
    top_p: float = flag(1.0, "serving_default: nucleus sampling's p, in (0, 1]; 1 = off")
    seed: int = flag(None, "serving_default: a fixed seed (default: a random one per call)", type=int)
    max_new_tokens_limit: int = flag(
        None, "the most tokens a row may ask for; more is clamped (default: half the model's context)", type=int
    )
    precision: str = flag(
        "float32", "compute dtype (mixed types are for GPUs)", choices=("float32", "mixed_float16", "mixed_bfloat16")
    )
    no_xla: bool = flag(
        False, "export without XLA (jit_compile); TF Serving's GPU images cannot run XLA-compiled functions"
    )


def check(config):
    """The flags' one-line errors, before TensorFlow loads."""
    from gpt2tf.settings import SamplerConfig, check_seed

    if not (isinstance(config.version, int) and config.version >= 1):
        raise GPT2TFError(f"--version must be a positive integer, got {config.version}")
    if config.model_dir and (Path(config.model_dir) / QUANTIZED_FILE).is_file():
        raise GPT2TFError(
            f"{config.model_dir} holds weights quantized for decoding: the export holds float32 "
            f"weights; give the float32 model dir it was made from"
        )
    if config.max_new_tokens < 1:
        raise GPT2TFError(f"--max_new_tokens must be at least 1, got {config.max_new_tokens}")
    if config.max_new_tokens_limit is not None and config.max_new_tokens_limit < config.max_new_tokens:
        raise GPT2TFError(
            f"--max_new_tokens_limit {config.max_new_tokens_limit} is below --max_new_tokens {config.max_new_tokens}"
        )
    SamplerConfig(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
    check_seed(config.seed)
    target = version_dir(config)
    if target.exists() and any(target.iterdir()) and not config.overwrite:
        raise GPT2TFError(
            f"{target} already holds an export: give another --version (TF Serving serves the highest) or --overwrite"
        )
    if target.exists() and not target.is_dir():
        raise GPT2TFError(f"{target} is a file, not a directory: give another --export_dir or --version")


def version_dir(config):
    model_dir = config.model_dir or DEFAULT_MODEL_DIR
    export_dir = config.export_dir or os.path.join("exported", Path(model_dir.rstrip("/\\")).name or "gpt2")
    return Path(export_dir) / str(config.version)


def build_module(model, encoder, config):
    """The tf.Module the SavedModel holds (also usable directly, without saving)."""
    import tensorflow as tf

    from gpt2tf.filters import choose_tokens
    from gpt2tf.score import Scorer
    from gpt2tf.tf_encoder import TFEncoder

    n_ctx, n_vocab = model.hparams.n_ctx, model.hparams.n_vocab
    limit = config.max_new_tokens_limit or max(n_ctx // 2, config.max_new_tokens)
    limit = min(limit, n_ctx - 1)
    jit = not config.no_xla

    class Exported(tf.Module):
        def __init__(self):
            super().__init__(name="gpt2tf")
            # Keras variables' TensorFlow variables: what the SavedModel saves and the functions read.
            self.weights = [w.value for w in model.weights]
            self.tokenizer = TFEncoder(encoder)
            self._scorer = Scorer(model, jit_compile=jit)
            compiled = lambda f: tf.function(f, jit_compile=jit, autograph=False)  # noqa: E731
            self._prefill = compiled(self._prefill_fn)
            self._step = compiled(self._step_fn)

        # ---- the model -------------------------------------------------------------------------------------

        def _prefill_fn(self, tokens, lengths, cache):
            """tokens [B, P] (right-padded), each row written at slots 0..; the logits after each row's last
            token [B, V] and the cache."""
            x, mask = model.embed(tokens, cache_index=tf.constant(0), max_length=tf.shape(cache[0][0])[2])
            new = []
            for block, layer_cache in zip(model.h, cache):
                x, layer_cache = block(x, mask, layer_cache, tf.constant(0))
                new.append(layer_cache)
            last = tf.gather(x, lengths - 1, batch_dims=1)[:, None]
            return model.head(last)[:, 0], tuple(new)

        def _step_fn(self, tokens, positions, cache):
            """One token per row at its own slot `positions` [B]; the next logits [B, V] and the cache."""
            x, mask = model.embed(tokens[:, None], cache_index=positions, max_length=tf.shape(cache[0][0])[2])
            new = []
            for block, layer_cache in zip(model.h, cache):
                x, layer_cache = block(x, mask, layer_cache, positions)
                new.append(layer_cache)
            return model.head(x)[:, 0], tuple(new)

        def _generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
            batch = tf.shape(prompt)[0]
            max_new = tf.clip_by_value(max_new_tokens, 1, limit)
            ids = self.tokenizer.encode(prompt)
            lengths = tf.cast(ids.row_lengths(), tf.int32)
            dense = tf.pad(ids.to_tensor(EOT_ID), [[0, 0], [0, 1]], constant_values=EOT_ID)  # at least 1 wide
            lengths = tf.maximum(lengths, 1)  # an empty prompt starts from <|endoftext|>, as OpenAI's samples do
            keep = tf.minimum(lengths, n_ctx - max_new)  # left-truncated to leave room
            first = lengths - keep
            longest = tf.reduce_max(keep)
            width = tf.minimum(_round_up_t(longest, PROMPT_BUCKET), n_ctx)
            columns = tf.range(width)[None, :]
            source = tf.minimum(first[:, None] + columns, tf.shape(dense)[1] - 1)
            tokens = tf.where(columns < keep[:, None], tf.gather(dense, source, batch_dims=1), 0)
            length = tf.minimum(n_ctx, tf.maximum(width, _round_up_t(tf.reduce_max(keep + max_new), PROMPT_BUCKET)))
            shape = tf.stack([batch, model.hparams.n_head, length, model.hparams.head_size])
            cache = tuple((tf.zeros(shape, model.compute_dtype), tf.zeros(shape, model.compute_dtype)) for _ in model.h)
            logits, cache = self._prefill(tokens, keep, cache)
            steps = tf.reduce_max(max_new)
            row_seeds = tf.stack([seed, tf.zeros_like(seed)], axis=1)  # (seed, sample 0), as the library keys it
            seen = tf.zeros([batch, n_vocab], tf.bool)
            penalty = tf.ones([batch])

            def body(t, done, logits, cache, out):
                token = choose_tokens(
                    logits,
                    seen,
                    row_seeds,
                    tf.fill([batch], t),
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    repetition_penalty=penalty,
                )
                end = token == EOT_ID
                out = out.write(t, tf.where(done | end, -1, token))
                done = done | end | (t + 1 >= max_new)
                positions = tf.minimum(keep + t, length - 1)
                logits, cache = tf.cond(
                    tf.reduce_all(done),
                    lambda: (logits, cache),
                    lambda: self._step(tf.where(done, 0, token), positions, cache),
                )
                return t + 1, done, logits, cache, out

            out = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
            _, _, _, _, out = tf.while_loop(
                lambda t, done, *_: (t < steps) & ~tf.reduce_all(done),
                body,
                (tf.constant(0), tf.zeros([batch], tf.bool), logits, cache, out),
            )
            new = tf.transpose(out.stack())  # [batch, steps run]
            new = tf.pad(new, [[0, 0], [0, steps - tf.shape(new)[1]]], constant_values=-1)
            new = tf.reshape(new, [batch, steps])
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
            ]
        )
        def generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
            return self._generate(prompt, max_new_tokens, temperature, top_k, top_p, seed)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt")])
        def serving_default(self, prompt):
            batch = tf.shape(prompt)[0]
            if config.seed is None:
                seed = tf.random.uniform([batch], 0, MAX_SEED, tf.int32)
            else:
                seed = tf.fill([batch], tf.constant(config.seed, tf.int32))
            out = self._generate(
                prompt,
                tf.fill([batch], config.max_new_tokens),
                tf.fill([batch], tf.constant(config.temperature, tf.float32)),
                tf.fill([batch], config.top_k),
                tf.fill([batch], tf.constant(config.top_p, tf.float32)),
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
            n = tf.shape(tokens)[1]
            tf.debugging.assert_less_equal(n, n_ctx, message=f"score takes at most n_ctx = {n_ctx} tokens a row")
            real = tokens >= 0
            padded = tf.pad(tf.where(real, tokens, 0), [[0, 0], [0, tf.maximum(2 - n, 0)]])
            log_p, _ = self._scorer.score_batch(padded)
            log_p = tf.concat([tf.zeros_like(log_p[:, :1]), log_p], axis=1)[:, :n]
            return {"logprobs": tf.where(real, log_p, 0.0)}

    return Exported()


def _round_up_t(n, multiple):
    return (n + multiple - 1) // multiple * multiple


def signatures(module):
    return {name: getattr(module, name) for name in ("serving_default", "generate", "encode", "decode", "score")}


def export(config, out=sys.stderr):
    """Write the SavedModel; returns its version dir."""
    import tensorflow as tf

    from gpt2tf.encoder import get_encoder
    from gpt2tf.inference import load_for_inference

    check(config)
    target = version_dir(config)
    model = load_for_inference(config.model_dir, precision=config.precision)
    if model.weight_format != "float32":
        raise GPT2TFError(
            f"{config.model_dir} holds {model.weight_format} weights saved for decoding: the export "
            f"holds float32 weights; give the float32 model dir it was made from"
        )
    if config.max_new_tokens >= model.hparams.n_ctx:
        raise GPT2TFError(
            f"--max_new_tokens {config.max_new_tokens} must be below the model's context of {model.hparams.n_ctx}"
        )
    module = build_module(model, get_encoder(), config)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        tf.saved_model.save(module, str(temporary), signatures=signatures(module))
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary, target)
    except OSError as err:
        raise GPT2TFError(
            f"cannot write the export to {target} ({err.strerror}); free space or choose another --export_dir"
        ) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print(f"exported {config.model_dir or DEFAULT_MODEL_DIR} to {target}", file=out)
    return target
