"""New drops first: with a large backlog being learned, how long a file dropped into the
watched inbox takes to be in a committed checkpoint.

A real `cllm agent` (defaults: `small`, the settings table's recipe; `--workers` all cores)
crawls CPython's standard library (the training split of benchmarks/stdlib_data.py, about
10 MB) and watches an inbox. Once the backlog is under way (`--warm` cycles committed), a
10 KB file (a held-out stdlib file, so text the model has not read) is written into the inbox,
`--drops` times, each after the previous one was committed. The latency of a drop runs from
the moment its file is closed to the commit of the cycle that learned it to its budget (the
"new arrivals, alone" cycle), read from the agent's log; it includes the 1 s quiet period
of the file watcher.

    python benchmarks/bench_backlog_drop.py --drops 3
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stdlib_data import DEFAULT_ROOT, split_files  # noqa: E402
from engine.cpu import describe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--drops", type=int, default=3)
    ap.add_argument("--drop-kb", type=int, default=10)
    ap.add_argument("--warm", type=int, default=3, help="backlog cycles committed before a drop")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS / "backlog_drop.json")
    args = ap.parse_args(argv)

    split = split_files(args.src)
    work = Path(tempfile.mkdtemp(prefix="backlog-drop-"))
    train, inbox = work / "train", work / "inbox"
    for p in split.train:
        dst = train / p.relative_to(args.src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    inbox.mkdir()
    backlog_mb = sum(p.stat().st_size for p in split.train) / 1e6
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in split.heldout]
    drops = [t for t in texts if len(t.encode()) >= args.drop_kb * 1024][:args.drops]
    p = subprocess.Popen([sys.executable, "-m", "agent", "agent", "--data-dir", str(work / "data"),
                          "--crawl", str(train), "--watch", str(inbox),
                          "--workers", str(args.workers)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: queue.Queue = queue.Queue()

    def read():
        for line in p.stderr:
            lines.put((time.monotonic(), line.rstrip()))
    threading.Thread(target=read, daemon=True).start()

    def wait_for(pattern, timeout=600):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            t, line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            m = rx.search(line)
            if m:
                return t, m
    rows = []
    try:
        wait_for(rf"cycle {args.warm} completed")
        for i, text in enumerate(drops):
            data = text.encode()[:args.drop_kb * 1024].decode("utf-8", "ignore")
            tmp = inbox / f".drop{i}.tmp"
            tmp.write_text(data, encoding="utf-8")
            t_drop = time.monotonic()
            os.replace(tmp, inbox / f"drop{i}.py")        # closed and in place at once
            _, m = wait_for(r"cycle (\d+) \(\w+\): 1 documents to learn \(new arrivals")
            n = m.group(1)
            t_done, m = wait_for(rf"cycle {n} completed \((\w+)\): (\d+) steps")
            rows.append({"drop": i, "bytes": len(data.encode()), "cycle": int(n),
                         "latency_s": round(t_done - t_drop, 2), "ended_by": m.group(1),
                         "steps": int(m.group(2))})
            print(f"drop {i}: {rows[-1]['bytes']} bytes in a committed checkpoint after "
                  f"{rows[-1]['latency_s']} s (cycle {n}, {m.group(2)} steps)", flush=True)
            wait_for(r"cycle \d+ completed")      # the backlog resumes before the next drop
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
    cpu = describe().model
    print(f"\nbacklog {backlog_mb:.1f} MB, {args.workers} workers, {cpu}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu, "backlog_mb": backlog_mb,
                                    "workers": args.workers, "drops": rows}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
