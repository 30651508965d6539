"""Perplexity scoring speed: `gpt2tf.evaluate.perplexity` against HF transformers + torch on the same windows.

    python bench/evaluate.py                          # 124M shape, The Tempest, context 1024, stride 512
    python bench/evaluate.py --stride 1024 --repeat 3

Both score the same text (datasets/shakespeare/val, ~30K tokens) with the HF perplexity guide's strided windows,
on the same synthetic weights; HF runs the guide's own loop (one window per forward pass, `labels` masked to the
tokens a window scores). The two alternate, best of --repeat each. Prints one JSON line each: scored tokens per
second and the perplexity (which must agree).
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common

ROOT = Path(__file__).resolve().parents[1]


def ours(model, tokens, context, stride):
    """A function scoring the text once: (scored tokens, perplexity)."""
    from gpt2tf import evaluate

    def run():
        report, _ = evaluate.perplexity(model, tokens, context=context, stride=stride)
        return report["scored_tokens"], report["perplexity"]

    return run


def hf(model_dir, tokens, context, stride):
    """The HF guide's loop, or None without transformers and torch."""
    try:
        import torch
    except ImportError:
        return None
    model = common.hf_gpt2(model_dir)
    ids = torch.tensor([tokens])

    def run():
        nll, count, previous_end = 0.0, 0, 0
        for begin in range(0, ids.size(1), stride):
            end = min(begin + context, ids.size(1))
            target_length = end - previous_end
            window = ids[:, begin:end]
            labels = window.clone()
            labels[:, :-target_length] = -100
            with torch.no_grad():
                loss = model(window, labels=labels).loss
            valid = int((labels[:, 1:] != -100).sum())  # the model shifts the labels by one inside
            nll, count = nll + float(loss) * valid, count + valid
            previous_end = end
            if end == ids.size(1):
                break
        return count, math.exp(nll / count)

    return run


def peer_name():
    import torch
    import transformers

    return f"transformers {transformers.__version__} (torch {torch.__version__})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    import gpt2tf

    model_dir = common.model_dir(args.size)
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "datasets" / "shakespeare" / "val").glob("*")))
    tokens = gpt2tf.get_encoder().encode(text)
    runners = {"gpt2tf": ours(gpt2tf.load_model(model_dir), tokens, args.context, args.stride)}
    peer = hf(model_dir, tokens, args.context, args.stride)
    if peer:
        runners[peer_name()] = peer
    results = {name: run() for name, run in runners.items()}  # warm-up (compiles)
    best = dict.fromkeys(runners, math.inf)
    for _ in range(args.repeat):  # alternated, so a slow spell of this shared machine hits both
        for name, run in runners.items():
            started = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - started)
    mine = None
    for name in runners:
        count, perplexity = results[name]
        line = {
            "bench": "evaluate_perplexity",
            "scorer": name,
            "context": args.context,
            "stride": args.stride,
            "scored_tokens": count,
            "seconds": round(best[name], 2),
            "tokens_per_s": round(count / best[name], 1),
            "perplexity": round(perplexity, 4),
        }
        if mine is None:
            mine = line
        else:
            line["ratio_gpt2tf_over_peer"] = round(mine["tokens_per_s"] / line["tokens_per_s"], 2)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
