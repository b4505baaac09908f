"""Learning a source tree: the real agent against two PyTorch twins, on the same machine,
each alone for the same wall time, scored afterwards on the same held-out bits per byte.

Data: CPython's standard library (.py files, test/ and site-packages/ left out, 1 file in 10
held out; benchmarks/stdlib_data.py). The peers, run one after another (never side by
side), each on all cores:
- the agent, at its defaults (`cllm agent --crawl DIR --workers N`: `small`, the settings
  table's recipe), pointed at a copy of the training files;
- the nanoGPT-style twin (benchmarks/torch_twin.py --recipe nanogpt): what a user would
  write today, serving its raw weights;
- our recipe in PyTorch (--recipe ours): the agent's preset, tokenizer learner and
  vocabulary, optimizer, schedule, warmup, batch, context, its own batches (backlog reader,
  file headers, fill-in-the-middle windows, replay), pass budget and EMA (what it serves),
  without the sweeps after the passes: what our engine's speed is worth against PyTorch's
  kernels.

The clocks: each peer's clock starts when it is launched and runs through everything it
does: interpreter start, reading the files (for the agent, its crawl and store), learning
its tokenizer, encoding, training, and for the agent its own per-cycle evaluation and
checkpoints. The benchmark's own scoring is on no clock: during the race only copies are
made, and every copy is scored after the last peer has finished. The numba kernels are
compiled into numba's on-disk cache before the race (once per install, as PyTorch ships its
kernels compiled).

The weights scored at a mark are those a user would have had at that moment:
- the agent's: the newest checkpoint `cllm generate` would load, i.e. committed by then
  (its store row, and its file); a watcher (race_snapshots.CheckpointWatcher) copies every
  new checkpoint file of the data directory (and `checkpoints/live*` snapshots, should the
  agent write them) with its tokenizer, stamped with when it was written; a committed one
  counts from its commit. Scored with its EMA weights when it has them (what generate uses);
- a twin's: a copy of the weights it serves, taken at the first step boundary at or after
  the mark (milliseconds later), while its clock runs on.

A compressor floor is reported too: `xz -9e` (Python's lzma, preset 9 | extreme) on the
training files, the marginal size of each held-out file's first 8 KB given them, in bits per
held-out byte (benchmarks/compress_floor.py; cached per split).

When the agent logs "backlog learned", the store is checked: every trained document must
have passes >= its pass budget. Results: benchmarks/results/learn_tree-<time>.json (git
commit, CPU, torch version, command line, per-mark bits per byte, tokens/s of each peer).

    python benchmarks/bench_learn_tree.py --minutes 10 --marks 1,2,5,10
    python benchmarks/bench_learn_tree.py --minutes 0.5 --marks 0.25,0.5 --max-files 60  # smoke
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress_floor import compressor_floor  # noqa: E402
from race_snapshots import (CheckpointWatcher, Snapshot, TOKENIZER_SUFFIX,  # noqa: E402
                            weights_at)
from stdlib_data import DEFAULT_ROOT, split_files  # noqa: E402
from engine.cpu import describe  # noqa: E402

log = logging.getLogger("bench_learn_tree")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PEERS = {"agent": "agent", "nanogpt": "nanoGPT twin", "ours": "our recipe in PyTorch"}
CKPT_RE = re.compile(r"^ckpt-\d{6}\.safetensors$")


# --------------------------------------------------------------------------- the agent
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_agent(train_dir: Path, data_dir: Path, snap_dir: Path, seconds: float, workers: int,
              extra: list[str]) -> dict:
    """The agent for `seconds`, its checkpoints copied as they appear; its CPU samples, log,
    copies and when the backlog was learned."""
    cmd = [sys.executable, "-m", "agent", "agent", "--data-dir", str(data_dir),
           "--crawl", str(train_dir), "--workers", str(workers), *extra]
    log.info("agent: %s", shlex.join(cmd))
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=ROOT)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in p.stderr:
            lines.append((time.time() - t0, line.rstrip()))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = []
    tick = threading.Event()           # never set: a timed wait between CPU samples
    with CheckpointWatcher(data_dir / "checkpoints", snap_dir, t0) as watcher:
        while (left := t0 + seconds - time.time()) > 0 and p.poll() is None:
            tick.wait(min(1.0, left))
            try:
                samples.append((time.time() - t0, cpu_seconds(p.pid)))
            except (FileNotFoundError, ProcessLookupError):
                break
        watcher.scan()                 # what was written before the deadline, not yet copied
    try:
        samples.append((time.time() - t0, cpu_seconds(p.pid)))
    except (FileNotFoundError, ProcessLookupError):
        pass
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=300)
    reader.join(timeout=10)
    done_at = next((t for t, line in lines if "backlog learned" in line), None)
    return {"t0": t0, "rc": rc, "cpu": samples, "log": lines, "backlog_learned_s": done_at,
            "copies": [s for s in watcher.snapshots if s.at_s <= seconds]}


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


def agent_record(data_dir: Path, t0: float) -> dict:
    """From the store: when each checkpoint file was committed (seconds after launch, by
    file name) and what the completed cycles trained."""
    from store import open_store
    from store.checkpoints import list_checkpoints
    from store.cycles import list_cycles
    from store.models import CycleStatus

    with open_store(data_dir) as store, store.session(read_only=True) as s:
        commits = {Path(c.path).name: (round(c.created.timestamp() - t0, 3), c.cycle_id)
                   for c in list_checkpoints(s)}
        cycles = list_cycles(s, status=CycleStatus.COMPLETED)
        return {"commits": commits, "tokens": sum(c.tokens or 0 for c in cycles),
                "train_s": sum(float((c.schedule or {}).get("seconds") or 0) for c in cycles)}


def agent_snapshots(copies: list[Snapshot], commits: dict) -> list[Snapshot]:
    """The copies a user could load, from when: a checkpoint from its commit (none that was
    never committed); any other weights file (a live snapshot) from when it was written."""
    out = []
    for c in copies:
        name = Path(c.source).name
        if CKPT_RE.match(name):
            if name not in commits:
                continue
            c = Snapshot(c.path, max(c.at_s, commits[name][0]), c.source)
        out.append(c)
    return out


def cpu_at(samples, t: float) -> float:
    past = [c for s, c in samples if s <= t]
    return past[-1] if past else 0.0


# --------------------------------------------------------------------------- the twins
def run_twin(recipe: str, args, seconds: float, marks: list[float], snap_dir: Path) -> dict:
    """A twin for `seconds` in its own process (its clock starts at the launch); its run
    summary, each mark naming the weights file copied for it."""
    out = snap_dir / "run.json"
    cmd = [sys.executable, str(Path(__file__).with_name("torch_twin.py")),
           "--src", str(args.src), "--glob", args.glob,
           "--heldout-bytes", str(args.heldout_bytes)]
    if args.max_files:
        cmd += ["--max-files", str(args.max_files)]
    cmd += ["train", "--recipe", recipe, "--seconds", str(seconds),
            "--marks", ",".join(str(m) for m in marks), "--snapshots", str(snap_dir),
            "--no-score", "--out", str(out), "--threads", str(args.workers)]
    if recipe == "nanogpt":
        cmd += ["--lr", str(args.torch_lr)]
    elif args.passes is not None:
        cmd += ["--passes", str(args.passes)]
    log.info("%s: %s", recipe, shlex.join(cmd))
    t0 = time.time()
    subprocess.run(cmd + ["--t0", repr(t0)], check=True, cwd=ROOT)
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- scoring
class Scorer:
    """Held-out bits per byte of weights files, each scored once (after the race)."""

    def __init__(self, heldout, max_bytes: int, tokenizers: list[Path]) -> None:
        from torch_twin import eval_checkpoint
        self.eval, self.heldout, self.max_bytes = eval_checkpoint, heldout, max_bytes
        self.tokenizers, self.done = tokenizers, {}

    def __call__(self, path: Optional[str]) -> Optional[dict]:
        if path is None:
            return None
        if path not in self.done:
            self.done[path] = self.eval(Path(path), self.heldout, self.max_bytes,
                                        tokenizers=self.tokenizers)
            log.info("scored %s: %.4f bpb", path, self.done[path]["bpb"])
        return self.done[path]


def git_state() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout
    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip())}


def torch_version() -> Optional[str]:
    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def _fmt(r: Optional[dict]) -> str:
    if not r or r.get("bpb") is None:
        return "-"
    at = f"{r['weights_at_s']:.0f} s" + (f" (cycle {r['cycle']})" if r.get("cycle") else "")
    return f"{at}, {r['bpb']:.4f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--glob", default="*.py",
                    help="which files of the tree (e.g. '*.txt' for agent/sample_corpus)")
    ap.add_argument("--max-files", type=int, default=None,
                    help="only the first N files of the tree (smoke runs)")
    ap.add_argument("--sample-prompt", default=None,
                    help="also print what each peer's scored weights write after this prompt "
                         "(60 tokens, cllm generate's sampling, seed 1)")
    ap.add_argument("--minutes", type=float, default=10.0, help="each peer's wall time")
    ap.add_argument("--marks", default="1,2,5,10", help="minutes")
    ap.add_argument("--peers", default=",".join(PEERS), help="which of agent,nanogpt,ours")
    ap.add_argument("--skip-torch", action="store_true", help="the agent alone")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="the agent's workers and the twins' threads [all cores]")
    ap.add_argument("--passes", type=float, default=None,
                    help="the agent's and our recipe's pass budget [the settings table's]")
    ap.add_argument("--torch-lr", type=float, default=1e-3, help="the nanoGPT twin's rate")
    ap.add_argument("--heldout-bytes", type=int, default=8192)
    ap.add_argument("--agent-arg", action="append", default=[],
                    help="extra agent flag (repeatable), e.g. --agent-arg=--vocab-growth=500")
    ap.add_argument("--work", type=Path, default=None,
                    help="the run's folder [bench-out/learn_tree-<time>]")
    ap.add_argument("--keep-work", action="store_true",
                    help="keep the training copy, the agent's data directory and every copy")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON [benchmarks/results/learn_tree-<time>.json]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    from agent.settings import TrainerSettings
    from engine.warmup import compile_kernels

    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.work or ROOT / "bench-out" / f"learn_tree-{stamp}"
    out_path = args.out or RESULTS / f"learn_tree-{stamp}.json"
    peers = ["agent"] if args.skip_torch else [p for p in args.peers.split(",") if p]
    if set(peers) - set(PEERS):
        raise SystemExit(f"--peers: unknown {sorted(set(peers) - set(PEERS))}; choose from "
                         f"{', '.join(PEERS)}")
    seconds = args.minutes * 60.0
    marks = [m for m in (float(x) * 60.0 for x in args.marks.split(",")) if m <= seconds]
    passes = args.passes if args.passes is not None else TrainerSettings().passes
    if [k for k in os.environ if k.startswith("CLLM_")]:
        log.warning("CLLM_* variables are set: the agent reads them, our recipe twin does not")
    cpu = describe()
    git = git_state()                   # the code that runs (a commit made meanwhile is not)
    split = split_files(args.src, args.max_files, args.glob)
    size = sum(p.stat().st_size for p in split.train)
    print(cpu.line())
    print(f"{len(split.train)} training files ({size / 1e6:.1f} MB), {len(split.heldout)} held "
          f"out; {', '.join(peers)}: {args.minutes:g} min each, one after another, "
          f"{args.workers} cores", flush=True)
    floor = compressor_floor(split.train, split.heldout, args.heldout_bytes)
    print(f"xz -9e floor: {floor['bpb']:.4f} bits/byte", flush=True)
    st = TrainerSettings()   # numba's on-disk cache, before any clock: the agent's recipe's
    compile_kernels(ema=True, optimizer=st.train_config(1).optimizer, arch=st.arch)

    results: dict[str, dict] = {}
    if "agent" in peers:
        train_dir = work / "train"
        for p in split.train:
            dst = train_dir / p.relative_to(args.src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
        extra = [a for x in args.agent_arg for a in x.split("=", 1)]
        if args.passes is not None:
            extra += ["--passes", str(args.passes)]
        agent = run_agent(train_dir, work / "data", work / "snapshots" / "agent", seconds,
                          args.workers, extra)
        rec = agent_record(work / "data", agent["t0"])
        results["agent"] = {
            "rc": agent["rc"], "backlog_learned_s": agent["backlog_learned_s"],
            "snapshots": [s.asdict() for s in agent_snapshots(agent["copies"], rec["commits"])],
            "tokens": rec["tokens"], "tokens_per_s": round(rec["tokens"] / seconds, 1),
            "train_tokens_per_s": round(rec["tokens"] / max(rec["train_s"], 1e-9), 1),
            "commits": rec["commits"], "ledger": ledger_check(work / "data", passes),
            "cycles": [ln for _, ln in agent["log"] if re.search(r"cycle \d+ completed \(", ln)],
            "cpu": agent["cpu"]}
        print(f"agent exited {agent['rc']}; backlog learned at "
              f"{agent['backlog_learned_s'] and round(agent['backlog_learned_s'])} s", flush=True)
    for recipe in ("nanogpt", "ours"):
        if recipe in peers:
            results[recipe] = run_twin(recipe, args, seconds, marks, work / "snapshots" / recipe)

    # ------------------------------------------------ scoring, after every clock has stopped
    tokenizers = sorted((work / "snapshots").rglob(f"*{TOKENIZER_SUFFIX}"))
    score = Scorer(split.heldout, args.heldout_bytes, tokenizers)
    if "agent" in results:
        a = results["agent"]
        snaps = [Snapshot(**s) for s in a["snapshots"]]
        cpu_samples, a["marks"] = a.pop("cpu"), []
        for m in marks:
            s = weights_at(snaps, m)
            r = score(s.path if s else None)
            a["marks"].append({"mark_s": m, "weights_at_s": s and s.at_s, "path": s and s.path,
                               "cycle": r and r["cycle"], "step": r and r["step"],
                               "weights": r and r["weights"], "bpb": r and r["bpb"],
                               "cpu_s": round(cpu_at(cpu_samples, m), 1)})
    for recipe in ("nanogpt", "ours"):
        for r in results.get(recipe, {}).get("marks", []):
            got = score(r["path"])
            r.update(weights_at_s=r.pop("at_s"), bpb=got and got["bpb"],
                     weights=got and got["weights"])
    if args.sample_prompt is not None:
        from torch_twin import sample_checkpoint
        for p in results:
            for r in results[p]["marks"]:
                if r.get("path"):
                    r["sample"] = sample_checkpoint(Path(r["path"]), args.sample_prompt,
                                                    tokenizers=tokenizers)

    print(f"\n{cpu.line()}\n")
    names = [PEERS[p] for p in PEERS if p in results]
    print("| minute | " + " | ".join(f"{n}: weights at, bpb" for n in names) + " | xz -9e |")
    print("|---" * (len(names) + 2) + "|")
    for i, m in enumerate(marks):
        cells = [_fmt(results[p]["marks"][i]) for p in PEERS if p in results]
        print(f"| {m / 60:g} | " + " | ".join(cells) + f" | {floor['bpb']:.4f} |")
    print("\ntokens/s over the race (in training): " + "; ".join(
        f"{PEERS[p]} {results[p]['tokens_per_s']:,.0f} ({results[p]['train_tokens_per_s']:,.0f})"
        for p in PEERS if p in results))
    if args.sample_prompt is not None:
        for p in results:
            for r in results[p]["marks"]:
                if "sample" in r:
                    print(f"\n{PEERS[p]} at {r['mark_s'] / 60:g} min: "
                          f"{args.sample_prompt + r['sample']!r}")
    if "agent" in results:
        print(f"ledger after the run: {json.dumps(results['agent']['ledger'])}")

    scored = set(score.done)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({
        "benchmark": "learn_tree", "started": dt.datetime.now().astimezone().isoformat(),
        "command": shlex.join([sys.executable, *sys.argv]), "git": git,
        "cpu": cpu.line(), "cpu_model": cpu.model, "cores": cpu.cores,
        "torch": torch_version(),
        "setup": {"src": str(args.src), "glob": args.glob,
                  "sample_prompt": args.sample_prompt, "max_files": args.max_files, "minutes": args.minutes,
                  "marks_s": marks, "workers": args.workers, "passes": passes,
                  "train_files": len(split.train), "train_bytes": size,
                  "heldout_files": len(split.heldout), "heldout_bytes": args.heldout_bytes,
                  "agent_args": args.agent_arg, "torch_lr": args.torch_lr,
                  "work": str(work)},
        "compressor_floor": floor, "peers": results}, indent=1))
    print(f"results: {out_path}")
    if not args.keep_work:              # keep only the weights scored (for a rescore)
        shutil.rmtree(work / "train", ignore_errors=True)
        shutil.rmtree(work / "data", ignore_errors=True)
        for f in (work / "snapshots").rglob("*.safetensors"):
            if str(f) not in scored:
                f.unlink()
                f.with_name(f.name.replace(".safetensors", TOKENIZER_SUFFIX)).unlink(
                    missing_ok=True)
        for d in sorted((work / "snapshots").rglob("*"), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


if __name__ == "__main__":
    main()
