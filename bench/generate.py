"""Decode speed of `gpt2tf.sample.generate` on 124M-shaped weights: prompt 64 tokens -> 128 new tokens.

    python bench/generate.py                     # batch 1 and 8, every variant, first-call time, peers if installed
    python bench/generate.py --batch_sizes 1 --variants cache_xla
    python bench/generate.py --arrivals          # 8 requests arriving one every 10 steps, mixed settings
    python bench/generate.py --weights float32,int8,bf16 [--size 1558M --new 32 --memory]
    python bench/generate.py --baseline 2166d6b,2954cdc --rounds 3   # other revisions beside this checkout, in turns
    python bench/generate.py --beams [--num_beams 4 --new 64]        # beam search, one prompt, beside transformers'
    python bench/generate.py --controls                              # batch 8: n-gram ban + penalties vs plain

Variants: `cache_xla` (the library default: KV cache, XLA-compiled step with the native kernels),
`cache_xla_plain` (the same with GPT2TF_NATIVE=0: XLA's own ops), `cache` (KV cache, no XLA), and two no-cache
baselines that rerun the whole fixed-length sequence every step (`nocache_xla`, `nocache`). All greedy, so every
variant does the same work; `topk_topp` adds the cost of top-k 40 + top-p 0.9 sampling to `cache_xla`.
Decode time excludes the prompt: it is (time for 128 new tokens) - (time for 1), over 127 steps (8 steps for the
no-cache baselines, whose every step runs a full forward pass over 128 tokens: the mean length such a loop
processes while it grows the 64-token prompt to 192). `first_call_s` is
a fresh process's first `generate` (tracing and XLA compilation included), `compile_s` that minus a warm call.
If `transformers` + `torch` are installed, Hugging Face's GPT-2 runs on the same weights for a ratio.
`--arrivals` measures continuous batching instead: one engine serving requests as they arrive, against serving
them one after another. `--weights` measures the default variant with the weights held as each format (the
formats take turns, one round after another), each against float32 in the same run and against its own floor:
the bytes of its weights over this machine's read rate (measured in the same run); `--memory` adds each format's
peak resident memory in a fresh process that loads the model and generates.
`--baseline REV[,REV]` measures the default variant (`--batch_sizes`, `--new`) with each REV's code (unpacked by `git
archive` into the bench dir) and with this checkout's, in fresh processes taking turns for `--rounds` rounds, through
`gpt2tf.sample.generate` (which every revision has), and prints each run, then each side's best and the ratio of the
checkout's to each REV's (`GPT2TF_NATIVE=0` in the environment: every side on XLA's own ops).
Prints one JSON line per measurement.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `--_tree DIR` (a child of --baseline): measure the gpt2tf of another revision's tree, not this checkout's.
TREE = sys.argv[sys.argv.index("--_tree") + 1] if "--_tree" in sys.argv else ROOT
sys.path.insert(0, TREE)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402 -- after the path is set

PROMPT, NEW = 64, 128


def _prompts(batch):
    import numpy as np

    return [list(map(int, np.random.default_rng(row).integers(0, 50000, PROMPT))) for row in range(batch)]


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _nocache_generate(model, prompts, length, jit):
    """Baseline: no cache; every step runs the full fixed-length sequence (fixed shapes, so one trace)."""
    import numpy as np
    import tensorflow as tf

    @tf.function(jit_compile=jit, autograph=False)
    def step(tokens, index):
        logits = model(tokens)  # [batch, total, vocab]; causal, so positions after index don't matter
        nxt = tf.argmax(logits[:, index - 1], axis=-1, output_type=tf.int32)
        rows = tf.range(tf.shape(tokens)[0])
        return tf.tensor_scatter_nd_update(tokens, tf.stack([rows, tf.fill(tf.shape(rows), index)], 1), nxt)

    # The buffer holds PROMPT + NEW / 2 tokens: the mean length a no-cache loop processes when it grows a 64-token
    # prompt to 192 one token at a time, so its per-step cost is the mean cost of such a run.
    tokens = tf.constant(np.pad(np.array(prompts, np.int32), [(0, 0), (0, NEW // 2)]))
    for i in range(length):
        tokens = step(tokens, tf.constant(PROMPT + i))
    return tokens.numpy()


def measure(model, variant, batch, repeat):
    from gpt2tf import sample

    prompts = _prompts(batch)
    native_setting = os.environ.get("GPT2TF_NATIVE", "1")
    if variant.startswith("nocache"):
        run = lambda n: _nocache_generate(model, prompts, n, variant == "nocache_xla")  # noqa: E731
    else:
        kwargs = dict(temperature=0) if variant != "topk_topp" else dict(top_k=40, top_p=0.9, seed=0)

        def run(n):
            os.environ["GPT2TF_NATIVE"] = "0" if variant == "cache_xla_plain" else native_setting
            try:
                return sample.generate(
                    model, prompts, length=n, stop_at_eos=False, jit_compile=variant != "cache", **kwargs
                )
            finally:
                os.environ["GPT2TF_NATIVE"] = native_setting

    # A no-cache step always runs the whole fixed-length sequence, so a few steps measure it as well as 128 do.
    steps = NEW if not variant.startswith("nocache") else 9
    run(steps)  # warm-up: traces and compiles
    run(1)
    full = _best(lambda: run(steps), repeat)
    one = _best(lambda: run(1), repeat)
    step_ms = (full - one) / (steps - 1) * 1e3
    return {
        "bench": "generate",
        "variant": variant,
        "batch": batch,
        "ms_per_step": round(step_ms, 1),
        "ms_per_token": round(step_ms / batch, 2),
        "tokens_per_s": round(batch * 1e3 / step_ms, 1),
        "prefill_plus_one_s": round(one, 3),
    }


ARRIVAL_SETTINGS = [
    dict(temperature=0),
    dict(top_k=40, seed=1),
    dict(top_p=0.9, seed=2),
    dict(temperature=0.8, top_k=40, top_p=0.95, seed=3),
    dict(temperature=0, repetition_penalty=1.2),
    dict(top_k=10, temperature=0.7, seed=4),
    dict(top_p=0.8, seed=5),
    dict(top_k=40, seed=6),
]


def arrivals(model, every, repeat, settings=ARRIVAL_SETTINGS):
    """8 requests (64-token prompts, NEW new tokens (--new, default 128), mixed settings) arriving one every `every`
    steps, served by one engine with continuous batching, against serving them one after another (each with
    `generate`, the best single-request path). Both produce the same 8 * NEW tokens; reports aggregate tokens/s of
    each."""
    from gpt2tf import sample
    from gpt2tf.engine import Engine, Request

    prompts = _prompts(len(ARRIVAL_SETTINGS))
    requests = [Request(prompt=p, max_new_tokens=NEW, stop_at_eos=False, **s) for p, s in zip(prompts, settings)]

    def continuous():
        engine = Engine(model, max_batch=len(requests), max_length=PROMPT + NEW)
        outputs, index_of, step = {}, {}, 0
        while step == 0 or engine.active or len(index_of) < len(requests):
            if step % every == 0 and step // every < len(requests):
                index_of[engine.add(requests[step // every])] = step // every
            for rid, ids, _ in engine.step():
                outputs.setdefault(index_of[rid], []).extend(ids)
            step += 1
        return [outputs[i] for i in range(len(requests))]

    def one_after_another():
        return [sample.generate(model, [p], length=NEW, stop_at_eos=False, **s)[0] for p, s in zip(prompts, settings)]

    assert continuous() == one_after_another()  # warm-up (traces, compiles) and the same tokens both ways
    batched, serial = _best(continuous, repeat), _best(one_after_another, repeat)
    tokens = NEW * len(requests)
    return {
        "bench": "generate_arrivals",
        "settings": "mixed" if settings is ARRIVAL_SETTINGS else "greedy",
        "requests": len(requests),
        "every_steps": every,
        "new_tokens_per_request": NEW,
        "new_tokens": tokens,
        "continuous_s": round(batched, 2),
        "continuous_tokens_per_s": round(tokens / batched, 1),
        "one_after_another_s": round(serial, 2),
        "one_after_another_tokens_per_s": round(tokens / serial, 1),
        "speedup": round(serial / batched, 2),
    }


def first_call(model_dir):
    """In a fresh process: the first generate call (trace + compile + run) and a warm one."""
    code = f"""
