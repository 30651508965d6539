"""The SavedModel export: its decoding speed against the library's, its first call, export time, size and memory.

    python bench/export.py                      # 124M shape: prompt 64 -> 128 new tokens, batch 1, greedy
    python bench/export.py --size 1558M --only_export
    python bench/export.py --litert [--sizes 124M,355M --repeat 3]   # the LiteRT export (export.py --format litert)

Speed: the export's `generate` signature (loaded with tf.saved_model.load) against `gpt2tf.sample.generate` with
GPT2TF_NATIVE=0 (XLA's own ops on both sides, as the export has no native kernel), alternated, best of --repeat;
both must give the same tokens. Also: the export's time, size on disk and the exporting process's peak memory
(a child process, so the figure is the export's alone), and the first call's time after tf.saved_model.load
(compiled executables are not saved with a SavedModel: the first call compiles). Prints JSON lines.

`--litert`: per size and `--quantize`, the converter's time and peak memory (a child process each) and the
file's size beside the weights'; then, at the first size, decode ms/token at batch 1 (prompt 64 tokens, greedy, the
cache as long as the model's context) of LiteRT float32 and int8 (gpt2tf's LiteRT runner, CompiledModel with the
cache in place) beside the library's float32 and int8 decode, taking turns, best of --repeat; and the logits'
error of each format against the library's float32 (every position of 10 prompts prefilled and 64 greedy steps,
the float32 tokens fed to all) with greedy agreement, beside the library's own int8 and bf16 weights.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

ROOT = Path(__file__).resolve().parents[1]


def export_in_child(model_dir, export_dir, extra=()):
    """Run export.py in a child; (seconds, peak RSS of the child in GB, size on disk in GB)."""
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "export.py"),
            "--model_dir",
            model_dir,
            "--export_dir",
            export_dir,
            "--overwrite",
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(result.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # KB -> GB (the largest child so far)
    size = sum(f.stat().st_size for f in Path(export_dir).rglob("*") if f.is_file()) / 1e9
    return seconds, peak, size


def litert_export_in_child(model_dir, export_dir, quantize, max_len=None):
    """export.py --format litert in a child: (seconds, the child's own peak RSS in GB, model.tflite's size in GB)."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "export.py"),
            "--model_dir",
            model_dir,
            "--format",
            "litert",
            "--quantize",
            quantize,
            "--export_dir",
            export_dir,
            "--overwrite",
            *(["--max_len", str(max_len)] if max_len else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        sys.exit(stderr)
    return (
        time.perf_counter() - started,
        usage.ru_maxrss / 1e6,
        (Path(export_dir) / "model.tflite").stat().st_size / 1e9,
    )


def litert_main(args):
    work = Path(tempfile.mkdtemp(dir=os.environ.get("TMPDIR", "/tmp"), prefix="gpt2tf-litert-"))
    try:
        _litert_bench(args, work)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _litert_bench(args, work):
    import numpy as np

    sizes = args.sizes.split(",")
    exported = {}
    for size in sizes:
        model_dir = common.model_dir(size)
        weights_gb = sum(f.stat().st_size for f in Path(model_dir).glob("model.ckpt.data*")) / 1e9
        for quantize in args.quantize.split(",") if size == sizes[0] else ["none"]:
            out = work / f"{size}-{quantize}"
            seconds, peak, file_gb = litert_export_in_child(model_dir, out, quantize, args.max_len)
            exported[(size, quantize)] = out
            print(
                json.dumps(
                    {
                        "bench": "litert_export",
                        "size": size,
                        "quantize": quantize,
                        "max_len": args.max_len,
                        "seconds": round(seconds, 1),
                        "peak_rss_gb": round(peak, 2),
                        "file_gb": round(file_gb, 3),
                        "weights_gb": round(weights_gb, 3),
                        "file_over_float32_weights": round(file_gb / weights_gb, 3),
                    }
                ),
                flush=True,
            )
    import gpt2tf
    from gpt2tf.decode.litert import LiteRTModel
    from gpt2tf.sample import generate

    size = sizes[0]
    model_dir = common.model_dir(size)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(0, 50000, args.prompt_tokens)]
    library = {w: gpt2tf.load_model(model_dir, weights=w) for w in ("float32", "int8", "bf16")}
    litert = {q: LiteRTModel(exported[(size, q)]) for q in args.quantize.split(",")}

    def litert_decode(model, n):
        logits = model.prefill(prompt)
        token = int(np.argmax(logits))
        started = time.perf_counter()
        for _ in range(n - 1):
            token = int(np.argmax(model.step(token)))
        return time.perf_counter() - started

    def library_decode(model, n):
        generate(model, [prompt], length=1, temperature=0)
        started = time.perf_counter()
        generate(model, [prompt], length=n, temperature=0, stop_at_eos=False)
        whole = time.perf_counter() - started
        started = time.perf_counter()
        generate(model, [prompt], length=1, temperature=0)
        return whole - (time.perf_counter() - started)

    runs = {f"litert_{q}": (litert_decode, m) for q, m in litert.items() if q in ("none", "int8")}
    runs.update({f"library_{w}": (library_decode, library[w]) for w in ("float32", "int8")})
    for run, model in runs.values():
        run(model, args.new_tokens)  # warm-up (the library compiles its steps for this length)
    best = dict.fromkeys(runs, math.inf)
    for _ in range(args.repeat):
        for name, (run, model) in runs.items():
            best[name] = min(best[name], run(model, args.new_tokens) / (args.new_tokens - 1))
    figures = {f"{name}_ms_per_token": round(1000 * t, 1) for name, t in best.items()}
    print(
        json.dumps(
            {
                "bench": "litert_decode",
                "size": size,
                "batch": 1,
                "prompt_tokens": len(prompt),
                "cache": litert["none"].max_len,
                **figures,
                "litert_f32_over_library_f32": round(best["litert_none"] / best["library_float32"], 2),
                "litert_int8_over_litert_f32": round(best["litert_int8"] / best["litert_none"], 2)
                if "litert_int8" in best
                else None,
                "library_int8_over_library_f32": round(best["library_int8"] / best["library_float32"], 2),
            }
        ),
        flush=True,
    )
    # Accuracy: every position of 10 prompts (prefill) and 64 greedy steps of the float32 library, fed to all.
    encoder = gpt2tf.get_encoder()
    texts = [
        "The history of the city",
        "In a shocking finding, scientists discovered",
        "def fibonacci(n):",
        "Once upon a time",
        "The quick brown fox",
        "Breaking news:",
        "She picked up the sword and",
        "1, 2, 3, 4,",
        "Q: What is the capital of France?\nA:",
        "It was the best of times,",
    ]
    sequences = []
    for text in texts:
        ids = encoder.encode(text)
        out = generate(library["float32"], [ids], length=64, temperature=0, stop_at_eos=False)[0]
        sequences.append((len(ids), ids + [int(t) for t in out]))
    reference = [library["float32"](np.array([seq], np.int32)).numpy()[0][n - 1 : -1] for n, seq in sequences]

    def litert_logits(model, n, seq):
        got = [model.prefill(seq[:n])]
        for token in seq[n:-1]:
            got.append(model.step(token))
        return np.stack(got)

    def library_logits(model, n, seq):
        return model(np.array([seq], np.int32)).numpy()[0][n - 1 : -1]

    candidates = {f"litert_{q}": (litert_logits, m) for q, m in litert.items()}
    candidates.update({f"library_{w}": (library_logits, library[w]) for w in ("int8", "bf16")})
    for name, (logits_of, model) in candidates.items():
        errors, agree, same_runs = [], 0, 0
        for (n, seq), ref in zip(sequences, reference):
            got = logits_of(model, n, seq)
            errors.append(np.abs(got - ref).ravel())
            matches = np.argmax(got, -1) == np.argmax(ref, -1)
            agree += int(matches.sum())
            same_runs += int(matches.all())
        errors = np.concatenate(errors)
        print(
            json.dumps(
                {
                    "bench": "litert_accuracy",
                    "size": size,
                    "format": name,
                    "mean_abs_logit_error": float(f"{errors.mean():.3g}"),
                    "max_abs_logit_error": float(f"{errors.max():.3g}"),
                    "greedy_agreement": round(agree / sum(len(r) for r in reference), 4),
                    "prompts_all_65_tokens_equal": f"{same_runs}/{len(texts)}",
                }
            ),
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litert", action="store_true", help="the LiteRT export instead of the SavedModel")
    parser.add_argument("--sizes", default="124M,355M", help="--litert: the sizes converted (speed at the first)")
    parser.add_argument("--quantize", default="none,int8,fp16", help="--litert: the formats at the first size")
    parser.add_argument("--max_len", type=int, help="--litert: the cache's length (default: the model's context)")
    parser.add_argument("--size", default="124M")
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only_export", action="store_true", help="measure the export itself, not its speed")
    parser.add_argument("--no_xla", action="store_true", help="export with --no_xla")
    args = parser.parse_args()
    if args.litert:  # the library as a user runs it (its native kernels where they load) against LiteRT
        return litert_main(args)
    os.environ["GPT2TF_NATIVE"] = "0"  # the SavedModel has no native kernel: XLA's own ops on both sides

    model_dir = common.model_dir(args.size)
    weights_gb = sum(f.stat().st_size for f in Path(model_dir).glob("model.ckpt.data*")) / 1e9
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        seconds, peak, size = export_in_child(model_dir, tmp, ["--no_xla"] if args.no_xla else [])
        print(
            json.dumps(
                {
                    "bench": "export",
                    "size": args.size,
                    "export_seconds": round(seconds, 1),
                    "export_gb": round(size, 2),
                    "weights_gb": round(weights_gb, 2),
                    "export_peak_rss_gb": round(peak, 2),
                    "peak_over_weights": round(peak / weights_gb, 2),
                }
            ),
            flush=True,
        )
        if args.only_export:
            return

        import numpy as np
        import tensorflow as tf

        import gpt2tf
        from gpt2tf.sample import generate

        rng = np.random.default_rng(0)
        prompt_ids = [int(t) for t in rng.integers(0, 50000, args.prompt_tokens)]
        encoder = gpt2tf.get_encoder()
        prompt_text = encoder.decode(prompt_ids)
        prompt_ids = encoder.encode(prompt_text)  # what the export's encode gives for that text

        started = time.perf_counter()
        exported = tf.saved_model.load(str(Path(tmp) / "1"))
        loaded = time.perf_counter() - started
        signature = exported.signatures["generate"]
        call_args = dict(
            prompt=tf.constant([prompt_text]),
            max_new_tokens=tf.constant([args.new_tokens]),
            temperature=tf.constant([0.0]),
            top_k=tf.constant([0]),
            top_p=tf.constant([1.0]),
            seed=tf.constant([0]),
        )
        started = time.perf_counter()
        signature(**call_args)["tokens"].numpy()
        first_call = time.perf_counter() - started

        model = gpt2tf.load_model(model_dir)
        runners = {
            "export": lambda: [int(t) for t in signature(**call_args)["tokens"].numpy()[0] if t >= 0],
            "library": lambda: generate(model, [prompt_ids], length=args.new_tokens, temperature=0, stop_at_eos=True)[
                0
            ],
        }
        outputs = {name: run() for name, run in runners.items()}  # warm-up
        best = dict.fromkeys(runners, math.inf)
        for _ in range(args.repeat):
            for name, run in runners.items():
                started = time.perf_counter()
                outputs[name] = run()
                best[name] = min(best[name], time.perf_counter() - started)
        same = outputs["export"] == outputs["library"]
        n = len(outputs["library"])
        print(
            json.dumps(
                {
                    "bench": "export_generate",
                    "size": args.size,
                    "xla": not args.no_xla,
                    "prompt_tokens": len(prompt_ids),
                    "new_tokens": n,
                    "load_seconds": round(loaded, 2),
                    "first_call_seconds": round(first_call, 2),
                    "export_ms_per_token": round(1000 * best["export"] / n, 1),
                    "library_ms_per_token": round(1000 * best["library"] / n, 1),
                    "ratio_export_over_library": round(best["export"] / best["library"], 2),
                    "same_tokens": same,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
