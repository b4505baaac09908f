"""Learning a source tree: the real agent against a nanoGPT-style PyTorch loop, on the same
machine, for the same wall time, scored on the same held-out bits per byte.

Data: CPython's standard library (.py files, test/ and site-packages/ left out, 1 file in 10
held out; benchmarks/stdlib_data.py). The training files are copied to a folder and the
agent is started on it at its defaults (`cllm agent --crawl DIR`, `small`, the settings
table's recipe) with `--workers` (all cores by default) and `--keep-checkpoints` large
enough that no checkpoint of the run is pruned (retention changes nothing else). Its
process CPU time is sampled every second. After `--minutes` it gets SIGTERM (it commits the
running cycle), and every checkpoint is scored: at each mark, the agent's figure is that of
the newest checkpoint committed by then (what a user could generate from at that moment).
Then the PyTorch twin (benchmarks/torch_twin.py: the same `small` model and init, AdamW with
the same betas, clip and decay groups, warmup then a constant rate) trains on the packed
training files, tokenised by a tokenizer learned up front at the model's full vocabulary,
for the same wall time on all cores; its clock stops while it is evaluated. The agent's
clock runs through everything it does: crawl, tokenizer learning, evaluation, checkpoints.

When the agent logs "backlog learned", the store is checked: every trained document must
have passes >= --passes.

    python benchmarks/bench_learn_tree.py --minutes 10 --marks 1,2,5,10
    python benchmarks/bench_learn_tree.py --minutes 1 --marks 0.5,1      # a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_agent(train_dir: Path, data_dir: Path, seconds: float, workers: int,
              extra: list[str]) -> dict:
    """The agent for `seconds`; its CPU samples, log and when the backlog was learned."""
    cmd = [sys.executable, "-m", "agent", "agent", "--data-dir", str(data_dir),
           "--crawl", str(train_dir), "--workers", str(workers),
           "--keep-checkpoints", "100000", *extra]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log: list[tuple[float, str]] = []
    learned = threading.Event()

    def read():
        for line in p.stderr:
            log.append((time.time() - t0, line.rstrip()))
            if "backlog learned" in line:
                learned.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = []
    stop = threading.Event()
    while not stop.wait(1.0):
        try:
            samples.append((time.time() - t0, cpu_seconds(p.pid)))
        except (FileNotFoundError, ProcessLookupError):
            break
        if time.time() - t0 >= seconds:
            stop.set()
    samples.append((time.time() - t0, cpu_seconds(p.pid)))
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    reader.join(timeout=10)
    done_at = next((t for t, line in log if "backlog learned" in line), None)
    return {"t0": t0, "rc": rc, "cpu": samples, "log": log, "backlog_learned_s": done_at}


def ledger_check(data_dir: Path, passes: float) -> dict:
    from sqlalchemy import select

    from store import open_store
    from store.models import Document

    with open_store(data_dir) as store, store.session(read_only=True) as s:
        docs = s.scalars(select(Document).where(Document.trainable_bytes.is_not(None))).all()
        trained = [d for d in docs if d.status == "trained"]
        short = [d.uri for d in trained if d.trained_bytes < passes * d.trainable_bytes - 1e-6]
        counts: dict[str, int] = {}
        for d in s.scalars(select(Document)):
            counts[d.status] = counts.get(d.status, 0) + 1
        return {"documents": counts, "trained": len(trained),
                "min_passes_trained": min((d.trained_bytes / d.trainable_bytes for d in trained),
                                          default=None),
                "trained_below_budget": short}


def commit_times(data_dir: Path, t0: float) -> list[tuple[float, str, int]]:
    """(seconds after the agent started, checkpoint path, cycle) of every checkpoint row."""
    from store import open_store
    from store.checkpoints import list_checkpoints

    with open_store(data_dir) as store, store.session(read_only=True) as s:
        return [(c.created.timestamp() - t0, c.path, c.cycle_id) for c in list_checkpoints(s)]


def cpu_at(samples, t: float) -> float:
    past = [c for s, c in samples if s <= t]
    return past[-1] if past else 0.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--marks", default="1,2,5,10", help="minutes")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--passes", type=float, default=2.0, help="the agent's --passes (for the check)")
    ap.add_argument("--torch-lr", type=float, default=1e-3, help="the twin's constant rate")
    ap.add_argument("--heldout-bytes", type=int, default=8192)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--agent-arg", action="append", default=[],
                    help="extra agent flag (repeatable), e.g. --agent-arg=--passes=3")
    ap.add_argument("--out", type=Path, default=RESULTS / "learn_tree.json")
    args = ap.parse_args(argv)
    from torch_twin import eval_checkpoint

    seconds = args.minutes * 60.0
    marks = [float(m) * 60.0 for m in args.marks.split(",")]
    split = split_files(args.src)
    work = Path(tempfile.mkdtemp(prefix="learn-tree-"))
    train_dir = work / "train"
    for p in split.train:
        dst = train_dir / p.relative_to(args.src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    size = sum(p.stat().st_size for p in split.train)
    print(f"{len(split.train)} training files ({size / 1e6:.1f} MB), {len(split.heldout)} held "
          f"out; agent for {args.minutes:g} min on {args.workers} workers", flush=True)
    agent = run_agent(train_dir, work / "data", seconds, args.workers,
                      [a for x in args.agent_arg for a in x.split("=", 1)])
    print(f"agent exited {agent['rc']}; backlog learned at "
          f"{agent['backlog_learned_s'] and round(agent['backlog_learned_s'])} s", flush=True)
    ledger = ledger_check(work / "data", args.passes)
    commits = commit_times(work / "data", agent["t0"])
    scored = {}
    for t, path, cycle in commits:
        if any(t <= m for m in marks) or t == commits[-1][0]:
            scored[path] = eval_checkpoint(Path(path), split.heldout, args.heldout_bytes)
    rows = []
    for m in marks:
        done = [(t, p, c) for t, p, c in commits if t <= m]
        if done:
            t, p, c = done[-1]
            r = scored[p]
            rows.append({"mark_s": m, "checkpoint_s": round(t, 1), "cycle": c,
                         "cpu_s": round(cpu_at(agent["cpu"], m), 1), "bpb": r["bpb"]})
        else:
            rows.append({"mark_s": m, "checkpoint_s": None, "cycle": None,
                         "cpu_s": round(cpu_at(agent["cpu"], m), 1), "bpb": None})
    print(f"agent: {json.dumps(rows)}", flush=True)
    twin = []
    if not args.skip_torch:
        cmd = [sys.executable, str(Path(__file__).with_name("torch_twin.py")),
               "--src", str(args.src), "--heldout-bytes", str(args.heldout_bytes), "train",
               "--seconds", str(seconds), "--marks", ",".join(str(m) for m in marks),
               "--lr", str(args.torch_lr), "--out", str(work / "twin.json"),
               "--cache", str(work)]
        subprocess.run(cmd, check=True)
        twin = json.loads((work / "twin.json").read_text())["rows"]
    print("\n| minute | agent: checkpoint at (s) | agent CPU s | agent bpb | PyTorch CPU s "
          "| PyTorch bpb |\n|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        tw = twin[i] if i < len(twin) else None
        print(f"| {r['mark_s'] / 60:g} | {r['checkpoint_s']} (cycle {r['cycle']}) | "
              f"{r['cpu_s']} | {r['bpb'] and round(r['bpb'], 4)} | "
              f"{tw and tw['cpu_seconds']} | {tw and round(tw['bpb'], 4)} |")
    print(f"\nledger after the run: {json.dumps(ledger)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "cpu": describe().model,
        "setup": {"src": str(args.src), "minutes": args.minutes, "workers": args.workers,
                  "train_files": len(split.train), "train_bytes": size,
                  "agent_args": args.agent_arg, "torch_lr": args.torch_lr},
        "agent": rows, "torch": twin, "ledger": ledger,
        "backlog_learned_s": agent["backlog_learned_s"],
        "cycles": [line for _, line in agent["log"] if re.search(r"cycle \d+ completed \(", line)],
        "commits": commits}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
