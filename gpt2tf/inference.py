"""Text generation for people: the settings `inference.py` exposes and the loop that prints the samples.

`InferenceConfig` owns the defaults (the script reads them from here); `run` loads the model, builds the prompts,
calls `gpt2tf.sample` and prints plain text or JSON lines, streaming when one sample is produced at a time.
"""

import codecs
import dataclasses
import json
import sys
from pathlib import Path

from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.sample import SamplerConfig, cut_at_stop, generate_stream, random_seed

DEFAULT_TOP_K = 40  # used unless --nucleus or an explicit --top_k says otherwise
DEFAULT_TOP_P = 0.9  # what --nucleus uses when --top_p is not given


@dataclasses.dataclass
class InferenceConfig:
    model_dir: str = ""
    starter: str = None  # the prompt; none (and no prompts file) means unconditional samples
    prompts_file: str = None  # one prompt per line (`\n` escapes allowed), or .jsonl with a "prompt" field
    interactive: bool = False
    output_length: int = 100
    nsamples: int = 1
    batch_size: int = 1
    temperature: float = 1.0
    top_k: int = None
    top_p: float = None
    nucleus: bool = False
    greedy: bool = False
    repetition_penalty: float = 1.0
    seed: int = None
    stop: list = dataclasses.field(default_factory=list)
    no_eos_stop: bool = False
    truncate_prompt: bool = False
    output: str = "plain"  # plain | jsonl
    precision: str = "float32"  # a Keras dtype policy: float32 | mixed_float16 | mixed_bfloat16
    no_xla: bool = False

    def sampler(self):
        """The SamplerConfig these flags mean (`--nucleus` switches top-k off unless --top_k is given)."""
        top_k = self.top_k if self.top_k is not None else (0 if self.nucleus else DEFAULT_TOP_K)
        top_p = self.top_p if self.top_p is not None else (DEFAULT_TOP_P if self.nucleus else 1.0)
        temperature = 0.0 if self.greedy else self.temperature
        return SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=self.repetition_penalty)


def unescape(text):
    r"""Turn `\n`, `\t`, `\\` typed on a command line into the characters (non-ASCII text is left as it is)."""
    return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")


def read_prompts(path):
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GPT2TFError(f"prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GPT2TFError(f"cannot read prompts file {path} as UTF-8 text ({err})") from None
    if path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    prompts.append(str(json.loads(line)["prompt"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise GPT2TFError(f"{path}:{number}: expected a JSON object with a \"prompt\" field") from None
    else:
        prompts = [unescape(line) for line in lines if line.strip()]
    if not prompts:
        raise GPT2TFError(f"prompts file {path} holds no prompts")
    return prompts


def _check(config):
    config.sampler()  # validates temperature, top_k, top_p, repetition_penalty
    for name in ("output_length", "nsamples", "batch_size"):
        if getattr(config, name) <= 0:
            raise GPT2TFError(f"--{name} must be a positive integer, got {getattr(config, name)}")
    if config.output not in ("plain", "jsonl"):
        raise GPT2TFError(f"--output must be plain or jsonl, got {config.output!r}")
    if sum([config.starter is not None, config.prompts_file is not None, config.interactive]) > 1:
        raise GPT2TFError("give only one of --starter, --prompts_file and --interactive")


def run(config, out=sys.stdout):
    """Load the model and print samples for the configured prompts (or prompt interactively)."""
    _check(config)
    prompts = read_prompts(config.prompts_file) if config.prompts_file else None

    from gpt2tf.checkpoint import load_model  # imported here: flag errors above are reported without TensorFlow

    model = load_model(config.model_dir, dtype=None if config.precision == "float32" else config.precision)
    encoder = get_encoder()
    if config.interactive:
        return _interactive(model, encoder, config, out)
    if prompts is None:
        prompts = [config.starter or ""]
    _generate_and_print(model, encoder, config, prompts, out)


def _generate_and_print(model, encoder, config, prompts, out):
    seed = config.seed if config.seed is not None else random_seed()  # drawn here so that jsonl can report it
    stop = [unescape(s) for s in config.stop]
    stream = config.output == "plain" and (config.batch_size == 1 or len(prompts) * config.nsamples == 1)
    decoders = {}  # row -> incremental UTF-8 decoder, for streaming text that splits characters across tokens
    collected = {}
    rows = generate_stream(
        model, [encoder.encode(p) for p in prompts], length=config.output_length, config=config.sampler(),
        seed=seed, nsamples=config.nsamples, batch_size=config.batch_size, stop=stop,
        stop_at_eos=not config.no_eos_stop, truncate_prompt=config.truncate_prompt,
        chunk_steps=1 if stream else 32, jit_compile=not config.no_xla, encoder=encoder)
    current = None
    for row, ids in rows:
        collected.setdefault(row, []).extend(ids)
        if stream:
            if row != current:
                if current is not None:
                    out.write("\n")
                current = row
                _print_header(out, row, config.nsamples)
                decoders[row] = codecs.getincrementaldecoder("utf-8")(errors="replace")
            out.write(decoders[row].decode(encoder.decode_bytes(ids)))
            out.flush()
    if stream and current is not None:
        out.write("\n")
    for row in range(len(prompts) * config.nsamples):
        ids = collected.get(row, [])
        text = cut_at_stop(encoder.decode(ids), stop)
        if config.output == "jsonl":
            out.write(json.dumps({"prompt": prompts[row // config.nsamples], "sample": row % config.nsamples,
                                  "text": text, "tokens": ids, "seed": seed}, ensure_ascii=False) + "\n")
        elif not stream or row not in decoders:  # streamed rows are already out; an empty one gets its header
            _print_header(out, row, config.nsamples)
            out.write(text + "\n")
    out.flush()


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
        _generate_and_print(model, encoder, config, [prompt], out)
