"""`cllm serve` measured: time to first token and tokens/s of a streamed /v1/completions,
against `cllm generate` (a fresh process: it loads the checkpoint first) and against the
PyTorch KV-cache decode of the same weights (benchmarks/torch_peer.py, the benchmark peer,
in process); then requests/s with 8 concurrent clients, and the server's RSS.

A data directory is made once: `cllm train` on the shipped sample corpus (`--preset`,
`--steps`), so the model has a learned vocabulary. All decoding is greedy, from the same
prompt, `--tokens` new tokens, and ignores end-of-text (temperature 0 over a trained model
may hit it early: the server's count of completion tokens is what tokens/s divides).
Medians of `--rounds` runs.

    python benchmarks/bench_serve.py --preset base --tokens 100 --rounds 5

`--tokens` is lowered, if need be, so that the prompt and the new tokens fit in the model's
context (every decoder then does the same work).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.server.security import data_dir_token  # noqa: E402
from engine.cpu import describe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "The for statement is used to iterate over the elements of a sequence"
ROOT = Path(__file__).resolve().parent.parent


def env() -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    e.pop("CLLM_DATABASE_URL", None)
    return e


def make_data_dir(data: Path, preset: str, steps: int) -> None:
    from agent.inputs.corpus import corpus_topics

    topics = [str(p) for p in corpus_topics()]
    subprocess.run([sys.executable, "-m", "agent", "train", *topics, "--data-dir", str(data),
                    "--preset", preset, "--steps", str(steps), "--json"], check=True,
                   env=env(), stdout=subprocess.DEVNULL)


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class ServerProcess:
    def __init__(self, data: Path, concurrency: int) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "agent", "-v", "serve", "--data-dir",
                                   str(data), "--port", "0", "--concurrency", str(concurrency),
                                   "--queue-timeout", "600", "--max-tokens", "4096"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=env())
        self.url = None
        for line in self.p.stderr:            # blocks until the server says it serves
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            self.url = self.url or (m.group(1) if m else None)
            if "serving checkpoint" in line:
                break
        threading.Thread(target=self.p.stderr.read, daemon=True).start()   # drain the log
        # the token a client sends (`cllm token`: the data directory's, made at the start)
        self.headers = {"Authorization": f"Bearer {data_dir_token(data)}"}

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(60)


def stream_once(url: str, tokens: int, headers: dict) -> dict:
    t0 = time.perf_counter()
    first = last = None
    usage = None
    with httpx.stream("POST", url + "/v1/completions", timeout=600, headers=headers, json={
            "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            elif ev["choices"] and ev["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
    n = usage["completion_tokens"]
    return {"ttft_s": first - t0, "tok_s": (n - 1) / (last - first) if n > 1 else None,
            "tokens": n, "total_s": last - t0}


def generate_once(data: Path, tokens: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "agent", "generate", PROMPT, "--data-dir",
                          str(data), "--temperature", "0", "--max-tokens", str(tokens)],
                         stdout=subprocess.PIPE, env=env())
    head = p.stdout.read(len(PROMPT.encode()))         # the prompt is echoed first
    assert head == PROMPT.encode(), head
    p.stdout.read(1)
    first = time.perf_counter()
    p.stdout.read()
    end = time.perf_counter()
    assert p.wait() == 0
    return {"ttft_s": first - t0, "total_s": end - t0}


def in_process(data: Path, tokens: int, rounds: int) -> dict:
    """Our decode without HTTP, and the PyTorch KV-cache decode of the same serving weights."""
    from agent.generation.checkpoint import load_serving_checkpoint
    from agent.generation.stream import Sampling, TextStream
    from store import open_store

    with open_store(data) as store:
        ckpt = load_serving_checkpoint(store, data)
    ids = list(ckpt.tokenizer.encode(PROMPT))
    list(ckpt.model.generate_stream(ids, 4, temperature=0))      # warm: kernels loaded
    ours = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        it = iter(ckpt.model.generate_stream(ids, tokens, temperature=0))
        next(it)
        t1 = time.perf_counter()
        n = 1 + sum(1 for _ in it)
        ours.append((t1 - t0, (n - 1) / (time.perf_counter() - t1)))
    TextStream(ckpt, PROMPT, Sampling(max_tokens=4, temperature=0)).run()
    out = {"engine": {"ttft_s": statistics.median(a for a, _ in ours),
                      "tok_s": statistics.median(b for _, b in ours)}}
    try:
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from torch_peer import TorchGPT
    except ImportError as e:
        out["torch"] = {"note": f"PyTorch not installed ({e})"}
        return out
    net = TorchGPT(ckpt.model)
    n_new = tokens
    default_threads = torch.get_num_threads()
    for key, threads in (("torch", default_threads), ("torch_1_thread", 1)):
        torch.set_num_threads(threads)
        net.decode(ids, 4)                                           # warm
        theirs = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            net.decode(ids, 1)
            t1 = time.perf_counter()
            net.decode(ids, n_new)
            t2 = time.perf_counter()
            # decode(n) prefills and makes n tokens: the per-token rate after the first
            theirs.append((t1 - t0, (n_new - 1) / max(1e-9, (t2 - t1) - (t1 - t0))))
        out[key] = {"ttft_s": statistics.median(a for a, _ in theirs),
                    "tok_s": statistics.median(b for _, b in theirs), "tokens": n_new,
                    "version": torch.__version__, "threads": threads}
    torch.set_num_threads(default_threads)
    return out


def fit_in_context(data: Path, tokens: int) -> int:
    """The prompt plus the new tokens within the model's context, so every decoder does the
    same work (ours slides its window past the context; the PyTorch loop cannot)."""
    from agent.generation.checkpoint import load_serving_checkpoint
    from store import open_store

    with open_store(data) as store:
        ckpt = load_serving_checkpoint(store, data)
    room = ckpt.model.config.context - len(ckpt.tokenizer.encode(PROMPT))
    if room < 2:
        raise SystemExit(f"the prompt fills the {ckpt.model.config.context}-token context: "
                         "use a larger --preset")
    return min(tokens, room)


def concurrent(url: str, clients: int, per_client: int, tokens: int, headers: dict) -> dict:
    done, errors = [], []
    barrier = threading.Barrier(clients + 1)

    def client():
        with httpx.Client(timeout=600, headers=headers) as c:
            barrier.wait()
            for _ in range(per_client):
                r = c.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": tokens,
                                                          "temperature": 0.8})
                (done if r.status_code == 200 else errors).append(r)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(r.json()["usage"]["completion_tokens"] for r in done)
    return {"clients": clients, "requests": len(done), "errors": len(errors),
            "requests_per_s": len(done) / wall, "tokens_per_s": toks / wall,
            "max_tokens": tokens}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--steps", type=int, default=5, help="training steps of the checkpoint")
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 2,
                    help="the server's --concurrency")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cllm-bench-serve-") as tmp:
        data = Path(tmp) / "data"
        make_data_dir(data, args.preset, args.steps)
        args.tokens = fit_in_context(data, args.tokens)
        server = ServerProcess(data, args.concurrency)
        try:
            rss_loaded = rss_kib(server.p.pid)
            auth = server.headers
            stream_once(server.url, 8, auth)                # warm: first request's imports
            streamed = [stream_once(server.url, args.tokens, auth) for _ in range(args.rounds)]
            load = concurrent(server.url, args.clients, args.per_client, 32, auth)
            rss_after = rss_kib(server.p.pid)
        finally:
            server.stop()
        generated = [generate_once(data, args.tokens) for _ in range(args.rounds)]
        inproc = in_process(data, args.tokens, args.rounds)

    med = lambda rows, k: statistics.median(r[k] for r in rows if r[k] is not None)  # noqa: E731
    res = {
        "preset": args.preset, "tokens": args.tokens, "rounds": args.rounds,
        "cpu": describe().model,
        "cores": os.cpu_count(),
        "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "serve_stream": {"ttft_s": med(streamed, "ttft_s"), "tok_s": med(streamed, "tok_s"),
                         "tokens": streamed[-1]["tokens"]},
        "cllm_generate": {"ttft_s": med(generated, "ttft_s"),
                          "total_s": med(generated, "total_s")},
        **inproc, "concurrent": load, "server_concurrency": args.concurrency,
        "rss_mib": {"loaded": rss_loaded / 1024, "after_load": rss_after / 1024},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    s, g, e, t = res["serve_stream"], res["cllm_generate"], res["engine"], res["torch"]
    print(f"preset {args.preset}, {args.tokens} new tokens, greedy, median of {args.rounds}; "
          f"{res['cores']} cores, {res['cpu']}; load average {load_before:.1f} before, "
          f"{res['load_avg_1min']['after']:.1f} after")
    print(f"{'':34} {'first token':>12} {'tokens/s':>9}")
    print(f"{'cllm serve, streamed':34} {1000 * s['ttft_s']:>9.1f} ms {s['tok_s']:>9.0f}")
    print(f"{'cllm generate (new process)':34} {1000 * g['ttft_s']:>9.1f} ms "
          f"{'':>9} (whole command {g['total_s']:.2f} s)")
    print(f"{'engine decode, in process':34} {1000 * e['ttft_s']:>9.1f} ms {e['tok_s']:>9.0f}")
    if "tok_s" in t:
        for t in (res["torch"], res["torch_1_thread"]):
            print(f"{'PyTorch KV-cache decode, ' + str(t['threads']) + ' thr.':34} "
                  f"{1000 * t['ttft_s']:>9.1f} ms {t['tok_s']:>9.0f}  (torch {t['version']})")
    else:
        print(f"PyTorch: {t['note']}")
    print(f"{args.clients} concurrent clients x {args.per_client} requests of "
          f"{load['max_tokens']} tokens (server --concurrency {args.concurrency}): "
          f"{load['requests_per_s']:.2f} requests/s, {load['tokens_per_s']:.0f} tokens/s, "
          f"{load['errors']} errors")
    print(f"server RSS: {res['rss_mib']['loaded']:.0f} MiB loaded, "
          f"{res['rss_mib']['after_load']:.0f} MiB after the load")


if __name__ == "__main__":
    main()
