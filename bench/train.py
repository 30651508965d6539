"""Training-step throughput and peak memory with `gpt2tf.train.Trainer`, the step `finetune.py` runs.

    python bench/train.py                    # 124M-shaped weights, batch 4 x 256, Adam: tokens/s and peak RSS
    python bench/train.py --size 1558M --batch_size 1 --length 1024 --recompute --optimizer adafactor --steps 1

Restores a synthetic checkpoint in OpenAI's layout (written first in its own process, as bench/load.py does, and
reused), builds the trainer in a fresh process, runs --warmup steps (the first one traces and compiles), then times
--steps more on random tokens and prints one JSON line: tokens/s of the best and median step, the first step's
seconds (compile included), and the process's peak RSS.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# A script's own dir comes first on sys.path, where a bench file named like a stdlib module would shadow it: put the
# repo root on the path instead of bench/.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(HERE)] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]


def child(args):
    import numpy as np

    import gpt2tf
    from gpt2tf.train import TrainConfig, Trainer, resolve_precision

    policy, loss_scaling = resolve_precision(args.precision)
    model = gpt2tf.load_model(args.dir, dtype=policy)
    config = TrainConfig(
        output_dir="unused",
        optimizer=args.optimizer,
        recompute=args.recompute,
        xla=args.xla,
        batch_size=args.batch_size,
        length=args.length,
        lora_rank=args.lora_rank,
    )
    trainer = Trainer(model, config, loss_scaling=loss_scaling)
    rng = np.random.default_rng(0)
    shape = (1, args.batch_size, args.length)
    weights = np.ones(shape, np.float32)

    def batch():
        return rng.integers(0, model.hparams.n_vocab, shape[:2] + (args.length + 1,)).astype(np.int32)

    start = time.perf_counter()
    losses = [trainer.train_step(batch(), weights)]
    first_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        losses.append(trainer.train_step(batch(), weights))
    times = []
    for _ in range(args.steps):
        tokens = batch()
        start = time.perf_counter()
        losses.append(trainer.train_step(tokens, weights))
        times.append(time.perf_counter() - start)
    tokens_per_step = args.batch_size * args.length
    print(
        json.dumps(
            {
                "tokens_per_s": round(tokens_per_step / min(times), 1),
                "tokens_per_s_median": round(tokens_per_step / statistics.median(times), 1),
                "step_s": [round(t, 2) for t in times],
                "first_step_s": round(first_s, 1),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "finite_loss": bool(np.isfinite(losses).all()),
                "precision": policy,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M", choices=["124M", "355M", "774M", "1558M"])
    parser.add_argument("--dir", help="synthetic checkpoint location (default /tmp/gpt2tf-bench/<size>)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "adafactor", "sgd"])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--recompute", action="store_true")
    parser.add_argument("--no_xla", dest="xla", action="store_false")
    parser.add_argument("--lora_rank", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps; the first compiles")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dir = args.dir or f"/tmp/gpt2tf-bench/{args.size}"
    if args._child:
        return child(args)

    if not os.path.exists(os.path.join(args.dir, "checkpoint")):
        print(f"writing synthetic {args.size} checkpoint to {args.dir} ...", file=sys.stderr)
        code = (
            "import gpt2tf, gpt2tf.hparams as h; "
            f"gpt2tf.write_synthetic_checkpoint({args.dir!r}, h.pretrained({args.size!r}))"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, __file__, "--_child", *sys.argv[1:]], env=env, check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "bench": "train",
                "size": args.size,
                "batch_size": args.batch_size,
                "length": args.length,
                "optimizer": args.optimizer,
                "recompute": args.recompute,
                "xla": args.xla,
                "lora_rank": args.lora_rank,
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
