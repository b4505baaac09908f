"""`cllm agent` end to end, in real subprocesses (tiny preset, a few steps per cycle): a
watched folder becomes cycles recorded in the store; SIGKILL mid-cycle loses nothing;
SIGTERM exits 0 with a consistent store; one agent per data directory; a corrupted latest
checkpoint falls back to the previous one."""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest


from sqlalchemy import func, select

from store import open_store
from agent.inputs.paths import uri_to_path
from agent.training.model_state import load_model_state
from engine.checkpoint import file_sha256
from store.models import Checkpoint, Cycle, CycleDocument, Document

pytestmark = pytest.mark.slow
TIMEOUT = 60
FAST = ["--preset", "tiny", "--workers", "1", "--min-cycle-tokens", "300", "--max-wait", "30",
        "--quiet-period", "0.2", "--batch-size", "4", "--vocab-growth", "20",
        "--replay-fraction", "0.3", "--keep-learning", "off"]   # consolidation: test_continual.py


RUNNING: list = []     # AgentProcs of the current test, killed after it (tests/e2e/conftest.py)


class AgentProc:
    """A `cllm agent` subprocess whose log lines are read by a thread into a queue."""

    def __init__(self, data, watch, *extra, fast=True, env=None, launcher="agent"):
        """`launcher`: the module run as `python -m`, `agent` (cllm itself) or a test's
        wrapper of it (tests/e2e/fault_launcher.py)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        args = (["--watch", str(watch)] if watch else []) + (FAST if fast else [])
        self.p = subprocess.Popen([sys.executable, "-m", launcher, "agent", "--data-dir", str(data),
                                   *args, *extra],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=env)
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        RUNNING.append(self)

    def _read(self):
        for line in self.p.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern, timeout=TIMEOUT):
        rx = re.compile(pattern)
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.log)}")
            if line is None:
                raise AssertionError(f"agent exited before {pattern!r}:\n{''.join(self.log)}")
            if rx.search(line):
                return line

    def stop(self, sig=signal.SIGTERM, timeout=90):   # generous: 4 test processes share 2 cores
        self.p.send_signal(sig)
        rc = self.p.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc


def drop(folder, name, sentence, reps=30):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"{name}: " + sentence * reps)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "data", tmp_path / "watched"


def test_watched_files_become_cycles_with_checkpoint_vocab_and_replay(dirs):
    data, watch = dirs
    watch.mkdir()
    # both documents are needed for the token trigger (~1200 tokens each); the third is
    # large enough on its own
    a = AgentProc(data, watch, "--min-cycle-tokens", "2000")
    try:
        a.wait_for(r"agent running")
        drop(watch / "lattice", "a.txt", "the crystal lattice hums a quiet tune. ")
        drop(watch / "spheres", "b.txt", "every sphere touches twelve neighbours. ")
        a.wait_for(r"cycle 1 completed")
        store = open_store(data)
        try:
            with store.session() as s:
                docs = s.scalars(select(Document).order_by(Document.id)).all()
                assert [(d.status, d.cycle_id) for d in docs] == [("trained", 1)] * 2
                first_ids = [d.id for d in docs]
                ck = s.scalars(select(Checkpoint)).one()
                assert ck.is_latest and ck.cycle_id == 1
                assert file_sha256(ck.path) == ck.sha256
        finally:
            store.close()
        vocab = json.loads(cli("history", "vocab", "--data-dir", str(data), "--cycle", "1",
                               "--json").stdout)
        assert vocab and all(v["cycle_id"] == 1 and v["document_id"] in first_ids for v in vocab)

        drop(watch / "clock", "c.txt", "the clock face holds twelve positions. ", reps=150)
        a.wait_for(r"cycle 2 completed")
        r = cli("history", "cycles", "--data-dir", str(data), "--json")
        cycles = json.loads(r.stdout)
        assert [c["status"] for c in cycles] == ["completed", "completed"]
        c2 = cycles[1]
        assert c2["documents"] == 1 and c2["replayed"] == 2
        assert c2["replay_document_ids"] == first_ids
        assert file_sha256(c2["checkpoint_path"]) == c2["checkpoint_sha256"]
        assert all(c[k] is not None for c in cycles for k in ("tokens", "loss", "val_loss"))
        forgetting = json.loads(cli("history", "forgetting", "--data-dir", str(data),
                                    "--json").stdout)
        assert {(f["cycle_id"], f["source"]) for f in forgetting} == {
            (1, str(watch)), (2, str(watch))}          # the ingestor's source is the watched root

        # one agent per data directory
        r = cli("agent", "--data-dir", str(data), "--preset", "tiny")
        assert r.returncode == 3 and "already running" in r.stderr and "hint:" in r.stderr
        st = json.loads(cli("status", "--data-dir", str(data), "--json").stdout)
        assert st["agent_running"] and st["pid"] == a.p.pid and st["cycles_completed"] == 2
        assert st["last_checkpoint"]["cycle_id"] == 2
    finally:
        rc = a.stop(signal.SIGTERM)
    assert rc == 0, "".join(a.log)
    assert not json.loads(cli("status", "--data-dir", str(data), "--json").stdout)["agent_running"]

    # a corrupted latest checkpoint: refused with a warning, the previous one is used
    raw = bytearray(open(c2["checkpoint_path"], "rb").read())
    raw[-5] ^= 0xFF
    open(c2["checkpoint_path"], "wb").write(bytes(raw))
    a = AgentProc(data, watch)
    try:
        line = a.wait_for(r"refusing checkpoint")
        assert "ckpt-000002" in line
        line = a.wait_for(r"agent on .*model step (\d+)")
        assert f"model step {cycles[0]['steps']}," in line
    finally:
        assert a.stop() == 0


def test_sigkill_mid_cycle_loses_nothing_and_sigterm_exits_cleanly(dirs):
    data, watch = dirs
    watch.mkdir()
    for i, s in enumerate(["the crystal lattice hums. ", "every sphere touches twelve. ",
                           "primes fall on the clock. "]):
        drop(watch / "notes", f"{i}.txt", s)
    # ~800 tokens each: only all three together start the cycle (no race with the start scan);
    # a budget of 1000 passes keeps the cycle running until it is killed
    long = ("--passes", "1000")
    a = AgentProc(data, watch, *long, "--min-cycle-tokens", "2000")
    a.wait_for(r"cycle 1: step \d+")
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    store = open_store(data)
    try:
        with store.session() as s:
            assert set(s.scalars(select(Document.status))) == {"pending"}
            assert set(s.scalars(select(Document.trained_bytes))) == {0}
            assert s.scalars(select(Cycle.status)).all() == ["running"]
    finally:
        store.close()
    st = json.loads(cli("status", "--data-dir", str(data), "--json").stdout)
    assert not st["agent_running"] and st["current_cycle"]["stale"]
    assert st["pending_documents"] == 3 and st["backlog"]["documents"] == 3

    a = AgentProc(data, watch, *long, "--max-steps", "6", "--min-cycle-tokens", "2000",
                  "--max-cycles", "1")
    a.wait_for(r"cycle 2 completed")
    assert a.p.wait(timeout=30) == 0, "".join(a.log)
    store = open_store(data)
    try:
        with store.session() as s:
            cycles = s.scalars(select(Cycle).order_by(Cycle.id)).all()
            assert [c.status for c in cycles] == ["interrupted", "completed"]
            docs = s.scalars(select(Document)).all()
            assert len(docs) == 3 and {(d.status, d.cycle_id) for d in docs} == {("learning", 2)}
            assert cycles[1].docs_new == 3 and cycles[1].bytes_new == sum(
                d.trained_bytes for d in docs) > 0
            assert sorted(cycles[1].schedule["document_ids"]) == sorted(d.id for d in docs)
            ck = s.scalars(select(Checkpoint).where(Checkpoint.is_latest.is_(True))).one()
            path, sha = ck.path, ck.sha256
    finally:
        store.close()
    assert load_model_state(Path(path), expected_sha256=sha).step == 6
    assert not (data / "checkpoints" / "ckpt-000001.safetensors").exists()

    # SIGTERM during a long cycle: exit 0 within seconds, what the cycle trained is committed
    # as a shorter cycle; the late document, new since the last cycle, is the one it learned
    drop(watch / "notes", "3.txt", "a fourth document arrives late. ")
    a = AgentProc(data, watch, *long)
    # the backlog may start before the start-up scan finds 3.txt; its arrival then ends that
    # cycle, and the next one learns it alone
    n = int(re.search(r"cycle (\d+)", a.wait_for(r"cycle \d+ .*: 1 documents to learn "
                                                 r"\(new arrivals, alone\)")).group(1))
    a.wait_for(rf"cycle {n}: step \d+")
    st = json.loads(cli("status", "--data-dir", str(data), "--json").stdout)
    assert st["agent_running"] and st["current_cycle"]["id"] == n
    assert st["current_cycle"]["step"] >= 1 and st["pending_documents"] == 1
    assert a.stop(signal.SIGTERM, timeout=15) == 0, "".join(a.log)
    store = open_store(data)
    try:
        with store.session() as s:
            cycles = s.scalars(select(Cycle).order_by(Cycle.id)).all()
            assert [c.status for c in cycles][:2] == ["interrupted", "completed"]
            assert len(cycles) == n and cycles[-1].status == "completed"
            assert cycles[-1].schedule["ended_by"] == "stop" and cycles[-1].val_loss is None
            late = s.scalars(select(Document).where(Document.uri.endswith("3.txt"))).one()
            assert late.status == "learning" and late.trained_bytes == cycles[-1].bytes_new > 0
    finally:
        store.close()


def ledger_rows(data):
    store = open_store(data)
    try:
        with store.session() as s:
            shares = dict(s.execute(select(CycleDocument.document_id,
                                           func.sum(CycleDocument.new_bytes))
                                    .group_by(CycleDocument.document_id)).all())
            return [(d.status, d.trained_bytes, d.trainable_bytes, shares.get(d.id, 0))
                    for d in s.scalars(select(Document).order_by(Document.id))]
    finally:
        store.close()


def test_sigkill_in_the_middle_of_a_backlog_loses_only_the_running_cycle(dirs):
    data, watch = dirs
    for i, s in enumerate(["the crystal lattice hums. ", "every sphere touches twelve. ",
                           "primes fall on the clock. ", "a fourth voice. ", "and a fifth. "]):
        drop(watch / "notes", f"{i}.txt", s, reps=40)
    bounded = ("--max-steps", "6", "--min-cycle-tokens", "3000")
    a = AgentProc(data, watch, *bounded)
    a.wait_for(r"cycle 3 completed")
    a.wait_for(r"cycle 4: step \d+")
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    before = ledger_rows(data)
    assert any(r[0] == "learning" for r in before)
    assert all(trained == shares for _, trained, _, shares in before)  # cycles 1-3 only
    a = AgentProc(data, watch, *bounded)
    try:
        a.wait_for(r"backlog learned", timeout=120)
    finally:
        assert a.stop() == 0, "".join(a.log)
    after = ledger_rows(data)
    for status, trained, trainable, shares in after:
        assert status == "trained" and trained == shares            # nothing counted twice
        assert 2 * trainable <= trained < 2 * trainable + 16
    store = open_store(data)
    try:
        with store.session() as s:
            statuses = [c.status for c in s.scalars(select(Cycle).order_by(Cycle.id))]
    finally:
        store.close()
    assert statuses[:4] == ["completed"] * 3 + ["interrupted"] and len(statuses) > 5


def test_sigkill_during_consolidation_loses_at_most_that_cycle_and_counts_nothing_twice(dirs):
    """Past the passes the agent keeps learning (consolidation cycles, on by default); a
    SIGKILL in one loses that cycle only, and the restarted agent goes on consolidating."""
    data, watch = dirs
    for i, s in enumerate(["the crystal lattice hums. ", "every sphere touches twelve. "]):
        drop(watch / "notes", f"{i}.txt", s, reps=40)
    keep = ("--keep-learning", "on", "--max-steps", "6", "--patience", "50")
    a = AgentProc(data, watch, *keep)
    a.wait_for(r"backlog learned: .*consolidating")
    n = int(re.search(r"cycle (\d+)", a.wait_for(r"cycle \d+ \(consolidate\)")).group(1))
    a.wait_for(rf"cycle {n}: step \d+")
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    before = ledger_rows(data)
    assert all(status == "trained" and trained == shares and trained >= 2 * trainable
               for status, trained, trainable, shares in before)
    a = AgentProc(data, watch, *keep)
    try:
        a.wait_for(rf"cycle {n} was interrupted", timeout=60)
        m = int(re.search(r"cycle (\d+)", a.wait_for(r"cycle \d+ \(consolidate\)")).group(1))
        a.wait_for(rf"cycle {m} completed")
    finally:
        assert a.stop() == 0, "".join(a.log)
    after = ledger_rows(data)
    for (_, t0, _, _), (status, trained, trainable, shares) in zip(before, after):
        assert status == "trained" and trained == shares        # nothing counted twice
        assert trained > t0                                     # and learning went on
    store = open_store(data)
    try:
        with store.session() as s:
            cycles = {c.id: c for c in s.scalars(select(Cycle))}
    finally:
        store.close()
    assert cycles[n].status == "interrupted" and cycles[m].status == "completed"
    assert cycles[m].schedule["scope"] == "consolidate"


def test_cllm_train_is_recorded_as_a_cycle_and_respects_the_lock(tmp_path):
    from click.testing import CliRunner

    from agent.cli import main
    from agent.datadir import DataDirLock

    # long enough that 2 x 5 steps cannot cover two passes, whatever the vocabulary learned
    drop(tmp_path / "corpus" / "notes", "a.txt", "the crystal lattice hums a quiet tune. ",
         reps=300)
    data = tmp_path / "data"
    args = ["train", str(tmp_path / "corpus"), "--data-dir", str(data), "--preset", "tiny",
            "--steps", "5", "--batch-size", "4", "--workers", "1", "--vocab-growth", "10",
            "--json"]
    for _ in range(2):
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["history", "cycles", "--data-dir", str(data), "--json",
                                  "--plot", str(tmp_path / "loss.png")], catch_exceptions=False)
    cycles = json.loads(r.output[r.output.index("["):r.output.rindex("]") + 1])
    assert [(c["id"], c["status"], c["trigger"]) for c in cycles] == [
        (1, "completed", "train"), (2, "completed", "train")]
    assert all(file_sha256(c["checkpoint_path"]) == c["checkpoint_sha256"] for c in cycles)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(main, ["status", "--data-dir", str(data), "--json"])
    st = json.loads(r.output)
    assert not st["agent_running"] and st["last_checkpoint"]["cycle_id"] == 2
    # 2 x 5 steps cover less than its two passes: the agent would go on learning it
    assert st["documents"] == {"learning": 1} and st["current_cycle"] is None
    with DataDirLock(data):
        r = CliRunner().invoke(main, args)
    assert r.exit_code == 3 and "already running" in r.output
    # every history view renders as a table, and the plots are PNG files
    for view in ("cycles", "vocab", "checkpoints", "forgetting"):
        extra = ["--plot", str(tmp_path / f"{view}.png")] if view in ("vocab", "forgetting") else []
        r = CliRunner().invoke(main, ["history", view, "--data-dir", str(data), *extra],
                               catch_exceptions=False)
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert (tmp_path / "forgetting.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "vocab.png").read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(main, ["history", "checkpoints", "--data-dir", str(data), "--verify",
                                  "--json"], catch_exceptions=False)
    assert [c["ok"] for c in json.loads(r.output)] == [True, True]
    r = CliRunner().invoke(main, ["status", "--data-dir", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "no store" in r.output and "hint:" in r.output


def test_settings_come_from_flags_then_environment_then_toml(tmp_path, monkeypatch):
    from agent.resolve import resolve
    from engine.errors import ConfigError

    (tmp_path / "cllm.toml").write_text(
        '[agent]\nmin-cycle-tokens = 111\nmax_wait = 7\nwatch = ["/a", "/b"]\npreset = "tiny"\n')
    monkeypatch.setenv("CLLM_MAX_WAIT", "9.5")
    monkeypatch.delenv("CLLM_CONFIG", raising=False)
    cfg = resolve({"preset": "base", "watch": (), "workers": None}, tmp_path)
    assert (cfg["min_cycle_tokens"], cfg["max_wait"], cfg["watch"], cfg["preset"]) == (
        111, 9.5, ["/a", "/b"], "base")
    assert cfg["replay_fraction"] == 0.25                      # the default
    (tmp_path / "cllm.toml").write_text("min-cycle-tokens = 'many'\n")
    with pytest.raises(ConfigError, match="min-cycle-tokens"):
        resolve({}, tmp_path)
    (tmp_path / "cllm.toml").write_text("no-such-setting = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve({}, tmp_path)


def test_list_settings_from_the_environment_keep_urls_whole(tmp_path, monkeypatch):
    from agent.resolve import resolve

    monkeypatch.delenv("CLLM_CONFIG", raising=False)
    monkeypatch.setenv("CLLM_CRAWL", os.pathsep.join(
        ["https://example.org/docs", "/srv/notes", "HTTP://example.com:8080/a"]))
    assert resolve({}, tmp_path)["crawl"] == [
        "https://example.org/docs", "/srv/notes", "HTTP://example.com:8080/a"]
    (tmp_path / "cllm.toml").write_text('crawl = "https://example.org/one"\n')   # a string:
    monkeypatch.delenv("CLLM_CRAWL")                                         # one item
    assert resolve({}, tmp_path)["crawl"] == ["https://example.org/one"]


def test_crawl_targets_and_settings_from_the_toml_file(tmp_path):
    tree, data = tmp_path / "tree", tmp_path / "data"
    drop(tree / "docs", "a.md", "the crystal lattice hums a quiet tune. ")
    drop(tree / "docs", "b.md", "every sphere touches twelve neighbours. ")
    data.mkdir()
    (data / "cllm.toml").write_text(
        f'[agent]\ncrawl = ["{tree}"]\npreset = "tiny"\nworkers = 1\nmin-cycle-tokens = 2000\n'
        'max-wait = 30\nmax-steps = 7\nbatch-size = 4\nvocab-growth = 10\n')
    a = AgentProc(data, None, fast=False)
    try:
        a.wait_for(r"cycle 1 completed")
    finally:
        assert a.stop() == 0, "".join(a.log)
    cycles = json.loads(cli("history", "cycles", "--data-dir", str(data), "--json").stdout)
    # the stop may catch the next (backlog) cycle before its first step: interrupted, empty
    assert [(c["status"], c["documents"], c["steps"]) for c in cycles][:1] == [("completed", 2, 7)]
    assert all((c["status"], c["steps"]) == ("interrupted", 0) for c in cycles[1:])
    docs = json.loads(cli("history", "documents", "--data-dir", str(data), "--json").stdout)
    # max-steps = 7 from the TOML bounds the cycle: both are part-way through their passes
    assert sorted((d["uri"].rsplit("/", 1)[1], d["status"]) for d in docs) == [
        ("a.md", "learning"), ("b.md", "learning")]
    assert all(0 < d["passes"] < 2 for d in docs)
    store = open_store(data)
    try:
        with store.session() as s:
            from store.models import CrawlTarget
            t = s.scalars(select(CrawlTarget)).one()
            assert (t.kind, t.location) == ("crawl", str(tree))
            assert {d["target_id"] for d in docs} == {t.id}
    finally:
        store.close()


def test_sigkill_between_checkpoint_and_commit_leaves_an_orphan_that_restart_removes(dirs):
    data, watch = dirs
    drop(watch / "notes", "a.txt", "the crystal lattice hums a quiet tune. ")
    a = AgentProc(data, watch, "--max-steps", "4", launcher="tests.e2e.fault_launcher")
    assert a.p.wait(timeout=TIMEOUT) == -signal.SIGKILL
    a._reader.join(timeout=10)
    orphan = data / "checkpoints" / "ckpt-000001.safetensors"
    assert orphan.exists()                      # written, but its transaction never ran
    store = open_store(data)
    try:
        with store.session() as s:
            assert s.scalars(select(Document.status)).all() == ["pending"]
            assert s.scalars(select(Checkpoint)).all() == []
    finally:
        store.close()
    a = AgentProc(data, watch, "--max-steps", "4", "--max-cycles", "1")
    try:
        assert "ckpt-000001" in a.wait_for(r"removing checkpoint")
        a.wait_for(r"cycle 2 completed")
        assert a.p.wait(timeout=TIMEOUT) == 0, "".join(a.log)
    finally:
        a.stop()
    assert not orphan.exists()
    store = open_store(data)
    try:
        with store.session() as s:
            # four steps cover part of its two passes
            assert [(d.status, d.cycle_id) for d in s.scalars(select(Document))] == [("learning", 2)]
            ck = s.scalars(select(Checkpoint)).one()
            assert ck.cycle_id == 2 and file_sha256(ck.path) == ck.sha256
    finally:
        store.close()


def test_embedded_defaults_learn_the_sample_corpus_and_watch_the_inbox(tmp_path):
    """`cllm agent` with nothing configured: it crawls the shipped corpus, watches
    DATA_DIR/inbox, and --max-cycles ends it by itself with exit status 0."""
    from agent.inputs.corpus import SAMPLE_CORPUS

    data = tmp_path / "data"
    a = AgentProc(data, None, "--max-steps", "10")
    try:
        line = a.wait_for(r"embedded defaults: watching")
        inbox = data / "inbox"
        assert str(inbox) in line and str(SAMPLE_CORPUS) in line and inbox.is_dir()
        line = a.wait_for(r"cycle 1 \(\w+\): \d+ documents to learn")
        # the first cycle waited for the start-up crawl and took all of it
        n_corpus = len(list(SAMPLE_CORPUS.rglob("*.txt")))
        assert f": {n_corpus} documents to learn" in line
        a.wait_for(r"cycle 1 completed")
        log = "".join(a.log)        # issue 15: a summary per crawl, no line per document, no reprs
        assert sum(map(int, re.findall(r"crawled \S+: (\d+) added", log))) == n_corpus
        assert "agent.inputs.ingest: added" not in log and "Counter(" not in log
        drop(inbox, "note.txt", "a note dropped into the inbox. ")
        store = open_store(data)
        try:
            def inbox_doc():
                with store.session(read_only=True) as s:
                    return s.scalars(select(Document).where(
                        Document.uri.contains("note.txt"))).one_or_none()
            doc = inbox_doc()
            while doc is None or doc.status != "trained":
                a.wait_for(r"cycle \d+ completed")
                doc = inbox_doc()
            assert "watched files: 1 added" in "".join(a.log)    # the batch's summary line
            with store.session() as s:
                uris = s.scalars(select(Document.uri)).all()
            corpus_files = {p.resolve() for p in SAMPLE_CORPUS.rglob("*.txt")}
            crawled = {Path(uri_to_path(u)).resolve() for u in uris if "note.txt" not in u}
            assert crawled == corpus_files and len(uris) == len(corpus_files) + 1
        finally:
            store.close()
        assert a.stop() == 0
    finally:
        if a.p.poll() is None:
            a.p.kill()

    # a restart crawls the corpus again (nothing new: deduplicated) and picks up a file
    # dropped while it was down: a cycle learns it alone (the backlog of the corpus, if it
    # started before the start-up scan found the file, gives way to it)
    drop(data / "inbox", "later.txt", "written while the agent was down. ")
    a = AgentProc(data, None, "--max-steps", "3")
    try:
        n = re.search(r"cycle (\d+)", a.wait_for(r"1 documents to learn \(new arrivals")).group(1)
        a.wait_for(rf"cycle {n} completed")
    finally:
        assert a.stop() == 0
    store = open_store(data)
    try:
        with store.session() as s:
            later = s.scalars(select(Document).where(Document.uri.contains("later.txt"))).one()
            assert later.status in ("learning", "trained") and later.trained_bytes > 0
            assert s.scalar(select(func.count(Document.id))) == len(corpus_files) + 2
    finally:
        store.close()


def test_watch_options_reach_the_monitor_and_the_ingestor(tmp_path):
    """--polling, --include and --fallback-encoding from the command line: files present at
    start are found by the reconciliation scan of a polling observer; only included ones
    become documents; cp1252 text is decoded with the recorded fallback."""
    data, watch = tmp_path / "data", tmp_path / "watched"
    watch.mkdir()
    (watch / "legacy.txt").write_bytes(("caf\xe9 na\xefve r\xe9sum\xe9 " * 60).encode("cp1252"))
    (watch / "notes.md").write_text("markdown that the include pattern leaves out " * 30)
    r = cli("agent", "--data-dir", str(data), "--watch", str(watch), *FAST, "--max-steps", "3",
            "--polling", "--include", "*.txt", "--fallback-encoding", "cp1252", "--max-cycles", "1")
    assert r.returncode == 0, r.stderr
    assert "with a polling observer" in r.stderr
    store = open_store(data)
    try:
        with store.session() as s:
            docs = s.scalars(select(Document)).all()
            assert [(Path(uri_to_path(d.uri)).name, d.status, d.encoding) for d in docs] == [
                ("legacy.txt", "learning", "cp1252")]          # three steps: part of it
    finally:
        store.close()
    bad = cli("agent", "--data-dir", str(data), "--watch", str(watch), "--fallback-encoding",
              "klingon-8")
    assert bad.returncode == 2 and "unknown fallback encoding" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 2


def test_a_dying_monitor_thread_stops_the_agent_and_surfaces_from_run(tmp_path, monkeypatch):
    """In process: run() blocks on the stop event; a failed file-monitor thread sets it, every
    agent thread is joined, and run() raises the failure."""
    from agent.continuous_trainer import TrainerSettings
    from agent.daemon import Agent, AgentConfig
    from agent.file_monitor import FileMonitor

    def broken(self, *a):
        raise RuntimeError("monitor thread broke")

    monkeypatch.setattr(FileMonitor, "_on_raw", broken)
    watch = tmp_path / "watched"
    watch.mkdir()
    (watch / "a.txt").write_text("found by the start-up scan, which trips the broken thread\n")
    agent = Agent(AgentConfig(tmp_path / "data", TrainerSettings(preset="tiny", workers=1),
                              watch=(str(watch),), quiet_period=0.1))
    before = threading.active_count()
    errors: list = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, agent.run)))
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), "the agent did not stop"
    assert "monitor thread broke" in str(errors[0].value)
    assert threading.active_count() == before


def test_a_store_error_while_ingesting_keeps_the_event_and_retries(tmp_path, monkeypatch):
    """In process: the first attempt to record a watched file fails as if the database had
    stayed locked; the ingest thread keeps the event, retries, and the file is trained."""
    from agent.continuous_trainer import TrainerSettings
    from agent.daemon import Agent, AgentConfig
    from agent.inputs import ingest
    from agent.inputs.ingest import Ingestor
    from store import StoreError

    monkeypatch.setattr(ingest, "RETRY_S", 0.1)
    real = Ingestor.handle
    calls = []

    def flaky(self, ev):
        calls.append(ev.path)
        if len(calls) == 1:
            raise StoreError("cllm.sqlite3 stayed locked for 30 s", "try again")
        return real(self, ev)

    monkeypatch.setattr(Ingestor, "handle", flaky)
    watch = tmp_path / "watched"
    drop(watch, "a.txt", "the lattice keeps its shape. ")
    agent = Agent(AgentConfig(tmp_path / "data", TrainerSettings(
        preset="tiny", workers=1, min_cycle_tokens=50, max_steps=3, batch_size=2, max_new_tokens=5),
        watch=(str(watch),), quiet_period=0.1, max_cycles=1))
    t = threading.Thread(target=agent.run)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive() and agent.cycles_completed == 1 and not agent.errors
    assert len(calls) >= 2 and calls[0] == calls[1]
    store = open_store(tmp_path / "data")
    try:
        with store.session() as s:
            assert [d.status for d in s.scalars(select(Document))] == ["learning"]
    finally:
        store.close()


def test_an_agent_whose_data_directory_is_watched_learns_none_of_its_own_files(tmp_path):
    """Issue 26 #5: the data directory inside the watched folder. Over two cycles, then two
    more after a restart (whose scan walks the folder again), none of its files becomes a
    document (each cycle's checkpoint and tokenizer file would start the next cycle): the
    data directory is recorded once, as refused, and the one real file is what is learned."""
    from agent.continuous_trainer import TrainerSettings
    from agent.daemon import Agent, AgentConfig
    from agent.inputs.paths import OWN_DATA_DIR

    watch = tmp_path / "watched"
    data = watch / "data"
    data.mkdir(parents=True)
    (data / "cllm.toml").write_text('database-url = "postgresql://me:secret@db/cllm"\n')
    drop(watch, "a.txt", "the lattice keeps its shape while the spheres turn. ", reps=200)
    settings = TrainerSettings(preset="tiny", workers=1, min_cycle_tokens=50, max_steps=3,
                               batch_size=2, max_new_tokens=5, keep_learning="off")
    for run in range(2):
        agent = Agent(AgentConfig(data, settings, watch=(str(watch),), quiet_period=0.1,
                                  max_cycles=2))
        t = threading.Thread(target=agent.run)
        t.start()
        t.join(TIMEOUT)
        assert not t.is_alive() and agent.cycles_completed == 2 and not agent.errors, run
    assert sorted(p.name for p in (data / "checkpoints").glob("ckpt-*.tokenizer.json"))
    store = open_store(data)
    try:
        with store.session() as s:
            docs = [(uri_to_path(d.uri), d.status, d.reason) for d in s.scalars(select(Document))]
    finally:
        store.close()
    assert [(p, st) for p, st, _ in docs if st != "skipped"] == [(str(watch / "a.txt"), "learning")]
    assert [(p, why) for p, st, why in docs if st == "skipped"] == [(str(data), OWN_DATA_DIR)]


def test_the_agent_command_restores_the_signal_handlers_it_installed(tmp_path):
    """`cllm agent` turns SIGINT/SIGTERM into a stop request only while it runs."""
    import signal

    from click.testing import CliRunner

    from agent.cli import main

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    watch = tmp_path / "watched"
    drop(watch, "a.txt", "one cycle and done. ")
    r = CliRunner().invoke(main, ["agent", "--data-dir", str(tmp_path / "data"), "--watch",
                                  str(watch), *FAST, "--max-steps", "2", "--max-cycles", "1"])
    assert r.exit_code == 0, r.output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
