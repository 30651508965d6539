"""Time and peak memory of restoring a GPT-2 checkpoint with `gpt2tf.load_model`.

    python bench/load.py --size 124M
    python bench/load.py --size 1558M
    python bench/load.py --size 1558M --hf      # also the same weights in Hugging Face's layout, alternated

Writes a synthetic checkpoint in OpenAI's exact layout first (in its own process, so the writer's memory is not
counted; reused on later runs), then restores it in a fresh process and prints one JSON line: seconds spent in
`load_model`, the process's peak RSS, and the RSS of TensorFlow alone before loading. The data file is read from the
page cache after the first run, as on a machine that has just downloaded or used the model.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rss_gb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def child(model_dir):
    import tensorflow as tf  # noqa: F401  (imported first so its RSS is the baseline)

    import gpt2tf

    rss_before = _rss_gb()
    start = time.perf_counter()
    model = gpt2tf.load_model(model_dir)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {
                "load_s": round(seconds, 2),
                "peak_rss_gb": round(peak, 2),
                "rss_tf_only_gb": round(rss_before, 2),
                "parameters": int(sum(v.shape.num_elements() for v in model.weights)),
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M", choices=["124M", "355M", "774M", "1558M"])
    parser.add_argument("--dir", help="where the synthetic checkpoint lives (default /tmp/gpt2tf-bench/<size>)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process restores; the best is reported")
    parser.add_argument(
        "--hf",
        action="store_true",
        help="also load the same weights in Hugging Face's layout (converted once, beside the checkpoint), alternating",
    )
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        return child(args._child)

    model_dir = args.dir or f"/tmp/gpt2tf-bench/{args.size}"
    if not os.path.exists(os.path.join(model_dir, "checkpoint")):
        print(f"writing synthetic {args.size} checkpoint to {model_dir} ...", file=sys.stderr)
        code = (
            "import gpt2tf, gpt2tf.hparams as h, sys; "
            f"gpt2tf.write_synthetic_checkpoint({model_dir!r}, h.pretrained({args.size!r}))"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    dirs = {"openai": model_dir}
    if args.hf:
        dirs["hf"] = model_dir.rstrip("/") + "-hf"
        if not os.path.exists(os.path.join(dirs["hf"], "config.json")):
            code = (
                f"import gpt2tf; from gpt2tf.hf import save_hf_checkpoint; "
                f"save_hf_checkpoint(gpt2tf.load_model({model_dir!r}), {dirs['hf']!r})"
            )
            subprocess.run([sys.executable, "-c", code], check=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    runs = {layout: [] for layout in dirs}
    for _ in range(args.repeat):
        for layout, path in dirs.items():  # alternated: a slow spell of the machine hits both
            out = subprocess.run(
                [sys.executable, __file__, "--_child", path], check=True, env=env, capture_output=True, text=True
            ).stdout
            runs[layout].append(json.loads(out.strip().splitlines()[-1]))
    results = {}
    for layout, layout_runs in runs.items():
        best = min(layout_runs, key=lambda r: r["load_s"])
        results[layout] = {
            "bench": "load",
            "size": args.size,
            "layout": layout,
            **best,
            "peak_rss_gb_max": max(r["peak_rss_gb"] for r in layout_runs),
            "load_s_all": [r["load_s"] for r in layout_runs],
        }
    if "hf" in results:
        results["hf"]["time_over_openai"] = round(results["hf"]["load_s"] / results["openai"]["load_s"], 2)
        results["hf"]["peak_over_openai"] = round(
            results["hf"]["peak_rss_gb_max"] / results["openai"]["peak_rss_gb_max"], 2
        )
    for result in results.values():
        print(json.dumps(result))


if __name__ == "__main__":
    main()
