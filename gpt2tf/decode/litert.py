"""Generating with a LiteRT export (`export.py --format litert`) without TensorFlow: LiteRT's CompiledModel runs
`model.tflite`, NumPy chooses the tokens. Needs only `ai-edge-litert`, numpy and regex (and gpt2tf itself, whose
`gpt2tf generate --model_dir EXPORT_DIR` comes here without starting TensorFlow).

The key/value cache is one LiteRT buffer per layer and kind, bound as both input and output of every signature, so
each call updates it in place (as LiteRT-LM runs the same file). A prompt is prefilled in chunks, each through the
largest `prefill_N` signature it fills or the smallest it fits (padded as LiteRT-LM pads: token 0 at position 0),
and the chunk's logits after its last real token give the first new token; then one decode call per token, through
the smallest `decode_W` signature whose W slots hold the sequence so far (`decode`, the whole cache, after them).

Tokens are chosen as the library chooses them (`gpt2tf.decode.filters`): greedy is the first largest logit;
sampling divides by the temperature, keeps the top k (ties at the k-th kept), then the smallest set of most likely
tokens whose mass reaches top_p, and draws from NumPy's generator seeded by (seed, sample): the same distribution
as the library, not the same draws. The prompt rule (`gpt2tf.decode.prompts`) and stop strings
(`gpt2tf.decode.stops`) are the library's own.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from gpt2tf.decode.prompts import prepare_prompt
from gpt2tf.decode.stops import StopScanner
from gpt2tf.errors import GPT2TFError, first_line
from gpt2tf.layout import EOT_ID, LITERT_FILE, LITERT_INFO


def is_litert_export(path):
    """Whether `path` is a dir holding a LiteRT export's model (or is such a `.tflite` file)."""
    if not path:
        return False
    path = Path(path)
    return (path / LITERT_FILE).is_file() or (path.suffix == ".tflite" and path.is_file())


def quiet_exit():
    """Keep LiteRT's log lines from its teardown at the process's exit out of a command's stderr."""
    import atexit

    atexit.register(lambda: os.dup2(os.open(os.devnull, os.O_WRONLY), 2))


