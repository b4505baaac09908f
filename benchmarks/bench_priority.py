"""What the training priority buys the person at the machine: a foreground CPU job (parallel
xz-style compression, lzma preset 6, of the sample corpus's text: one process per usable
CPU, as `make -jN` or a test run would use them) timed alone, then beside a real
`cllm agent` subprocess training at --priority normal, low and idle; and the agent's
training tokens/s in each case, and alone (what the job costs it).

The agent's tokens/s is its steps during the job's window (from the store's step metrics,
sampled about every second) x batch x context. Each case starts a fresh agent on the sample
corpus and waits for its first training step (vocabulary learned, kernels compiled) before
the job starts. The CPU and the usable CPUs are printed with the figures.

    python benchmarks/bench_priority.py                      # the measurement
    python benchmarks/bench_priority.py --preset tiny --job-mb 1 --window 3   # a smoke run
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import lzma
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.inputs.corpus import SAMPLE_CORPUS  # noqa: E402
from engine import preset as engine_preset  # noqa: E402
from engine.cpu import describe, usable_cpus  # noqa: E402

CASES = ("job alone", "agent alone", "normal", "low", "idle")


def job_text(mb: float) -> bytes:
    """`mb` MB of the sample corpus's text (repeated)."""
    text = b"".join(p.read_bytes() for p in sorted(SAMPLE_CORPUS.rglob("*.txt")))
    n = int(mb * 1e6)
    return (text * (n // len(text) + 1))[:n]


def compress_worker(mb: float) -> None:
    """One process of the foreground job (`--job-worker MB`)."""
    lzma.compress(job_text(mb), preset=6)


def run_job(procs: int, mb: float) -> float:
    """The foreground job's wall seconds: `procs` processes compressing `mb` MB each."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job-worker", str(mb)]
    t0 = time.perf_counter()
    ps = [subprocess.Popen(cmd, cwd=ROOT) for _ in range(procs)]
    if any(p.wait() != 0 for p in ps):
        raise SystemExit("the foreground job failed")
    return time.perf_counter() - t0


class AgentRun:
    """A `cllm agent` subprocess on a fresh data directory learning the sample corpus."""

    def __init__(self, data: Path, preset: str, priority: str, batch: int) -> None:
        self.data = data
        cmd = [sys.executable, "-m", "agent", "agent", "--data-dir", str(self.data),
               "--crawl", str(SAMPLE_CORPUS), "--preset", preset, "--priority", priority,
               "--batch-size", str(batch), "--snapshot-seconds", "0",
               "--no-pause-on-battery"]
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.p.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 900) -> None:
        rx = re.compile(pattern)
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise SystemExit("the agent exited:\n" + "".join(self.log[-30:]))
            if rx.search(line):
                return

    def steps_by(self, when: dt.datetime) -> int:
        """Steps the agent had trained by `when`, over all its cycles (sampled metrics)."""
        from store import open_store
        from store.cycles import list_cycles, step_metrics

        with open_store(self.data) as store, store.session(read_only=True) as s:
            total = 0
            for c in list_cycles(s, limit=1000):
                done = [m.step for m in step_metrics(s, c.id) if m.recorded <= when]
                total += max(done, default=0)
            return total

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.reader.join()


def measure(case: str, args, tmp: Path) -> dict:
    tokens_per_step = args.batch * engine_preset(args.preset).context
    agent = None
    if case != "job alone":
        agent = AgentRun(tmp / case.replace(" ", "-"), args.preset,
                         "normal" if case == "agent alone" else case, args.batch)
        agent.wait_for(r"cycle \d+: step \d+,")          # training runs
    try:
        t0 = dt.datetime.now(dt.timezone.utc)
        if case == "agent alone":
            threading.Event().wait(args.window)          # the agent trains by itself
            job_s = None
        else:
            job_s = run_job(args.procs, args.job_mb)
        t1 = dt.datetime.now(dt.timezone.utc)
        tok_s = None
        if agent is not None:
            threading.Event().wait(1.5)                  # the sampled metric at t1 is written
            steps = agent.steps_by(t1) - agent.steps_by(t0)
            tok_s = steps * tokens_per_step / (t1 - t0).total_seconds()
    finally:
        if agent is not None:
            agent.stop()
    return {"case": case, "job_s": job_s, "agent_tok_s": tok_s,
            "window_s": (t1 - t0).total_seconds()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--job-mb", type=float, default=20.0,
                    help="MB each job process compresses")
    ap.add_argument("--procs", type=int, default=max(1, round(usable_cpus())),
                    help="job processes [default: the usable CPUs]")
    ap.add_argument("--window", type=float, default=None,
                    help="seconds the agent alone is measured [default: the job alone's]")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json")
    ap.add_argument("--job-worker", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job_worker is not None:
        compress_worker(args.job_worker)
        return
    cases = [c.strip() for c in args.cases.split(",")]
    print(describe().line())
    print(f"usable CPUs {usable_cpus():g}; job: {args.procs} processes x {args.job_mb:g} MB "
          f"(lzma preset 6); agent: preset {args.preset}, batch {args.batch}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            if case == "agent alone" and args.window is None:
                alone = next((r["job_s"] for r in rows if r["case"] == "job alone"), None)
                args.window = alone or 30.0
            rows.append(measure(case, args, Path(tmp)))
            r = rows[-1]
            print(f"  {case:12s} job {r['job_s'] or float('nan'):7.2f} s   agent "
                  f"{r['agent_tok_s'] or float('nan'):9.0f} tok/s", flush=True)
    alone = next((r["job_s"] for r in rows if r["case"] == "job alone"), None)
    agent_alone = next((r["agent_tok_s"] for r in rows if r["case"] == "agent alone"), None)
    print("\ncase          job time / alone   agent tok/s / alone")
    for r in rows:
        ratio = r["job_s"] / alone if r["job_s"] and alone else None
        share = r["agent_tok_s"] / agent_alone if r["agent_tok_s"] and agent_alone else None
        r.update(job_ratio=ratio, agent_ratio=share)
        print(f"  {r['case']:12s} {ratio or float('nan'):13.2f}x {share or float('nan'):15.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"cpu": describe().line(), "usable_cpus": usable_cpus(), "preset": args.preset,
             "batch": args.batch, "procs": args.procs, "job_mb": args.job_mb, "rows": rows},
            indent=2))


if __name__ == "__main__":
    main()
