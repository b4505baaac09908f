"""The agent as a user runs it: a real `cllm agent` subprocess per preset; drop a 10 KB text
file into its watched folder and time how long until that file's cycle has its checkpoint
(the "cycle N completed" line, written after the store transaction commits). Repeats the
drop a few times (later cycles replay earlier files), then reads the agent's peak RSS
(VmHWM) and times SIGTERM -> exit. The quiet period (default 1 s, as the agent's) is
part of every figure.

    python benchmarks/bench_drop.py --presets tiny,small,base --drops 3
"""
from __future__ import annotations

import argparse
import json
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


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def texts_of_10kb(n: int) -> list[str]:
    files = sorted(SAMPLE_CORPUS.rglob("*.txt"), key=lambda p: -p.stat().st_size)
    out = []
    for p in files:
        t = p.read_text(encoding="utf-8")
        if len(t.encode()) >= 10_000:
            out.append(t.encode()[:10_000].decode("utf-8", "ignore"))
        if len(out) == n:
            return out
    raise SystemExit("the corpus has too few files of 10 KB")


def run_preset(preset: str, drops: int, workers: int | None, quiet: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data, inbox = Path(tmp) / "data", Path(tmp) / "inbox"
        inbox.mkdir()
        cmd = [sys.executable, "-m", "agent", "agent", "--data-dir", str(data), "--watch",
               str(inbox), "--preset", preset, "--quiet-period", str(quiet)]
        if workers:
            cmd += ["--workers", str(workers)]
        t_start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=ROOT)
        lines: queue.Queue = queue.Queue()
        log: list[str] = []

        def read():
            for line in p.stderr:
                log.append(line)
                lines.put((time.perf_counter(), line))
            lines.put((time.perf_counter(), None))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def wait_for(pattern: str, timeout: float = 600) -> tuple[float, str]:
            rx = re.compile(pattern)
            while True:
                t, line = lines.get(timeout=timeout)
                if line is None:
                    raise SystemExit("agent exited:\n" + "".join(log))
                if rx.search(line):
                    return t, line

        try:
            t_run, _ = wait_for(r"agent running")
            latencies, cycles = [], []
            for i, text in enumerate(texts_of_10kb(drops)):
                tmpf = inbox / f".drop-{i}.tmp"
                tmpf.write_text(text, encoding="utf-8")
                t0 = time.perf_counter()
                os.replace(tmpf, inbox / f"drop-{i}.txt")      # an atomic save, as editors do
                t1, line = wait_for(r"cycle \d+ completed:")
                latencies.append(t1 - t0)
                m = re.search(r"cycle (\d+) completed: (\d+) steps", line)
                cycles.append({"cycle": int(m.group(1)), "steps": int(m.group(2)),
                               "drop_to_checkpoint_s": round(t1 - t0, 2)})
                wait_for(r"cycle \d+ completed: \d+ documents")   # the agent's summary line
            rss = peak_rss_mb(p.pid)
            t0 = time.perf_counter()
            p.send_signal(signal.SIGTERM)
            rc = p.wait(timeout=60)
            t_exit = time.perf_counter() - t0
        finally:
            if p.poll() is None:
                p.kill()
        tok_s = [float(m.group(1)) for m in
                 (re.search(r"([\d.]+) tok/s", line) for line in log) if m]
        return {"preset": preset, "start_to_running_s": round(t_run - t_start, 2),
                "quiet_period_s": quiet, "cycles": cycles,
                "drop_to_checkpoint_s": [round(x, 2) for x in latencies],
                "peak_rss_mb": round(rss, 1), "sigterm_to_exit_s": round(t_exit, 2),
                "exit_status": rc, "tok_s_logged": tok_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small,base")
    ap.add_argument("--drops", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--quiet-period", type=float, default=1.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for preset in args.presets.split(","):
        rows.append(run_preset(preset, args.drops, args.workers, args.quiet_period))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