@contextlib.contextmanager
def _quiet_stderr():
    """LiteRT's runtime logs INFO lines to the process's stderr while it loads a model: keep them out of the
    user's terminal (in a temporary file, yielded: its last lines say why a load failed)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield None
        return
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _check_file(path):
    """Refuse a file LiteRT could not read whole (truncated, or not a LiteRT model) before LiteRT reads it: the
    size the export recorded, else every buffer of the flatbuffer within the file."""
    size = path.stat().st_size
    info_file = path.parent / LITERT_INFO
    recorded = None
    if info_file.is_file():
        try:
            recorded = json.loads(info_file.read_text(encoding="utf-8")).get("file_bytes")
        except (OSError, ValueError, AttributeError):
            recorded = None
    if not isinstance(recorded, int):
        recorded = None
    bad = GPT2TFError(
        f"{path} is truncated or not a LiteRT model ({size:,} bytes{f', {recorded:,} expected' if recorded else ''}):"
        f" export it again with `export.py --format litert`"
    )
    if recorded is not None and recorded != size:
        raise bad
    try:
        with open(path, "rb") as file:
            import mmap

            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        from ai_edge_litert import schema_py_generated as schema

        if data[4:8] != b"TFL3":
            raise bad
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.BuffersLength()):
            buffer = model.Buffers(i)
            end = buffer.Offset() + buffer.Size() if buffer.Offset() > 1 else 0
            if (buffer.DataLength() and (buffer.DataAsNumpy().nbytes != buffer.DataLength())) or end > size:
                raise bad
        for i in range(model.SubgraphsLength()):
            model.Subgraphs(i).TensorsLength()
    except GPT2TFError:
        raise
    except Exception:  # a flatbuffer read past its end
        raise bad from None


class LiteRTModel:
    """A LiteRT export, loaded for decoding: `prefill(ids)` -> the next logits, `step(token)` -> the next logits."""

    def __init__(self, path, *, num_threads=None):
        path = Path(path)
        model_file = path if path.suffix == ".tflite" else path / LITERT_FILE
        if not model_file.is_file():
            raise GPT2TFError(f"{path} holds no {LITERT_FILE}: give the dir `export.py --format litert` wrote")
        try:
            from ai_edge_litert import cpu_options, options
            from ai_edge_litert.compiled_model import CompiledModel
        except ImportError:
            raise GPT2TFError(
                "running a LiteRT export needs LiteRT's Python package: pip install ai-edge-litert"
            ) from None
        _check_file(model_file)  # LiteRT crashes (a segmentation fault) on a truncated flatbuffer
        threads = num_threads or os.cpu_count() or 1
        model_options = options.Options(cpu_options=cpu_options.CpuOptions(num_threads=threads))
        with _quiet_stderr() as log:
            try:
                self._model = CompiledModel.from_file(str(model_file), options=model_options)
                signatures = self._model.get_signature_list()
            except Exception as err:  # LiteRT raises plain RuntimeErrors for a file it cannot read
                said = ""
                if log is not None:
                    log.seek(0)
                    lines = [ln for ln in log.read().decode("utf-8", "replace").splitlines() if "ERROR" in ln]
                    said = lines[-1].strip() if lines else ""
                raise GPT2TFError(
                    f"LiteRT cannot load {model_file} ({said or first_line(err)}): export it again with "
                    f"`export.py --format litert`"
                ) from None
        self.path = model_file
        if "decode" not in signatures:
            raise GPT2TFError(f"{model_file} has no decode signature: it is not a gpt2tf LiteRT export")
        self.lengths = sorted(int(name.split("_", 1)[1]) for name in signatures if name.startswith("prefill_"))
        self.windows = sorted(int(name.split("_", 1)[1]) for name in signatures if name.startswith("decode_"))
        info_file = model_file.parent / LITERT_INFO
        try:
            self.info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
        except (OSError, ValueError):
            raise GPT2TFError(f"{info_file} is not valid JSON: export the model again") from None
        self._inputs, self._outputs, self._logits, self._tokens, self._positions = {}, {}, {}, {}, {}
        with _quiet_stderr():
            names = signatures["decode"]["inputs"]
            self._cache = {
                name: self._model.create_input_buffer_by_name("decode", name)
                for name in names
                if name.startswith("kv_cache_")
            }
            names = ["decode"] + [f"decode_{w}" for w in self.windows] + [f"prefill_{n}" for n in self.lengths]
            for signature in names:
                tokens = self._model.create_input_buffer_by_name(signature, "tokens")
                positions = self._model.create_input_buffer_by_name(signature, "input_pos")
                logits = self._model.create_output_buffer_by_name(signature, "logits")
                self._tokens[signature], self._positions[signature], self._logits[signature] = (
                    tokens,
                    positions,
                    logits,
                )
                self._inputs[signature] = {"tokens": tokens, "input_pos": positions, **self._cache}
                self._outputs[signature] = {"logits": logits, **self._cache}  # the cache: updated in place
            details = self._model.get_input_tensor_details("decode")
            logits_shape = self._model.get_output_tensor_details("decode")["logits"]["shape"]
        cache_shape = [int(d) for d in details["kv_cache_k_0"]["shape"]]
        zeros = np.zeros(cache_shape, np.float32)
        with _quiet_stderr():
            for buffer in self._cache.values():  # a new buffer holds whatever was in memory: NaNs would reach the
                buffer.write(zeros)  # output through the attention's zero weights on the slots not yet written
        self.max_len = cache_shape[2]
        self.n_vocab = int(logits_shape[-1])
        self.n_layer = len(self._cache) // 2
        self.position = 0  # the next slot of the cache
        self._first_run = True

    def close(self):
        """Release LiteRT's model, buffers and environment now (quietly: LiteRT logs as it tears them down)."""
        with _quiet_stderr():
            for buffer in {
                id(b): b for group in (self._inputs, self._outputs) for m in group.values() for b in m.values()
            }.values():
                buffer.destroy()
            environment = self._model.environment
            self._model.close()
            self._inputs = self._outputs = self._cache = {}
            environment.close()

    def _run(self, signature, tokens, positions):
        with _quiet_stderr() if self._first_run else contextlib.nullcontext():  # LiteRT sets up (and logs) here
            self._first_run = False
            self._tokens[signature].write(np.asarray(tokens, np.int32).reshape(1, -1))
            self._positions[signature].write(np.asarray(positions, np.int32))
            self._model.run_by_name(signature, self._inputs[signature], self._outputs[signature])
            return self._logits[signature].read(self.n_vocab, np.float32)

    def prefill(self, ids):
        """Run a prompt from slot 0: the logits after its last token [n_vocab]."""
        ids = [int(t) for t in ids]
        if not 1 <= len(ids) <= self.max_len:
            raise GPT2TFError(f"a prompt of {len(ids)} tokens does not fit the export's cache of {self.max_len}")
        at, logits = 0, None
        while at < len(ids):
            left, room = len(ids) - at, self.max_len - at
            fitting = [n for n in self.lengths if n <= room]
            if not fitting:  # no prefill chunk fits what is left of the cache: one token at a time
                n = real = 1
            elif left >= fitting[-1]:  # the largest chunk, full
                n = real = fitting[-1]
            else:  # the smallest chunk that holds the rest, padded
                n, real = min(x for x in fitting if x >= left), left
            signature = "decode" if n == 1 else f"prefill_{n}"
            tokens = ids[at : at + real] + [0] * (n - real)
            positions = list(range(at, at + real)) + [0] * (n - real)
            logits = self._run(signature, tokens, positions)
            at += real
        self.position = len(ids)
        return logits

    def step(self, token):
        """The next token at the next slot: the logits after it [n_vocab]."""
        if self.position >= self.max_len:
            raise GPT2TFError(f"the export's cache of {self.max_len} tokens is full")
        # The smallest window holding every slot before this one (the step attends over those and itself).
        signature = next((f"decode_{w}" for w in self.windows if w >= self.position), "decode")
        logits = self._run(signature, [int(token)], [self.position])
        self.position += 1
        return logits


