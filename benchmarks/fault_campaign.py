"""The fault campaign against `cllm agent`, kept repeatable (issue 14): SIGKILL at each named
moment and at random moments, corrupted checkpoints, a zoo of bad inputs, and the scenarios
the first campaign found broken. Each trial runs real `cllm` subprocesses (tiny preset, two
workers) on a fresh data directory and then checks the store against its invariants:

  * nothing lost: every watched file has a live row whose hash is the file's, learned to its
    budget (`--passes`) once the agent reports its backlog learned;
  * nothing trained twice: a document's trained bytes are exactly what completed cycles
    credited it (cycle_documents), and what the cycles learning the backlog credited it is
    never more than its budget (consolidation cycles give trained documents passes past
    it by design: `--keep-learning`, on by default);
  * no cycle left running, no temp file, every kept checkpoint's file matches its row's
    SHA-256, one latest, no file without a row;
  * no row that completed cycles trained is marked skipped.

    python benchmarks/fault_campaign.py                 # the whole campaign (~15 min, 2 cores)
    python benchmarks/fault_campaign.py --quick         # one kill per moment, fewer repeats
    python benchmarks/fault_campaign.py --only kill,zoo --out results.md

It prints a table (trials, passed, failures with the command that reproduces each). The
fast, deterministic cases are also ordinary tests in tests/ (see the issue 14 note).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fault_inject import MOMENTS  # noqa: E402
from engine.cpu import describe  # noqa: E402

AGENT = ["--preset", "tiny", "--workers", "2", "--min-cycle-tokens", "300", "--max-wait", "30",
         "--quiet-period", "0.2", "--batch-size", "4"]
TIMEOUT = 120
IDLE_S = 25      # no cycle for this long after a restart: nothing left to learn
PASSES = 2.0
TEXTS = ["the crystal lattice hums a quiet tune. ", "every sphere touches twelve neighbours. ",
         "prime numbers walk the ulam spiral outward. "]


# ---------------------------------------------------------------------------- processes

class Proc:
    """A `cllm` subprocess whose stderr lines a thread reads into a queue."""

    def __init__(self, args: list[str], inject: tuple[str, int] | None = None, cwd=None):
        pre = ([str(ROOT / "benchmarks" / "fault_inject.py"), inject[0], str(inject[1]), "--"]
               if inject else ["-m", "agent"])
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        self.cmd = [sys.executable, *pre, *args]
        self.p = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env, cwd=cwd)
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        self.out = ""
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_out, daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self):
        for line in self.p.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _read_out(self):
        self.out = self.p.stdout.read()

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str | None:
        """The first line matching `pattern`, or None if the process ended first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no line matching {pattern!r} in {timeout:.0f} s")
            if line is None:
                return None
            if rx.search(line):
                return line

    def finish(self, sig=None, timeout: float = TIMEOUT) -> int:
        if sig is not None and self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        for t in self._threads:
            t.join(timeout=10)
        return rc

    def text(self) -> str:
        return "".join(self.log)


