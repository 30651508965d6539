"""The HTTP server under load: `serve.py` on 124M-shaped weights, driven over HTTP by 1 and 8 concurrent clients.

    python bench/serve.py                 # prints one JSON line per measurement
    python bench/serve.py --rounds 3

Each client streams `/v1/completions` (a prompt of 64 token ids, 128 new tokens, greedy) and times every chunk of
text as it arrives (the first token alone, then a burst each `--stream_interval`; the usage chunk counts the tokens).
Reported: aggregate generated tokens/s, time to first token, tokens per chunk and the gap between chunks
(p50/p95), for one client and for 8 at once; the time to first token of a request that arrives while 7 others
decode, against a lone request's; and, in the same run, the library's own paths for a lone request: its streaming
path (`generate_stream(chunk_steps=None)`, what `inference.py` runs when it prints a sample as it is produced) and
`generate`. If `transformers` and `torch`
are installed, the simplest peer a user would write is measured too: HF's `model.generate` behind FastAPI, one
request at a time, on the same weights.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROMPT, NEW = 64, 128
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompt_ids(i):
    """A prompt of exactly 64 token ids (sent as ids), different for each client."""
    import numpy as np

    return [int(t) for t in np.random.default_rng(i).integers(0, 50000, PROMPT)]


def stream(url, body, out):
    """One streamed completion: the arrival time of each chunk of text (the send time first), and the tokens it
    brought in all (from the usage chunk where the server sends one; else one a chunk, as the HF peer sends them).
    """
    import httpx

    times, tokens = [time.perf_counter()], None
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                else:
                    times.append(time.perf_counter())
    out.append((times, len(times) - 1 if tokens is None else tokens))


def clients(url, count, *, offset=0):
    """`count` clients at once; [arrival times] per client."""
    out, threads = [], []
    for i in range(count):
        body = {"prompt": prompt_ids(offset + i), "max_tokens": NEW, "temperature": 0}
        threads.append(threading.Thread(target=stream, args=(url, body, out)))
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.perf_counter() - started


def summary(runs, wall):
    """runs: (arrival times, tokens) per client. Gaps are between chunks of text (a chunk may bring several tokens:
    the server streams a call's tokens together, every `--stream_interval`)."""
    tokens = sum(n for _, n in runs)
    chunks = sum(len(t) - 1 for t, _ in runs)
    gaps = sorted(g for t, _ in runs for g in (b - a for a, b in zip(t[1:], t[2:])))
    ttft = [t[1] - t[0] for t, _ in runs]
    return {
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_s": round(statistics.median(ttft), 3),
        "tokens_per_chunk": round(tokens / chunks, 2),
        "chunk_gap_ms_p50": round(1e3 * gaps[len(gaps) // 2], 1),
        "chunk_gap_ms_p95": round(1e3 * gaps[int(len(gaps) * 0.95)], 1),
    }


def start_server(model_dir, port, script, extra=()):
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gpt2tf-bench-serve-{port}.log"), "w+")
    process = subprocess.Popen(
        [sys.executable, script, "--model_dir", model_dir, "--port", str(port), "--max_batch", "8", *extra],
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read())
    raise RuntimeError("the server did not start")


def arriving_while_others_decode(url):
    """TTFT of a request sent once 7 others are decoding (after their 10th token)."""
    out, threads = [], []
    for i in range(7):
        threads.append(
            threading.Thread(
                target=stream, args=(url, {"prompt": prompt_ids(100 + i), "max_tokens": NEW, "temperature": 0}, out)
            )
        )
        threads[-1].start()
    import httpx

    while True:  # wait until all seven decode
        if httpx.get(url + "/health").json()["active"] >= 7:
            break
        time.sleep(0.01)
    time.sleep(0.4)
    late = []
    stream(url, {"prompt": prompt_ids(200), "max_tokens": 8, "temperature": 0}, late)
    for t in threads:
        t.join()
    return late[0][0][1] - late[0][0][0]


def library_stream(model, ids):
    """A lone 128-token request through `generate_stream(chunk_steps=None)`, as inference.py prints one."""
    from gpt2tf import sample

    times, tokens = [time.perf_counter()], 0
    for _, new in sample.generate_stream(
        model, [ids], length=NEW, config=sample.SamplerConfig(temperature=0), chunk_steps=None, stop_at_eos=False
    ):
        times.append(time.perf_counter())
        tokens += len(new)
    return summary([(times, tokens)], times[-1] - times[0])


def library_generate(model, ids):
    """The same request through `generate` (the library's batch path: 32 steps a call, nothing streamed)."""
    from gpt2tf import sample

    started = time.perf_counter()
    (out,) = sample.generate(model, [ids], length=NEW, temperature=0, stop_at_eos=False)
    return {"tokens_per_s": round(len(out) / (time.perf_counter() - started), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M")
    parser.add_argument("--rounds", type=int, default=2, help="repeats of each measurement; the best is reported")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no_peer", action="store_true", help="skip the HF transformers peer")
    parser.add_argument("--stream_interval", type=float, help="the server's --stream_interval (default: its own)")
    args = parser.parse_args()
    from common import model_dir as bench_model_dir

    model_dir = bench_model_dir(args.size)
    url = f"http://127.0.0.1:{args.port}"
    import gpt2tf

    model, ids = gpt2tf.load_model(model_dir), prompt_ids(10)
    library_stream(model, ids)  # compiled before the server starts
    library_generate(model, ids)
    extra = [] if args.stream_interval is None else ["--stream_interval", str(args.stream_interval)]
    server = start_server(model_dir, args.port, "serve.py", extra)
    try:
        clients(url, 1)
        clients(url, 8)  # warm-up
        # A lone request through the server and through the library, alternating (this VM's speed drifts).
        lone, library, batch_path = [], [], []
        for _ in range(args.rounds + 1):
            runs, wall = clients(url, 1, offset=10)
            lone.append(summary(runs, wall))
            library.append(library_stream(model, ids))
            batch_path.append(library_generate(model, ids))
        alone = max(lone, key=lambda r: r["tokens_per_s"])
        print(json.dumps({"bench": "serve", "clients": 1, **alone}), flush=True)
        best_library = max(library, key=lambda r: r["tokens_per_s"])
        best_generate = max(r["tokens_per_s"] for r in batch_path)
        print(
            json.dumps(
                {
                    "bench": "serve_vs_library",
                    "library_generate_tokens_per_s": best_generate,
                    "library_stream_tokens_per_s": best_library["tokens_per_s"],
                    "library_stream_ttft_s": best_library["ttft_s"],
                    "server_lone_tokens_per_s": alone["tokens_per_s"],
                    "server_lone_ttft_s": alone["ttft_s"],
                    "server_over_library_generate": round(alone["tokens_per_s"] / best_generate, 2),
                    "server_over_library_stream": round(alone["tokens_per_s"] / best_library["tokens_per_s"], 2),
                }
            ),
            flush=True,
        )
        best = max((summary(*clients(url, 8, offset=10)) for _ in range(args.rounds)), key=lambda r: r["tokens_per_s"])
        print(json.dumps({"bench": "serve", "clients": 8, **best}), flush=True)
        print(
            json.dumps(
                {"bench": "serve_scaling", "aggregate_8_over_1": round(best["tokens_per_s"] / alone["tokens_per_s"], 2)}
            ),
            flush=True,
        )
        late = min(arriving_while_others_decode(url) for _ in range(args.rounds))
        print(
            json.dumps(
                {
                    "bench": "serve_ttft_under_load",
                    "ttft_s": round(late, 3),
                    "lone_ttft_s": alone["ttft_s"],
                    "ratio": round(late / alone["ttft_s"], 2),
                }
            ),
            flush=True,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    peer = None if args.no_peer else hf_peer(model_dir, args.port + 1, args.rounds)
    if peer:
        print(json.dumps(peer), flush=True)


def hf_peer(model_dir, port, rounds):
    """HF transformers' generate behind FastAPI, one request at a time (a lock), 1 and 8 clients; None if absent."""
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        return None
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "bench", "serve_hf_peer.py"), model_dir, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    import httpx

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    return None
                time.sleep(0.2)
        clients(url, 1)
        result = {}
        for count in (1, 8):
            runs, wall = min((clients(url, count, offset=10) for _ in range(rounds)), key=lambda r: r[1])
            result[count] = summary(runs, wall)
        return {
            "bench": "serve_peer",
            "peer": f"transformers {transformers.__version__} behind FastAPI",
            "clients_1_tokens_per_s": result[1]["tokens_per_s"],
            "clients_8_tokens_per_s": result[8]["tokens_per_s"],
            "clients_8_ttft_s": result[8]["ttft_s"],
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