def choose(logits, *, temperature, top_k, top_p, rng):
    """The next token from float32 logits [n_vocab], as the library's filters choose it."""
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    top_k = 0 if top_k >= scaled.size else top_k
    if top_k > 0:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    if top_p < 1.0:
        order = np.sort(scaled[np.isfinite(scaled)])[::-1]
        probs = np.exp(order - order[0])
        probs /= probs.sum()
        mass_before = np.cumsum(probs) - probs
        kept = max(1, int(np.sum(mass_before < top_p)))
        scaled = np.where(scaled < order[kept - 1], -np.inf, scaled)
    cdf = np.cumsum(np.exp(scaled - scaled.max()))
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), scaled.size - 1))


def generate_stream(
    model,
    prompts,
    *,
    length,
    config,
    seed,
    nsamples=1,
    stop=(),
    stop_at_eos=True,
    truncate_prompt=False,
    encoder=None,
):
    """Yield `(row, new_ids)` as `gpt2tf.decode.generate.generate_stream` does (row = prompt * nsamples + sample),
    one token at a time, one row after another, on a `LiteRTModel`."""
    n_ctx = model.max_len
    for number, ids in enumerate(prompts):
        ids = prepare_prompt(ids, new_tokens=length, n_ctx=n_ctx, truncate=truncate_prompt)
        for sample in range(nsamples):
            row = number * nsamples + sample
            rng = np.random.default_rng([seed, sample])
            scanner = StopScanner(encoder, stop) if stop and any(stop) else None
            held, released = [], 0
            logits = model.prefill(ids)
            for made in range(length):
                token = choose(logits, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, rng=rng)
                if token == EOT_ID and stop_at_eos:
                    break
                held.append(token)
                if scanner is not None:
                    keep = scanner.add(token)
                    if keep is not None:
                        held = held[:keep]
                        break
                    ready = scanner.safe_end()
                else:
                    ready = len(held)
                if ready > released:
                    yield row, held[released:ready]
                    released = ready
                if made + 1 < length:
                    logits = model.step(token)
            if len(held) > released:
                yield row, held[released:]