def cllm(*args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def agent_args(data: Path, watch: Path, *extra) -> list[str]:
    # -vv: the ingest's debug line names each version it records (wait_learned reads it)
    return ["agent", "-vv", "--data-dir", str(data), "--watch", str(watch), "--passes",
            str(PASSES), *AGENT, *extra]


# the agent's debug line for each input it records: "added: URI (sha256 0123456789ab, ...",
# or "refused URI: reason" (agent/inputs/ingest.py)
RECORDED = re.compile(r"(?:added|unchanged|restored|duplicate): (\S+) \(sha256 ([0-9a-f]*)"
                      r"|refused (\S+): ")
CYCLE = re.compile(r"cycle \d+ completed")
WAITED = (r"(?:added|unchanged|restored|duplicate|refused)[: ]|cycle \d+ completed"
          r"|backlog learned|Error|Traceback")


def version(path: Path, any_outcome: bool = False) -> tuple[str, str | None]:
    """(uri, the first 12 hex digits of the SHA-256 its current text is recorded under; None
    when any record of it will do, e.g. a file that is refused)."""
    from agent.inputs.paths import file_uri

    sha = None if any_outcome else hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return file_uri(path), sha


def wait_learned(p: Proc, files, timeout: float = TIMEOUT, idle: float | None = None,
                 any_outcome: bool = False) -> str | None:
    """Wait for the state the checks judge, not for the first line that looks like it: the
    line recording the current version of each of `files` (the files as they are now), then
    a completed cycle, then "backlog learned". The first "backlog learned" can come before
    the last version of a growing file is even ingested (on 2 cores the cycles are short),
    and a check then judges a store still learning. Returns that line, an error line, or
    None when the process ended first; TimeoutError after `timeout` s, or after `idle` s
    without a line that moves it on."""
    want = dict(version(Path(f), any_outcome) for f in files)
    cycled = False
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"not learned in {timeout:.0f} s; waiting for {sorted(want)}")
        line = p.wait_for(WAITED, timeout=min(left, idle or left))
        if line is None:
            return None
        if " DEBUG " not in line and ("Error" in line or "Traceback" in line):
            return line
        m = RECORDED.search(line)
        if m:
            uri, sha = m.group(1) or m.group(3), m.group(2)
            if uri in want and want[uri] in (None, sha):
                del want[uri]
                cycled = False          # a cycle must complete after it
        elif CYCLE.search(line):
            cycled = not want
        elif "backlog learned" in line and cycled:
            return line


def learn_to_the_end(data: Path, watch: Path) -> tuple[int, str]:
    """Run the agent until it reports the backlog learned (after recording every watched
    file as it is: wait_learned), then stop it with SIGTERM. An agent restarted with
    nothing left to learn trains no cycle: after IDLE_S without a line that moves it on,
    the store decides (every file learned, or not)."""
    p = Proc(agent_args(data, watch))
    done = False
    try:
        line = wait_learned(p, watched_files(watch), idle=IDLE_S)
        done = line is not None and "backlog learned" in line
    except TimeoutError:        # quiet: learned already, or stuck (check_store tells)
        done = not check_store(data, watch)
    rc = p.finish(signal.SIGTERM)
    return (rc if done else -1), p.text()


def watched_files(watch: Path) -> list[Path]:
    return sorted(f for f in watch.rglob("*") if f.is_file() and not f.is_symlink())


# ---------------------------------------------------------------------------- invariants

