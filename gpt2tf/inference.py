"""Text generation for people: the settings `inference.py` exposes and the loop that prints the samples.

`InferenceConfig` owns the defaults (the script reads them from here); `run` loads the model, builds the prompts,
calls `gpt2tf.decode.generate` and prints plain text or JSON lines, streaming when one sample is produced at a time.
"""

import codecs
import dataclasses
import json
import re
import sys
from pathlib import Path

from gpt2tf.config import (
    SAMPLING,
    ControlFlags,
    ModelFlags,
    PrecisionFlags,
    SamplingFlags,
    WeightsFlags,
    flag,
    override,
)
from gpt2tf.decode.stops import cut_at_stop
from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.files import check_output_dir
from gpt2tf.layout import DEFAULT_MODEL_DIR, QUANTIZED_FILE
from gpt2tf.settings import BEAM_OFF, SamplerConfig, check_beams, check_seed, random_seed

DEFAULT_TOP_K = 40  # used unless --nucleus or an explicit --top_k says otherwise
DEFAULT_TOP_P = 0.9  # what --nucleus uses when --top_p is not given


PROMPTS = "prompts (default: one unconditional sample, started from <|endoftext|>)"
LENGTH = "length and batching"
OUTPUT = "output"


@dataclasses.dataclass
class InferenceConfig(ControlFlags, SamplingFlags, WeightsFlags, PrecisionFlags, ModelFlags):
    """What `inference.py` (and `gpt2tf generate`) does; each field is the flag of the same name."""

    model_dir: str = override(
        ModelFlags,
        "model_dir",
        None,
        f"an OpenAI model dir or a fine-tuning run dir (default: {DEFAULT_MODEL_DIR}, "
        f"where `python download_model.py 124M` puts OpenAI's default model)",
    )
    no_xla: bool = override(PrecisionFlags, "no_xla", False, "don't compile the decode loop with XLA")
    temperature: float = override(
        SamplingFlags, "temperature", None, "0 means greedy (default 1, or 0 with --num_beams)"
    )
    top_k: int = override(
        SamplingFlags,
        "top_k",
        None,
        f"keep the k most likely tokens; 0 = off (default {DEFAULT_TOP_K}, or 0 with --nucleus or --num_beams)",
    )
    top_p: float = override(
        SamplingFlags,
        "top_p",
        None,
        f"keep the smallest most-likely set whose mass reaches p, in (0, 1]; 1 = off "
        f"(default 1, or {DEFAULT_TOP_P} with --nucleus)",
    )
    seed: int = override(
        SamplingFlags, "seed", None, "same seed, same text (default: random, printed with --output jsonl)"
    )
    custom_model: str = flag(
        None,
        "a .h5 weights file (finetune.py --output_name) to load onto --model_dir's model instead of its own weights",
    )
    starter: str = flag(None, "the prompt text", group=PROMPTS)
    prompts_file: str = flag(
        None, 'one prompt per line (\\n escapes allowed), or a .jsonl file with a "prompt" field', group=PROMPTS
    )
    interactive: bool = flag(False, "ask for prompts in a loop; output is streamed", group=PROMPTS)
    shard: str = flag(
        None,
        "I/N: generate only shard I of N of --prompts_file (every N-th prompt from the I-th), so "
        "N processes or machines split a file; give them the same --seed",
        metavar="I/N",
        group=PROMPTS,
    )
    nucleus: bool = flag(
        False,
        f"nucleus (top-p) sampling, top_p {DEFAULT_TOP_P} unless --top_p says otherwise; top-k off unless given",
        group=SAMPLING,
    )
    greedy: bool = flag(False, "always take the most likely token (= --temperature 0)", group=SAMPLING)
    repetition_penalty: float = flag(
        1.0, "CTRL-style penalty on tokens already present, > 1 discourages repeats (default: 1, off)", group=SAMPLING
    )
    output_length: int = flag(100, "new tokens per sample", group=LENGTH)
    nsamples: int = flag(1, "samples per prompt", group=LENGTH)
    batch_size: int = flag(1, "samples computed together", group=LENGTH)
    stop: list = flag(
        [],
        "stop a sample at this text (repeatable; \\n escapes allowed, e.g. --stop '\\n\\n')",
        metavar="TEXT",
        group=LENGTH,
    )
    no_eos_stop: bool = flag(False, "keep going past <|endoftext|>", group=LENGTH)
    truncate_prompt: bool = flag(
        False, "drop the start of a prompt that would not fit n_ctx with --output_length (else an error)", group=LENGTH
    )
    output: str = flag(
        "plain",
        "plain text, or JSON lines with index (the prompt's number), prompt, sample, text, tokens and seed",
        choices=("plain", "jsonl"),
        group=OUTPUT,
    )
    save_quantized: str = flag(
        None,
        "write the model loaded with --weights int8|bf16 to this dir, which then loads "
        "as it is (without reading the float32 checkpoint); with no prompt given, only "
        "that",
        metavar="DIR",
        group=OUTPUT,
    )

    def sampler(self):
        """The SamplerConfig these flags mean (`--nucleus` switches top-k off unless --top_k is given)."""
        beams = self.num_beams != 1
        top_k = self.top_k if self.top_k is not None else (0 if self.nucleus or beams else DEFAULT_TOP_K)
        top_p = self.top_p if self.top_p is not None else (DEFAULT_TOP_P if self.nucleus else 1.0)
        temperature = self.temperature if self.temperature is not None else (0.0 if beams else 1.0)
        temperature = 0.0 if self.greedy else temperature
        controls = {k: v for k, v in self.controls().items() if k not in ("logit_bias", "bad_words")}
        return SamplerConfig(
            temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=self.repetition_penalty, **controls
        )


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text):
    r"""Turn `\n`, `\t`, `\r` and `\\` typed on a command line into the characters; other backslashes stay."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def read_prompts(path):
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is not prompt text
    except FileNotFoundError:
        raise GPT2TFError(f"prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GPT2TFError(f"cannot read prompts file {path} as UTF-8 text ({err})") from None
    if path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    prompt = json.loads(line)["prompt"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise GPT2TFError(f'{path}:{number}: expected a JSON object with a "prompt" field') from None
                if not isinstance(prompt, str):
                    raise GPT2TFError(f'{path}:{number}: "prompt" must be a string, got {json.dumps(prompt)}')
                prompts.append(prompt)
    else:
        prompts = [unescape(line) for line in lines if line.strip()]
    if not prompts:
        raise GPT2TFError(f"prompts file {path} holds no prompts")
    return prompts


# What a LiteRT export (`export.py --format litert`) runs: greedy, temperature, top-k and top-p, nothing else.
LITERT_FLAGS = (
    "starter", "prompts_file", "interactive", "shard", "nucleus", "greedy", "temperature", "top_k", "top_p", "seed",
    "output_length", "nsamples", "batch_size", "stop", "no_eos_stop", "truncate_prompt", "output", "model_dir",
)  # fmt: skip


def needs_tensorflow(config):
    """Whether the command starts TensorFlow: not for a LiteRT export, which LiteRT runs alone."""
    from gpt2tf.decode.litert import is_litert_export

    return not is_litert_export(config.model_dir)


def _check_litert(config):
    """A LiteRT export takes the sampling flags only: any other flag changed from its default is an error."""
    for field in dataclasses.fields(config):
        if field.name in LITERT_FLAGS:
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if getattr(config, field.name) != default:
            raise GPT2TFError(
                f"--{field.name} is not available with a LiteRT export ({config.model_dir}), which runs greedy, "
                f"--temperature, --top_k and --top_p only: drop it, or give the model dir the export was made from"
            )


def check(config):
    """Every setting, as one-line errors, before anything slow (TensorFlow, the model) is loaded."""
    if not needs_tensorflow(config):
        _check_litert(config)
    config.check_weights()
    if config.save_quantized:
        if config.weights in (None, "float32"):
            raise GPT2TFError("--save_quantized saves int8 or bf16 weights: give --weights int8 or --weights bf16")
        check_output_dir(config.save_quantized, marker=QUANTIZED_FILE, what="quantized model")
    config.sampler()  # temperature, top_k, top_p, repetition_penalty and the controls
    check_seed(config.seed)
    sampling = dict(dataclasses.asdict(config.sampler()), logit_bias=config.controls()["logit_bias"])
    check_beams(**config.beams, **{k: v for k, v in sampling.items() if k in BEAM_OFF})
    if config.num_beams != 1:
        if config.nsamples != 1:
            raise GPT2TFError("--num_beams gives --num_return_sequences hypotheses per prompt: drop --nsamples")
        if config.stop:
            raise GPT2TFError("--num_beams does not take --stop: drop it, or sample instead")
    for name in ("output_length", "nsamples", "batch_size"):
        if getattr(config, name) <= 0:
            raise GPT2TFError(f"--{name} must be a positive integer, got {getattr(config, name)}")
    if config.output not in ("plain", "jsonl"):
        raise GPT2TFError(f"--output must be plain or jsonl, got {config.output!r}")
    if sum([config.starter is not None, config.prompts_file is not None, config.interactive]) > 1:
        raise GPT2TFError("give only one of --starter, --prompts_file and --interactive")
    if config.shard is not None:
        parse_shard(config.shard)
        if config.prompts_file is None:
            raise GPT2TFError("--shard splits a --prompts_file: give one")


def parse_shard(text):
    """`"I/N"` -> (I, N), with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise GPT2TFError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4 for the first of 4 processes), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def run(config, out=sys.stdout):
    """Load the model and print samples for the configured prompts (or prompt interactively)."""
    check(config)
    prompts = read_prompts(config.prompts_file) if config.prompts_file else None
    indices = None
    if config.shard is not None:
        first, count = parse_shard(config.shard)
        indices = list(range(first, len(prompts), count))
        prompts = [prompts[i] for i in indices]
        if not prompts:
            return  # more shards than prompts: this one has none
    if not needs_tensorflow(config):
        from gpt2tf.decode.litert import LiteRTModel

        model = LiteRTModel(config.model_dir)
    else:
        model = _load(config)
    if config.save_quantized:
        from gpt2tf.formats.quantized import save_quantized

        save_quantized(model, config.save_quantized)
        print(
            f"wrote {config.save_quantized} ({model.weight_format} weights; load it as a --model_dir)", file=sys.stderr
        )
        if prompts is None and config.starter is None and not config.interactive:
            return
    encoder = get_encoder()
    try:
        if config.interactive:
            return _interactive(model, encoder, config, out)
        _generate_and_print(model, encoder, config, prompts or [config.starter or ""], out, indices=indices)
    finally:
        if not needs_tensorflow(config):  # a LiteRT export's runtime, released quietly
            from gpt2tf.decode.litert import quiet_exit

            model.close()
            quiet_exit()