import json, os, sys, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import gpt2tf
from gpt2tf import sample
import numpy as np
model = gpt2tf.load_model({model_dir!r})
prompt = [list(map(int, np.random.default_rng(0).integers(0, 50000, {PROMPT})))]
t = time.perf_counter(); sample.generate(model, prompt, length={NEW}, top_k=40, seed=0, stop_at_eos=False)
first = time.perf_counter() - t
t = time.perf_counter(); sample.generate(model, prompt, length={NEW}, top_k=40, seed=1, stop_at_eos=False)
warm = time.perf_counter() - t
print(json.dumps({{"first_call_s": round(first, 2), "warm_call_s": round(warm, 2),
                   "compile_s": round(first - warm, 2)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {"bench": "generate_first_call", "batch": 1, **json.loads(out.strip().splitlines()[-1])}


def hf_peer(model_dir, batch, repeat):
    """Hugging Face transformers' GPT-2 on the same weights (greedy, KV cache), if installed."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    hf = common.hf_gpt2(model_dir)
    ids = torch.tensor(_prompts(batch))

    def run(n):
        with torch.no_grad():
            hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )

    run(NEW)
    full = _best(lambda: run(NEW), repeat)
    one = _best(lambda: run(1), repeat)
    step_ms = (full - one) / (NEW - 1) * 1e3
    return {
        "bench": "generate_peer",
        "peer": f"transformers {transformers.__version__} (torch {torch.__version__})",
        "batch": batch,
        "ms_per_step": round(step_ms, 1),
        "tokens_per_s": round(batch * 1e3 / step_ms, 1),
    }


def beams(model_dir, num_beams, new, repeat):
    """Beam search on one 64-token prompt: `gpt2tf.beam_search` and transformers' `generate(num_beams=...)` on the
    same weights, same settings (length penalty 1, early_stopping False), taking turns; each side's best time."""
    import gpt2tf

    model = gpt2tf.load_model(model_dir)
    prompt = _prompts(1)
    run_ours = lambda: gpt2tf.beam_search(model, prompt, length=new, num_beams=num_beams)  # noqa: E731
    got = run_ours()  # compiles
    rows = {"ours": [], "peer": []}
    peer = None
    try:
        import torch
        import transformers

        hf = common.hf_gpt2(model_dir)
        ids = torch.tensor(prompt)

        def run_peer():
            with torch.no_grad():
                return hf.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new,
                    num_beams=num_beams,
                    do_sample=False,
                    pad_token_id=50256,
                    return_dict_in_generate=True,
                    output_scores=True,
                )

        peer = f"transformers {transformers.__version__} (torch {torch.__version__})"
        theirs = run_peer()
    except ImportError:
        run_peer = None
    for _ in range(repeat):
        for side, fn in (("ours", run_ours), ("peer", run_peer)):
            if fn is not None:
                start = time.perf_counter()
                fn()
                rows[side].append(time.perf_counter() - start)
    # The floor of a step: the weights read once (a beam step reads them once for all its rows), at this
    # machine's read rate measured now.
    floor_s = weight_bytes(model) / read_rate() * new
    result = {
        "bench": "generate_beams",
        "weights_read_floor_s": round(floor_s, 3),
        "num_beams": num_beams,
        "new_tokens": new,
        "prompt_tokens": PROMPT,
        "gpt2tf_s": round(min(rows["ours"]), 3),
        "gpt2tf_tokens": len(got[0][0][0]),
    }
    if peer:
        result.update(
            peer=peer,
            peer_s=round(min(rows["peer"]), 3),
            peer_tokens=int(theirs.sequences.shape[1]) - PROMPT,
            ratio_gpt2tf_over_peer=round(min(rows["ours"]) / min(rows["peer"]), 2),
            ratio_floor_over_peer=round(floor_s / min(rows["peer"]), 2),
            same_tokens=theirs.sequences[0, PROMPT:].tolist()[: len(got[0][0][0])] == got[0][0][0],
            score_diff=round(abs(float(theirs.sequences_scores[0]) - got[0][0][1]), 6),
        )
    return result


def controls(model, batch, repeat, new=64):
    """One step at batch 8 with no_repeat_ngram_size 3 and both presence and frequency penalties on (greedy, so the
    work is the same token for token), against a plain greedy step, taking turns."""
    import gpt2tf

    prompts = _prompts(batch)
    settings = {
        "plain": {},
        "ngram3_penalties": dict(no_repeat_ngram_size=3, presence_penalty=0.5, frequency_penalty=0.5),
    }
    full, one = {name: [] for name in settings}, {name: [] for name in settings}

    def run(extra, length):
        return gpt2tf.generate(model, prompts, length=length, temperature=0, stop_at_eos=False, **extra)

    for extra in settings.values():  # compile both lengths' shapes
        run(extra, new), run(extra, 1)
    for _ in range(repeat):  # taking turns
        for name, extra in settings.items():
            full[name].append(_best(lambda extra=extra: run(extra, new), 1))
            one[name].append(_best(lambda extra=extra: run(extra, 1), 1))
    times = {name: [(min(full[name]) - min(one[name])) / (new - 1) * 1e3] for name in settings}
    plain, on = min(times["plain"]), min(times["ngram3_penalties"])
    return {
        "bench": "generate_controls",
        "batch": batch,
        "plain_ms_per_step": round(plain, 2),
        "ngram3_penalties_ms_per_step": round(on, 2),
        "ratio": round(on / plain, 3),
    }


def read_rate():
    """Bytes per second this machine streams from memory on every core: 1 GiB of float32 read once by the native
    kernel's one-row product (the decode step's own way of reading weights; a reduction where it is unavailable),
    best of 5."""
    import tensorflow as tf

    from gpt2tf.kernels import native
    from gpt2tf.model import project

    data = tf.ones([1 << 18, 1 << 10], tf.float32)
    row = tf.ones([1, 1 << 10], tf.float32)
    kernels = native.load()

    @tf.function(jit_compile=True, autograph=False)
    def read(w):
        return tf.reduce_sum(project(row, w, kernels=kernels))

    read(data)
    return (1 << 30) / _best(lambda: read(data).numpy(), 5)


def weight_bytes(model):
    import numpy as np
    import tensorflow as tf

    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in model.weights)


def weights_rows(model_dir, formats, batches, repeat):
    """The default decode path with the weights held as each format, in turns; ratios against float32."""
    import gpt2tf

    models = {f: gpt2tf.load_model(model_dir, weights=f) for f in formats}
    rate = read_rate()
    print(json.dumps({"bench": "memory_read_rate", "gb_per_s": round(rate / 1e9, 1)}), flush=True)
    for batch in batches:
        best = {}
        for _ in range(repeat):  # the formats take turns: the VM's slow spells fall on all of them
            for f in formats:
                result = measure(models[f], "cache_xla", batch, 1)
                if f not in best or result["ms_per_step"] < best[f]["ms_per_step"]:
                    best[f] = result
        for f in formats:
            row = {**best[f], "bench": "generate_weights", "weights": f, "weight_bytes": weight_bytes(models[f])}
            floor_ms = row["weight_bytes"] / rate * 1e3
            row["floor_ms_per_step"] = round(floor_ms, 1)
            row["floor_over_measured"] = round(floor_ms / row["ms_per_step"], 2)
            if "float32" in best:
                row["ratio_to_float32"] = round(row["ms_per_step"] / best["float32"]["ms_per_step"], 2)
            print(json.dumps(row), flush=True)


def peak_memory(model_dir, weights):
    """In a fresh process: load the model as `weights` and generate; the peak resident memory (ru_maxrss)."""
    code = f"""
import json, resource, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import gpt2tf
from gpt2tf import sample
model = gpt2tf.load_model({model_dir!r}, weights={weights!r})
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sample.generate(model, [list(range(1000, 1000 + {PROMPT}))], length=16, temperature=0, stop_at_eos=False)
print(json.dumps({{"peak_after_load_gb": round(loaded / 2**20, 2),
                   "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {"bench": "generate_peak_memory", "weights": weights, **json.loads(out.strip().splitlines()[-1])}


def baseline_tree(rev):
    """REV's source tree, unpacked once under the bench dir (by `git archive`, so untracked files stay out)."""
    commit = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = os.path.join(common.BENCH_DIR, f"tree-{commit}")
    if not os.path.isdir(os.path.join(tree, "gpt2tf")):
        os.makedirs(tree, exist_ok=True)
        archive = subprocess.run(["git", "-C", ROOT, "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return commit, tree


def compare(args):
    """`--baseline`: each REV's code and this checkout's, alternating in fresh processes; each side's best and the
    ratio of the checkout's to each REV's."""
    sides = dict(baseline_tree(rev) for rev in args.baseline.split(","))
    common.model_dir(args.size)  # written by this checkout, read by every side
    sides["checkout"] = ROOT
    runs = {side: {} for side in sides}
    for round_ in range(args.rounds):
        for side, path in sides.items():
            command = [
                sys.executable,
                os.path.abspath(__file__),
                "--_tree",
                path,
                "--size",
                args.size,
                "--repeat",
                str(args.repeat),
                "--batch_sizes",
                args.batch_sizes,
                "--variants",
                "cache_xla",
                "--new",
                str(NEW),
                "--no_first_call",
                "--no_peers",
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            for line in out.strip().splitlines():
                row = json.loads(line)
                if row.get("bench") == "generate":
                    print(json.dumps({**row, "code": side, "round": round_ + 1}), flush=True)
                    runs[side].setdefault(row["batch"], []).append(row["ms_per_step"])
    native = os.environ.get("GPT2TF_NATIVE", "1") != "0"
    for batch in map(int, args.batch_sizes.split(",")):
        ours = min(runs["checkout"][batch])
        for side in sides:
            if side == "checkout":
                continue
            base = min(runs[side][batch])
            print(
                json.dumps(
                    {
                        "bench": "generate_vs_baseline",
                        "kernels": "native" if native else "xla",
                        "batch": batch,
                        "baseline": side,
                        "baseline_ms_per_step": base,
                        "checkout_ms_per_step": ours,
                        "ratio_checkout_over_baseline": round(ours / base, 3),
                    }
                ),
                flush=True,
            )


def main():
    global NEW
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M")
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--variants", default="cache_xla,cache_xla_plain,cache,nocache_xla,nocache,topk_topp")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--no_first_call", action="store_true")
    parser.add_argument("--no_peers", action="store_true")
    parser.add_argument(
        "--arrivals",
        action="store_true",
        help="only the continuous-batching scenario: 8 requests arriving one every 10 steps, with "
        "mixed settings and all greedy",
    )
    parser.add_argument(
        "--weights", help="comma-separated formats (float32,int8,bf16): the decode speed of each, side by side"
    )
    parser.add_argument("--memory", action="store_true", help="with --weights: each format's peak memory too")
    parser.add_argument("--new", type=int, default=NEW, help="new tokens per measured call")
    parser.add_argument(
        "--baseline", metavar="REV[,REV]", help="measure each REV's code beside this checkout's, alternating"
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: fresh-process runs of each side")
    parser.add_argument("--beams", action="store_true", help="beam search on one prompt, beside transformers'")
    parser.add_argument("--num_beams", type=int, default=4, help="with --beams")
    parser.add_argument(
        "--controls", action="store_true", help="batch 8: no_repeat_ngram_size 3 + presence/frequency vs plain"
    )
    parser.add_argument("--_tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    NEW = args.new
    if args.beams:
        new = args.new if args.new != NEW or "--new" in sys.argv else 64
        print(json.dumps(beams(common.model_dir(args.size), args.num_beams, new, args.repeat)), flush=True)
        return
    if args.controls:
        import gpt2tf

        model = gpt2tf.load_model(common.model_dir(args.size))
        for batch in map(int, args.batch_sizes.split(",")):
            print(json.dumps(controls(model, batch, args.repeat)), flush=True)
        return
    if args.baseline:
        return compare(args)
    if args.weights:
        formats = args.weights.split(",")
        model_dir = common.model_dir(args.size)
        if args.memory:
            rows = [peak_memory(model_dir, f) for f in formats]
            for row in rows:
                if "float32" in formats:
                    row["ratio_to_float32"] = round(row["peak_gb"] / rows[formats.index("float32")]["peak_gb"], 2)
                print(json.dumps(row), flush=True)
        weights_rows(model_dir, formats, list(map(int, args.batch_sizes.split(","))), args.repeat)
        return
    if args.arrivals:
        import gpt2tf

        model = gpt2tf.load_model(common.model_dir(args.size))
        print(json.dumps(arrivals(model, 10, args.repeat)), flush=True)
        print(json.dumps(arrivals(model, 10, args.repeat, [dict(temperature=0)] * 8)), flush=True)
        return

    model_dir = common.model_dir(args.size)
    if not args.no_first_call:
        print(json.dumps(first_call(model_dir)), flush=True)
    import gpt2tf

    model = gpt2tf.load_model(model_dir)
    ours = {}
    for batch in map(int, args.batch_sizes.split(",")):
        for variant in args.variants.split(","):
            result = measure(model, variant, batch, args.repeat)
            ours[(variant, batch)] = result["ms_per_step"]
            print(json.dumps(result), flush=True)
        if ("cache_xla", batch) in ours and ("nocache", batch) in ours:
            print(
                json.dumps(
                    {
                        "bench": "generate_cache_speedup",
                        "batch": batch,
                        "cache_xla_vs_nocache": round(ours[("nocache", batch)] / ours[("cache_xla", batch)], 1),
                        "cache_xla_vs_nocache_xla": round(
                            ours.get(("nocache_xla", batch), float("nan")) / ours[("cache_xla", batch)], 1
                        ),
                    }
                ),
                flush=True,
            )
        peer = None if args.no_peers else hf_peer(model_dir, batch, args.repeat)
        if peer:
            peer["ratio_peer_over_gpt2tf"] = round(
                peer["ms_per_step"] / ours.get(("cache_xla", batch), float("nan")), 2
            )
            print(json.dumps(peer), flush=True)


if __name__ == "__main__":
    main()