def check_store(data: Path, watch: Path | None, learned: bool = True) -> list[str]:
    from sqlalchemy import func, select

    from engine.checkpoint import file_sha256
    from store import open_store
    from store.ledger import budget_bytes
    from store.models import Checkpoint, Cycle, CycleDocument, Document
    from agent.inputs.paths import uri_to_path

    bad: list[str] = []
    ck_dir = data / "checkpoints"
    temps = [p.name for p in ck_dir.iterdir() if p.name.endswith(".tmp")] if ck_dir.is_dir() else []
    if temps:
        bad.append(f"temp files left: {temps}")
    store = open_store(data)
    try:
        with store.session(read_only=True) as s:
            running = list(s.scalars(select(Cycle.id).where(Cycle.status == "running")))
            if running:
                bad.append(f"cycles left running: {running}")
            rows = list(s.scalars(select(Checkpoint).where(Checkpoint.pruned.is_(None))))
            if rows and sum(bool(c.is_latest) for c in rows) != 1:
                bad.append("not exactly one latest checkpoint")
            completed = set(s.scalars(select(Cycle.id).where(Cycle.status == "completed")))
            # a refused file of a rolled-back cycle stays on disk for inspection
            for c in (c for c in rows if c.cycle_id in completed or c.is_latest):
                if not Path(c.path).exists():
                    bad.append(f"checkpoint row {c.id}: file {c.path} missing")
                elif file_sha256(c.path) != c.sha256:
                    bad.append(f"checkpoint row {c.id}: file does not match its SHA-256")
            recorded = {Path(c.path).name for c in s.scalars(select(Checkpoint))}
            if ck_dir.is_dir():
                orphans = [p.name for p in ck_dir.glob("ckpt-*.safetensors")
                           if p.name not in recorded]
                if orphans:
                    bad.append(f"checkpoint files without a row: {orphans}")
            credits = (select(CycleDocument.document_id, func.sum(CycleDocument.new_bytes))
                       .join(Cycle, Cycle.id == CycleDocument.cycle_id)
                       .where(Cycle.status == "completed").group_by(CycleDocument.document_id))
            credited = dict(s.execute(credits).all())
            learned = dict(s.execute(credits.where(Cycle.trigger != "consolidate")).all())
            docs = list(s.scalars(select(Document)))
            for d in docs:
                got = credited.get(d.id, 0)
                if (d.trained_bytes or 0) != got:
                    bad.append(f"document {d.id}: trained_bytes {d.trained_bytes} but completed "
                               f"cycles credited {got}")
                backlog = learned.get(d.id, 0)
                if d.trainable_bytes and backlog > budget_bytes(d.trainable_bytes, PASSES):
                    bad.append(f"document {d.id} learned past its budget ({backlog} bytes "
                               "outside consolidation)")
                if d.status == "skipped" and got:
                    bad.append(f"document {d.id} trained {got} bytes but is skipped: {d.reason}")
            if watch is not None:
                import hashlib
                live = {d.uri: d for d in docs if d.status != "deleted"}
                for f in sorted(p for p in watch.rglob("*") if p.is_file()):
                    d = next((v for k, v in live.items()
                              if uri_to_path(k) in (str(f), str(f.resolve()))), None)
                    if d is None:
                        bad.append(f"{f.name}: no live row")
                        continue
                    if d.sha256 != hashlib.sha256(f.read_bytes()).hexdigest():
                        bad.append(f"{f.name}: the live row is not the file's current version")
                    if learned and d.status != "trained":
                        bad.append(f"{f.name}: {d.status} after the backlog was learned")
    finally:
        store.close()
    return bad


# ---------------------------------------------------------------------------- trials

@dataclass
class Trial:
    group: str
    name: str
    ok: bool
    detail: str = ""
    repro: str = ""


@dataclass
class Campaign:
    work: Path
    trials: list[Trial] = field(default_factory=list)
    n: int = 0

    def fresh(self) -> tuple[Path, Path]:
        self.n += 1
        base = self.work / f"t{self.n:03d}"
        watch = base / "watched"
        watch.mkdir(parents=True)
        for i, t in enumerate(TEXTS):
            (watch / f"doc{i}.txt").write_text(f"doc{i}: " + t * 60)
        return base / "data", watch

    def record(self, group, name, problems: list[str], repro: str = "", detail: str = ""):
        t = Trial(group, name, not problems, "; ".join(problems)[:400] or detail, repro)
        self.trials.append(t)
        print(f"  {'ok  ' if t.ok else 'FAIL'} {group}/{name} {t.detail}", flush=True)


def kill_trials(c: Campaign, repeats: int, randoms: int, seed: int) -> None:
    rng = random.Random(seed)
    for moment in MOMENTS:
        for nth in range(1, repeats + 1):
            data, watch = c.fresh()
            p = Proc(agent_args(data, watch), inject=(moment, nth))
            rc = p.finish(timeout=TIMEOUT)
            repro = " ".join(p.cmd)
            if rc != -signal.SIGKILL:
                c.record("kill", f"{moment}#{nth}", [f"not killed (exit {rc}): moment not reached"],
                         repro)
                continue
            rc2, log = learn_to_the_end(data, watch)
            problems = [] if rc2 == 0 else [f"restart did not learn the backlog (exit {rc2}): "
                                            f"{log[-300:]}"]
            c.record("kill", f"{moment}#{nth}", problems + check_store(data, watch), repro)
    for i in range(randoms):
        data, watch = c.fresh()
        delay = rng.uniform(1.0, 15.0)
        p = Proc(agent_args(data, watch))
        try:
            p.wait_for(r"backlog learned", timeout=delay)
        except TimeoutError:
            pass
        p.finish(signal.SIGKILL)
        rc2, log = learn_to_the_end(data, watch)
        problems = [] if rc2 == 0 else [f"restart exit {rc2}: {log[-300:]}"]
        c.record("kill", f"random {delay:.1f}s", problems + check_store(data, watch),
                 f"SIGKILL {delay:.1f} s after: {' '.join(p.cmd)}")


