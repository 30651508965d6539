"""Where a decode step's time goes: the engine's step against the same model work run other ways, in one process.

    python bench/step_profile.py                  # 124M, batch 1 and 8, 5 rounds
    python bench/step_profile.py --batch_sizes 8 --rounds 3

Each line is ms per step, the best of `--rounds` rounds taken in turns (the VM's speed drifts):
- `engine`: `Engine.step(32)` (greedy, 64-token prompts, positions reset each round), what `generate` runs;
- `engine_one_step_calls`: the same, one step a call (what streaming ran before multi-step scheduling);
- `pieces_loop`: the 14 compiled pieces the engine runs (embedding, 12 blocks, head) in a graph loop, no token
  choice or bookkeeping;
- `fused_loop`: the whole step as one XLA function, in a graph loop;
- `all_xla_loop`: the whole loop inside XLA, argmax only.
The differences say what the choice and bookkeeping, the pieces' launches and the graph loop cost. Prints one JSON
line per batch size.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # after the path is set

STEPS, LENGTH = 32, 192


def profile(model, batch, rounds):
    import numpy as np
    import tensorflow as tf

    from gpt2tf.decode.engine import Engine, Request

    engine = Engine(model, max_batch=batch, max_length=LENGTH)
    runner, cache = engine._runner, engine._cache
    layers, vocab = model.hparams.n_layer, model.hparams.n_vocab
    for i in range(batch):
        prompt = list(range(10 + i, 74 + i))
        engine.add(Request(prompt=prompt, max_new_tokens=LENGTH - 64, temperature=0, stop_at_eos=False))
    engine.step(1)

    def reset():  # every row back at position 70 with one token out: the same work each round
        engine._steps[:], engine._position[:] = 1, 70
        for row in engine._rows:
            row.generated, row.emitted = [0], 1

    def engine_steps(per_call):
        def run():
            reset()
            for _ in range(STEPS // per_call):
                engine.step(per_call)

        return run

    at = tf.constant(np.full(batch, 100, np.int32))

    def loop(step):
        @tf.function(autograph=False)
        def run(n):
            def body(i, logits):
                return i + 1, step(tf.argmax(logits, -1, output_type=tf.int32))

            return tf.while_loop(lambda i, _: i < n, body, (0, tf.zeros([batch, vocab])))[1]

        return lambda: run(tf.constant(STEPS)).numpy()

    def pieces(token):
        x, mask = runner.embed(token[:, None], at, LENGTH)
        for layer in range(layers):
            x = runner.block(x, mask, at, runner.weights[layer], cache[layer], None)
        return runner.head(x)

    @tf.function(jit_compile=True, autograph=False)
    def fused(token):
        x, mask = runner._embed(token[:, None], at, LENGTH)
        for layer in range(layers):
            x = runner._block(x, mask, at, runner.weights[layer], cache[layer], None)
        return runner._head(x)

    @tf.function(jit_compile=True, autograph=False)
    def all_xla(n):
        def body(i, logits):
            return i + 1, fused.python_function(tf.argmax(logits, -1, output_type=tf.int32))

        return tf.while_loop(lambda i, _: i < n, body, (0, tf.zeros([batch, vocab])))[1]

    variants = {
        "engine": engine_steps(STEPS),
        "engine_one_step_calls": engine_steps(1),
        "pieces_loop": loop(pieces),
        "fused_loop": loop(fused),
        "all_xla_loop": lambda: all_xla(tf.constant(STEPS)).numpy(),
    }
    for run in variants.values():  # traces and compiles
        run()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / STEPS * 1e3)
    reset()
    return {"bench": "step_profile", "batch": batch, **{k: round(min(v), 2) for k, v in times.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M")
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import gpt2tf

    model = gpt2tf.load_model(common.model_dir(args.size))
    for batch in map(int, args.batch_sizes.split(",")):
        print(json.dumps(profile(model, batch, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
