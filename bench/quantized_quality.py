"""How much int8 and bf16 weights change GPT-2's output, measured two ways.

    python bench/quantized_quality.py                                   # 124M-shaped random weights
    python bench/quantized_quality.py --run_dir runs/shakespeare        # also a trained model, on The Tempest

1. 124M-shaped random weights (the bench checkpoint): the relative RMS error of the logits against float32, for the
   model as gpt2tf runs it and for the format's own error: the same quantization applied in NumPy (written here)
   and run through the float64 reference (`tests/reference.py`). The ratio of the two shows the kernels add nothing
   of their own. Random weights are a hard case: errors grow through the depth of an untrained network.
2. A model trained here from scratch (docs/finetune.md's Shakespeare recipe): perplexity on The Tempest
   (`datasets/shakespeare/val`, disjoint n_ctx windows, `gpt2tf.evaluate.perplexity`) for each format, and the
   teacher-forced top-1 agreement of int8 with float32 (the most likely next token at every position).
Prints one JSON line per measurement.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402


def random_weights(size, n_tokens):
    import numpy as np
    import tensorflow as tf
    from test_quantize import quantized_params, relative_rms

    import gpt2tf

    from reference import read_openai_checkpoint, reference_logits

    model_dir = common.model_dir(size)
    params = read_openai_checkpoint(os.path.join(model_dir, "model.ckpt"))
    n_head = json.load(open(os.path.join(model_dir, "hparams.json")))["n_head"]
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 50000, n_tokens)]
    exact = reference_logits(params, n_head, tokens)
    for weights in ("int8", "bf16"):
        own = relative_rms(reference_logits(quantized_params(params, weights), n_head, tokens), exact)
        model = gpt2tf.load_model(model_dir, weights=weights)
        got = relative_rms(model(tf.constant([tokens])).numpy()[0], exact)
        del model
        print(
            json.dumps(
                {
                    "bench": "quantized_logits",
                    "size": size,
                    "weights": weights,
                    "tokens": n_tokens,
                    "relative_rms_error": round(got, 5),
                    "format_own_error": round(own, 5),
                    "ratio": round(got / own, 3),
                }
            ),
            flush=True,
        )


def trained(run_dir, val_path):
    import numpy as np
    import tensorflow as tf

    import gpt2tf
    from gpt2tf.data import find_files, read_text
    from gpt2tf.evaluate import perplexity

    encoder = gpt2tf.get_encoder()
    tokens = []
    for text in (read_text(f) for f in find_files(val_path)):  # as evaluate.py --task perplexity reads it
        tokens += ([encoder.eot_id] if tokens else []) + encoder.encode(text)
    reports, top1 = {}, {}
    for weights in ("float32", "int8", "bf16"):
        model = gpt2tf.load_model(run_dir, weights=weights)
        reports[weights] = perplexity(model, tokens)[0]
        n = model.hparams.n_ctx
        windows = np.array(tokens[: len(tokens) // n * n]).reshape(-1, n)
        top1[weights] = np.concatenate(
            [tf.argmax(model(tf.constant(windows[i : i + 16])), -1).numpy().ravel() for i in range(0, len(windows), 16)]
        )
    for weights, report in reports.items():
        row = {
            "bench": "quantized_perplexity",
            "run_dir": run_dir,
            "weights": weights,
            "scored_tokens": report["scored_tokens"],
            "perplexity": round(report["perplexity"], 3),
        }
        if weights != "float32":
            row["perplexity_change_percent"] = round(
                100 * (report["perplexity"] / reports["float32"]["perplexity"] - 1), 3
            )
            row["top1_agreement_percent"] = round(100 * float(np.mean(top1[weights] == top1["float32"])), 2)
            row["top1_positions"] = int(top1[weights].size)
        print(json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M")
    parser.add_argument("--tokens", type=int, default=64, help="tokens scored on the random weights")
    parser.add_argument("--run_dir", help="a model trained from scratch (docs/finetune.md's Shakespeare recipe)")
    parser.add_argument("--val", default=os.path.join(ROOT, "datasets", "shakespeare", "val"))
    args = parser.parse_args()
    random_weights(args.size, args.tokens)
    if args.run_dir:
        trained(args.run_dir, args.val)


if __name__ == "__main__":
    main()