CORRUPTIONS = ("flip-a-byte", "truncate", "header-digit", "older-copied-over", "zero-length",
               "tokenizer-missing")


def corrupt(kind: str, latest: Path, older: Path) -> None:
    blob = bytearray(latest.read_bytes())
    if kind == "flip-a-byte":
        blob[len(blob) // 2] ^= 0xFF
        latest.write_bytes(bytes(blob))
    elif kind == "truncate":
        latest.write_bytes(bytes(blob[: len(blob) // 2]))
    elif kind == "header-digit":
        i = blob.index(b'"step":') + len(b'"step":')
        blob[i:i + 1] = b"7" if blob[i:i + 1] != b"7" else b"8"
        latest.write_bytes(bytes(blob))
    elif kind == "older-copied-over":
        shutil.copyfile(older, latest)
    elif kind == "zero-length":
        latest.write_bytes(b"")
    elif kind == "tokenizer-missing":
        latest.with_name(latest.name.replace(".safetensors", ".tokenizer.json")).unlink()


def corruption_trials(c: Campaign) -> None:
    for kind in CORRUPTIONS:
        data, watch = c.fresh()
        problems = []
        for _ in range(2):
            r = cllm("train", str(watch), "--data-dir", str(data), "--preset", "tiny",
                     "--steps", "4", "--batch-size", "4", "--workers", "2")
            if r.returncode:
                problems.append(f"train failed: {r.stderr[-300:]}")
        ckpts = sorted((data / "checkpoints").glob("ckpt-*.safetensors"))
        if problems or len(ckpts) < 2:
            c.record("corrupt", kind, problems or ["two checkpoints were not written"])
            continue
        older, latest = ckpts[-2], ckpts[-1]
        corrupt(kind, latest, older)
        g = cllm("generate", "--data-dir", str(data), "--prompt", "the", "--seed", "0",
                 "--max-tokens", "3")
        if g.returncode != 0 or f"refusing checkpoint {latest}" not in g.stderr:
            problems.append(f"generate did not refuse it (exit {g.returncode}): {g.stderr[-200:]}")
        p = Proc(agent_args(data, watch))
        try:
            line = p.wait_for(r"resumed from checkpoint|Error|Traceback")
        except TimeoutError:
            line = None
        p.finish(signal.SIGTERM)
        if line is None or str(older) not in line or "refusing checkpoint" not in p.text():
            problems.append(f"the agent did not fall back to {older.name}: {p.text()[-300:]}")
        c.record("corrupt", kind, problems + check_store(data, None, learned=False),
                 f"python benchmarks/fault_campaign.py --only corrupt  ({kind})")


def zoo(folder: Path) -> dict[str, Path]:
    """Bad inputs: name -> where it is. Each must be trained, or recorded as skipped (or
    failed: "no trainable text") with its reason."""
    folder.mkdir(parents=True, exist_ok=True)
    items = {
        "binary.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
        "nul-bytes.txt": b"text then \x00\x00\x00 binary zeros " * 20,
        "invalid-utf8.txt": b"caf\xe9 na\xefve \xff\xfe broken " * 40,
        "latin1.txt": "café naïve façade déjà vu ".encode("latin-1") * 40,
        "utf16-bom.txt": "\ufeffsixteen bit text with a byte order mark ".encode("utf-16") * 20,
        "utf8-bom.txt": "\ufeffeight bit text with a BOM ".encode("utf-8") * 30,
        "empty.txt": b"",
        "whitespace.txt": b" \n\t \r\n " * 50,
        "one-byte.txt": b"x",
        "crlf.txt": b"windows line endings\r\n" * 60,
        "long-line.txt": b"a" * 300_000,
        "huge.txt": b"many words of repeated text " * 500_000,     # ~14 MB
        "emoji.txt": "🙂 emoji and 中文 and ‮rtl override‬ ".encode() * 40,
        "lone-surrogate.txt": "before \ud800 after ".encode("utf-8", "surrogatepass") * 20,
        "gzip.txt.gz": b"\x1f\x8b\x08\x00" + os.urandom(400),
        "random.bin": os.urandom(4096),
        ("n" * 200) + ".txt": b"a very long file name " * 30,
        "spaces and (parens) [x].txt": b"a name with spaces " * 30,
        "ünïcödé-名前.txt": b"a name in unicode " * 30,
        "-dash-first.txt": b"a name that looks like an option " * 30,
        ".hidden.txt": b"a hidden file " * 30,
        "noext": b"a file without an extension " * 30,
        "control\x07char.txt": b"a bell in the name " * 30,
    }
    for name, blob in items.items():
        (folder / name).write_bytes(blob)
    os.symlink("/etc/hostname", folder / "link-outside.txt")
    os.symlink(folder / "loop-b", folder / "loop-a")
    os.symlink(folder / "loop-a", folder / "loop-b")
    os.symlink(folder / "missing-target", folder / "dangling.txt")
    os.mkfifo(folder / "fifo.txt")
    (folder / "dir.txt").mkdir()
    deep = folder
    for i in range(40):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("forty folders down " * 20)
    return {n: folder / n for n in list(items) + ["link-outside.txt", "loop-a", "dangling.txt",
                                                  "fifo.txt"]} | {"deep.txt": deep / "deep.txt"}


def zoo_trials(c: Campaign) -> None:
    from store import open_store
    from store.models import Document
    from sqlalchemy import select

    data, watch = c.fresh()
    names = zoo(watch / "zoo")
    p = Proc(agent_args(data, watch))
    try:        # every entry recorded (any outcome), then the backlog learned after them
        line = wait_learned(p, list(names.values()) + watched_files(watch), any_outcome=True)
    except TimeoutError:
        line = None
    rc = p.finish(signal.SIGTERM)
    if line is None or "backlog learned" not in line or rc != 0:
        c.record("zoo", "agent survived", [f"exit {rc}, last: {p.text()[-400:]}"], " ".join(p.cmd))
        return
    c.record("zoo", "agent survived", [])
    store = open_store(data)
    try:
        with store.session(read_only=True) as s:
            docs = list(s.scalars(select(Document)))
    finally:
        store.close()
    for name in names:
        rows = [d for d in docs if d.uri.rstrip("/").endswith("/" + _quoted(name))
                or os.path.basename(d.uri) == _quoted(name)]
        problems = []
        if not rows:
            problems.append("no row: neither trained nor recorded as skipped")
        for d in rows:
            if d.status in ("skipped", "failed") and not d.reason:
                problems.append(f"{d.status} without a reason")
            if d.status not in ("trained", "skipped", "failed"):
                problems.append(f"left {d.status}")
        c.record("zoo", name[:40], problems, detail=(rows[0].status + (f": {rows[0].reason}"
                                                                        if rows[0].reason else ""))
                 [:120] if rows else "")


def _quoted(name: str) -> str:
    from urllib.parse import quote
    return quote(name)


def scenario_trials(c: Campaign) -> None:
    # item 2: a file grows while its cycle trains
    data, watch = c.fresh()
    p = Proc(agent_args(data, watch))
    p.wait_for(r"agent running")
    grow = watch / "growing.txt"
    for i in range(8):
        with open(grow, "a") as f:
            f.write(f"version {i}: " + "appended text grows the file. " * 70)
        time.sleep(0.4)
    line = wait_learned(p, watched_files(watch))     # the last version, learned
    p.finish(signal.SIGTERM)
    c.record("scenario", "append 2 KB x8 while training",
             ([] if line else ["backlog never learned"]) + check_store(data, watch),
             "append 2 KB to a watched file 8 times 0.4 s apart while the agent runs")
    # item 8: a file becomes a folder, a folder becomes a file
    data, watch = c.fresh()
    (watch / "sub").mkdir()
    (watch / "sub" / "inner.txt").write_text("inside a folder that becomes a file. " * 40)
    p = Proc(agent_args(data, watch))
    wait_learned(p, watched_files(watch))
    (watch / "doc0.txt").unlink()
    (watch / "doc0.txt").mkdir()
    (watch / "doc0.txt" / "now-inside.txt").write_text("the file became a folder. " * 40)
    shutil.rmtree(watch / "sub")
    (watch / "sub").write_text("the folder became a file. " * 40)
    # the two new files recorded (the deletions before them, in the ingest's order), learned
    line = wait_learned(p, [watch / "doc0.txt" / "now-inside.txt", watch / "sub"])
    p.finish(signal.SIGTERM)
    problems = ([] if line else ["backlog never learned"]) + check_store(data, watch)
    problems += _stale_rows(data, watch)
    c.record("scenario", "file <-> folder type changes", problems)
    # item 5: two agents on one store from two data directories
    data, watch = c.fresh()
    first = Proc(agent_args(data, watch))
    first.wait_for(r"agent running")
    other = data.parent / "other-data"
    second = cllm("--database-url", f"sqlite:///{data / 'cllm.sqlite3'}",
                  *agent_args(other, watch, "--max-cycles", "1"))
    wait_learned(first, watched_files(watch))
    first.finish(signal.SIGTERM)
    problems = []
    if second.returncode == 0 or "another agent" not in second.stderr:
        problems.append(f"the second agent ran (exit {second.returncode})")
    c.record("scenario", "two agents, one store", problems + check_store(data, watch),
             "cllm agent --data-dir A & cllm --database-url sqlite:///A/cllm.sqlite3 agent "
             "--data-dir B")
    # items 4 and 6: the crawler
    empty = data.parent / "empty"
    empty.mkdir()
    t0 = time.monotonic()
    cllm("crawl", str(empty), "--data-dir", str(data.parent / "crawl0"))
    start_up = time.monotonic() - t0        # what any cllm command costs on this machine
    srv, port, stop = _slow_drip_server()
    t0 = time.monotonic()
    r = cllm("crawl", f"http://127.0.0.1:{port}/", "--data-dir", str(data.parent / "crawl"),
             "--timeout", "2", "--allow-private-hosts", timeout=300)
    took = time.monotonic() - t0 - start_up
    stop.set()
    srv.join()
    # one budget of 3 x --timeout for every attempt at the URL, plus a little slack
    c.record("scenario", "slow-drip headers, --timeout 2",
             [] if took < 3 * 2 + 3 and r.returncode != 0 else
             [f"held the crawl for {took:.0f} s beyond start-up (exit {r.returncode})"],
             detail=f"{took:.1f} s beyond {start_up:.1f} s of start-up",
             repro="a server sending one header line every 0.5 s")
    d1, d2 = c.fresh()[1], c.fresh()[1]
    cdata = data.parent / "crawl2"
    r = cllm("crawl", str(d1), "http://u:p@127.0.0.1:9/", str(d2), "--data-dir", str(cdata),
             "--json")
    stored = _doc_count(cdata)
    ok = (r.returncode == 2 and stored == 0) or (stored == 2 * len(TEXTS) and "{" in r.stdout)
    c.record("scenario", "one bad target among three",
             [] if ok else [f"exit {r.returncode}, {stored} documents stored, stdout "
                            f"{r.stdout[:80]!r}"],
             "cllm crawl DIR 'http://u:p@127.0.0.1:9/' DIR2 --json")


def _stale_rows(data: Path, watch: Path) -> list[str]:
    from sqlalchemy import select

    from agent.inputs.paths import uri_to_path
    from store import open_store
    from store.models import Document

    store = open_store(data)
    try:
        with store.session(read_only=True) as s:
            live = [d for d in s.scalars(select(Document)) if d.status != "deleted"]
    finally:
        store.close()
    out = []
    for d in live:
        path = uri_to_path(d.uri)
        path = Path(path) if path is not None else None
        if path is not None and not path.is_file():
            out.append(f"stale {d.status} row for {path.name} (not a file now)")
        if d.reason and "Not a directory" in d.reason:
            out.append(f"bogus refusal: {d.reason}")
    return out


def _doc_count(data: Path) -> int:
    from sqlalchemy import func, select

    from store import open_store
    from store.models import Document

    if not (data / "cllm.sqlite3").exists():
        return 0
    store = open_store(data)
    try:
        with store.session(read_only=True) as s:
            return s.scalar(select(func.count()).select_from(Document))
    finally:
        store.close()


def _slow_drip_server():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve():
        conns = []
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            conns.append(conn)
            threading.Thread(target=drip, args=(conn,), daemon=True).start()
        sock.close()

    def drip(conn):
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            i = 0
            while not stop.wait(0.5):
                conn.sendall(f"X-Drip-{i}: slow\r\n".encode())
                i += 1
        except OSError:
            pass
        finally:
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t, sock.getsockname()[1], stop


# ---------------------------------------------------------------------------- report

def table(trials: list[Trial]) -> str:
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(t.group, []).append(t)
    lines = ["| group | trials | passed | failures |", "|---|---|---|---|"]
    for g, ts in groups.items():
        fails = [t for t in ts if not t.ok]
        lines.append(f"| {g} | {len(ts)} | {len(ts) - len(fails)} | "
                     + ("; ".join(f"{t.name}: {t.detail}" for t in fails)[:600] or "-") + " |")
    fails = [t for t in trials if not t.ok]
    if fails:
        lines += ["", "Reproduce:"] + [f"- {t.group}/{t.name}: `{t.repro}`" for t in fails if t.repro]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one kill per moment, 2 random ones")
    ap.add_argument("--repeats", type=int, default=3, help="kills per named moment")
    ap.add_argument("--random", type=int, default=8, help="kills at random moments")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="kill,corrupt,zoo,scenario")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    ap.add_argument("--keep", action="store_true", help="keep the trial directories")
    a = ap.parse_args()
    if a.quick:
        a.repeats, a.random = 1, 2
    work = Path(tempfile.mkdtemp(prefix="cllm-faults-"))
    c = Campaign(work)
    t0 = time.monotonic()
    try:
        only = set(a.only.split(","))
        if "kill" in only:
            print("SIGKILL at named and random moments", flush=True)
            kill_trials(c, a.repeats, a.random, a.seed)
        if "corrupt" in only:
            print("corrupted latest checkpoints", flush=True)
            corruption_trials(c)
        if "zoo" in only:
            print("bad inputs", flush=True)
            zoo_trials(c)
        if "scenario" in only:
            print("scenarios of the first campaign", flush=True)
            scenario_trials(c)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(c, "fault campaign", t0, a.out)


def report(c: Campaign, name: str, t0: float, out: Path | None) -> None:
    """Print the campaign's table under its headline (and write it to `out`), then exit 1
    if any trial failed."""
    head = (f"{name}: {len(c.trials)} trials, {sum(t.ok for t in c.trials)} passed, "
            f"{time.monotonic() - t0:.0f} s on {os.cpu_count()} x {describe().model}")
    text = head + "\n\n" + table(c.trials)
    print("\n" + text)
    if out:
        out.write_text(text + "\n")
    sys.exit(0 if all(t.ok for t in c.trials) else 1)


if __name__ == "__main__":
    main()