def _load(config):
    from gpt2tf.formats.load import load_for_inference  # TensorFlow: imported once the settings are checked

    return load_for_inference(
        config.model_dir, custom_model=config.custom_model, dtype=config.dtype, weights=config.weights
    )


def _generate_and_print(model, encoder, config, prompts, out, indices=None):
    """`indices`: each prompt's number in the prompts file (a shard's), reported as `index` in JSON lines."""
    seed = config.seed if config.seed is not None else random_seed()  # drawn here so that jsonl can report it
    stop = [unescape(s) for s in config.stop]
    per = config.num_return_sequences if config.num_beams != 1 else config.nsamples  # rows per prompt
    stream = config.output == "plain" and (config.batch_size == 1 or len(prompts) * per == 1)
    decoders = {}  # row -> incremental UTF-8 decoder, for streaming text that splits characters across tokens
    collected = {}
    if not needs_tensorflow(config):  # a LiteRT export: one row after another, each token as it comes
        from gpt2tf.decode.litert import generate_stream as litert_stream

        stream = config.output == "plain"
        rows = litert_stream(
            model,
            [encoder.encode(p) for p in prompts],
            length=config.output_length,
            config=config.sampler(),
            seed=seed,
            nsamples=config.nsamples,
            stop=stop,
            stop_at_eos=not config.no_eos_stop,
            truncate_prompt=config.truncate_prompt,
            encoder=encoder,
        )
    else:
        rows = _library_stream(model, encoder, config, prompts, seed, stop, stream)
    current = None
    for row, ids in rows:
        collected.setdefault(row, []).extend(ids)
        if stream:
            if row != current:
                if current is not None:
                    out.write("\n")
                current = row
                _print_header(out, row, per)
                decoders[row] = codecs.getincrementaldecoder("utf-8")(errors="replace")
            out.write(decoders[row].decode(encoder.decode_bytes(ids)))
            out.flush()
    if stream and current is not None:
        out.write("\n")
    for row in range(len(prompts) * per):
        ids = collected.get(row, [])
        text = cut_at_stop(encoder.decode(ids), stop)
        if config.output == "jsonl":
            number = row // per
            out.write(
                json.dumps(
                    {
                        "index": indices[number] if indices else number,
                        "prompt": prompts[number],
                        "sample": row % per,
                        "text": text,
                        "tokens": ids,
                        "seed": seed,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
        elif not stream or row not in decoders:  # streamed rows are already out; an empty one gets its header
            _print_header(out, row, per)
            out.write(text + "\n")
    out.flush()


def _library_stream(model, encoder, config, prompts, seed, stop, stream):
    from gpt2tf.decode.engine import CHUNK_STEPS  # TensorFlow: imported once the settings are checked
    from gpt2tf.decode.generate import generate_stream

    return generate_stream(
        model,
        [encoder.encode(p) for p in prompts],
        length=config.output_length,
        config=config.sampler(),
        seed=seed,
        nsamples=config.nsamples,
        batch_size=config.batch_size,
        stop=stop,
        stop_at_eos=not config.no_eos_stop,
        truncate_prompt=config.truncate_prompt,
        chunk_steps=None if stream else CHUNK_STEPS,  # streamed: a burst of tokens every STREAM_INTERVAL
        jit_compile=not config.no_xla,
        encoder=encoder,
        logit_bias=config.controls()["logit_bias"],
        bad_words=[unescape(w) for w in config.bad_words],
        **config.beams,
    )


def _print_header(out, row, nsamples):
    label = f"SAMPLE {row % nsamples + 1}" + (f" (prompt {row // nsamples + 1})" if row >= nsamples else "")
    out.write(f"{'=' * 30} {label} {'=' * 30}\n")


def _interactive(model, encoder, config, out):
    out.write("Type a prompt and press Enter (Ctrl-D to quit).\n")
    while True:
        try:
            prompt = input("Model prompt >>> ")
        except EOFError:
            out.write("\n")
            return
        if not prompt.strip():
            out.write("Prompt should not be empty!\n")
            continue
        try:
            _generate_and_print(model, encoder, config, [prompt], out)
        except GPT2TFError as err:  # e.g. a prompt too long for the context: say so and ask again
            out.write(f"error: {err}\n")
