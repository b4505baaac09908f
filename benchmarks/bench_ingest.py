"""Ingest speed: source-tree throughput (walk + read + hash + store) and watch latency.

1. Throughput: a tree of many small text files is ingested by `Crawler.walk` into a fresh
   SQLite store; reported in MB/s and files/s, next to the walk alone and walk + read +
   decode + hash without the store, so the share of each stage shows.
2. Latency: a FileMonitor (real inotify observer) watches a folder; files are written and
   closed one at a time and the time from close() to the committed pending row is taken,
   p50/p95 (the quiet period is part of it by design; "over quiet" subtracts it).

Usage: python benchmarks/bench_ingest.py [--files 2000] [--size 2048] [--samples 40] [--quiet 1.0]
"""
from __future__ import annotations

import argparse
import queue
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.crawler import Crawler  # noqa: E402
from agent.file_monitor import FileMonitor  # noqa: E402
from agent.inputs.ingest import Ingestor  # noqa: E402
from agent.inputs.paths import walk_files  # noqa: E402
from agent.inputs.text import decode_text, read_file  # noqa: E402
from store.documents import content_sha256  # noqa: E402
from store import open_store  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his it an were are which this be "
         "or has had not but first one their its new after who they have her she two been other "
         "when there all during into school time may years more most only over city some world").split()


def make_tree(root: Path, n_files: int, size: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    total = 0
    for i in range(n_files):
        d = root / f"pkg{i % 20:02d}" / f"mod{(i // 20) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        words, n = [], 0
        while n < size:
            w = rng.choice(WORDS)
            words.append(w)
            n += len(w) + 1
        text = f"# file {i}\n" + " ".join(words)[:size] + "\n"
        (d / f"f{i:05d}.txt").write_text(text)
        total += len(text.encode())
    return total


def throughput(n_files: int, size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        nbytes = make_tree(tree, n_files, size)
        mb = nbytes / 1e6
        print(f"tree: {n_files} files, {mb:.2f} MB")
        t0 = time.perf_counter()
        n = sum(1 for _ in walk_files(tree))
        t_walk = time.perf_counter() - t0
        t0 = time.perf_counter()
        for item in walk_files(tree):
            content_sha256(decode_text(read_file(item.path)).text)
        t_read = time.perf_counter() - t0
        print(f"walk only:                 {n / t_walk:10.0f} files/s")
        print(f"walk+read+decode+hash:     {mb / t_read:10.2f} MB/s  {n / t_read:8.0f} files/s")
        best = None
        for r in range(rounds):
            data = Path(tmp) / f"data{r}"
            store = open_store(data)
            with Crawler(store) as c:
                t0 = time.perf_counter()
                report = c.walk(str(tree))
                dt = time.perf_counter() - t0
            store.close()
            assert report.counts["added"] == n_files, report.counts
            best = dt if best is None else min(best, dt)
            print(f"round {r + 1}: walk+read+hash+store {mb / dt:8.2f} MB/s  {n_files / dt:8.0f} files/s")
        print(f"ingest throughput (best of {rounds}): {mb / best:.2f} MB/s, {n_files / best:.0f} files/s")


def latency(samples: int, quiet: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "watched"
        root.mkdir()
        store = open_store(Path(tmp) / "data")
        ingestor = Ingestor(store)
        events: queue.Queue = queue.Queue()
        lat = []
        with FileMonitor([root], events, quiet_period=quiet) as mon:
            while events.get(timeout=10).kind != "reconciled":
                pass
            for i in range(samples):
                path = root / f"doc{i:04d}.txt"
                with open(path, "w") as f:
                    f.write(f"document {i}: " + " ".join(random.choices(WORDS, k=200)) + "\n")
                t_close = time.perf_counter()
                while True:
                    ev = events.get(timeout=quiet + 10)
                    res = ingestor.handle(ev)
                    if ev.path == str(path) and res is not None and res.outcome == "added":
                        lat.append(time.perf_counter() - t_close)
                        break
            kind = mon.observer_kind(str(root))
        store.close()
    lat.sort()
    p50 = statistics.median(lat)
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
    print(f"watch latency close -> pending row ({kind} observer, quiet period {quiet:.2f} s, "
          f"{samples} files): p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
          f"(over quiet: p50 {(p50 - quiet) * 1000:.1f} ms, p95 {(p95 - quiet) * 1000:.1f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=2048, help="bytes per file")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--quiet", type=float, action="append", help="quiet period(s) to measure (default 1.0)")
    args = ap.parse_args()
    throughput(args.files, args.size, args.rounds)
    for q in args.quiet or [1.0]:
        latency(args.samples, q)


if __name__ == "__main__":
    main()
