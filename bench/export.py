"""The SavedModel export: its decoding speed against the library's, its first call, export time, size and memory.

    python bench/export.py                      # 124M shape: prompt 64 -> 128 new tokens, batch 1, greedy
    python bench/export.py --size 1558M --only_export

Speed: the export's `generate` signature (loaded with tf.saved_model.load) against `gpt2tf.sample.generate` with
GPT2TF_NATIVE=0 (XLA's own ops on both sides, as the export has no native kernel), alternated, best of --repeat;
both must give the same tokens. Also: the export's time, size on disk and the exporting process's peak memory
(a child process, so the figure is the export's alone), and the first call's time after tf.saved_model.load
(compiled executables are not saved with a SavedModel: the first call compiles). Prints JSON lines.
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

os.environ["GPT2TF_NATIVE"] = "0"
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M")
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only_export", action="store_true", help="measure the export itself, not its speed")
    parser.add_argument("--no_xla", action="store_true", help="export with --no_xla")
    args = parser.parse_args()

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
