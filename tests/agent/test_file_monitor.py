"""The file monitor with a real watchdog observer on temp folders, feeding a real store."""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import threading
import time

import pytest

from agent import file_monitor
from agent.file_monitor import FileMonitor, MonitorError
from agent.inputs.ingest import Ingestor
from agent.inputs.paths import file_uri
from tests.agent.helpers import pump, rows, settle

QUIET = 0.3


def live(store, path):
    return [r for r in rows(store) if r["uri"] == file_uri(path) and r["status"] not in ("deleted",)]


def status_of(store, path, status):
    return [r for r in rows(store) if r["uri"] == file_uri(path) and r["status"] == status]


@pytest.fixture
def watched(tmp_path, store):
    """(root, events queue, ingestor, monitor factory); every monitor started is stopped."""
    root = tmp_path / "watched"
    root.mkdir()
    events: queue.Queue = queue.Queue()
    ingestor = Ingestor(store, max_file_bytes=4096)
    monitors = []

    def make(**kw):
        kw.setdefault("quiet_period", QUIET)
        kw.setdefault("health_interval", 0.2)
        m = FileMonitor([root], events, **kw)
        monitors.append(m)
        return m

    yield root, events, ingestor, make
    for m in monitors:
        m.stop()


def started(make, events, ingestor, **kw):
    """Start a monitor and let its reconciliation scan finish."""
    m = make(**kw).start()
    seen: list = []
    pump(events, ingestor, lambda: any(k == "reconciled" for k, _, _ in seen), seen=seen)
    return m


def test_dropped_file_becomes_exactly_one_pending_document(watched, store):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    f = root / "note.txt"
    f.write_text("a note about ducks\n")
    # after the start-up scan only the watcher can report it (pump fails past its deadline);
    # how soon is not asserted: tests run four at a time on shared cores
    pump(events, ingestor, lambda: len(status_of(store, f, "pending")) == 1)
    settle(events, ingestor, 2 * QUIET)
    assert [r["status"] for r in rows(store)] == ["pending"]


def test_slow_writer_is_taken_once_and_complete(watched, store):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    f = root / "slow.txt"
    chunks = [f"line {i} of a file written slowly\n" for i in range(6)]

    def writer():  # keeps the file open, pausing longer than the quiet period between writes
        with open(f, "w") as fh:
            for c in chunks:
                fh.write(c)
                fh.flush()
                time.sleep(0.4)

    t = threading.Thread(target=writer)
    t.start()
    pump(events, ingestor, lambda: len(live(store, f)) >= 1, timeout=6.0)
    t.join()
    settle(events, ingestor, 2 * QUIET)
    got = rows(store)
    assert len(got) == 1, got
    from store.models import Document

    with store.session(read_only=True) as s:
        assert s.get(Document, got[0]["id"]).text == "".join(chunks)


@pytest.mark.parametrize("style", ["temp-then-rename", "backup-then-write"])
def test_editor_save_gives_one_new_version(watched, store, style):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    f = root / "doc.txt"
    f.write_text("version one\n")
    pump(events, ingestor, lambda: len(status_of(store, f, "pending")) == 1)
    first_sha = rows(store)[0]["sha256"]
    if style == "temp-then-rename":  # gedit, VS Code, most "atomic save" editors
        tmp = root / ".goutputstream-X1Y2"
        tmp.write_text("version two\n")
        os.replace(tmp, f)
    else:  # vim with backupcopy=no: original renamed to a backup, the new file written
        os.rename(f, root / "doc.txt~")
        f.write_text("version two\n")
        (root / "doc.txt~").unlink()
    pump(events, ingestor, lambda: any(r["status"] == "pending" and r["sha256"] != first_sha
                                       for r in live(store, f)))
    settle(events, ingestor, 2 * QUIET)
    got = rows(store)
    assert all(r["uri"] == file_uri(f) for r in got), got  # nothing for the temp or backup file
    assert [r["status"] for r in got] == ["skipped", "pending"]  # v1 superseded before training
    assert got[0]["reason"].startswith("superseded by document")


def test_move_is_delete_plus_create(watched, store):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    a, b = root / "a.txt", root / "sub" / "b.txt"
    (root / "sub").mkdir()
    a.write_text("moving content\n")
    pump(events, ingestor, lambda: len(status_of(store, a, "pending")) == 1)
    os.rename(a, b)
    pump(events, ingestor, lambda: len(status_of(store, b, "pending")) == 1)
    settle(events, ingestor, 2 * QUIET)
    got = rows(store)
    assert len(got) == 1 and got[0]["uri"] == file_uri(b)  # one content, one row: re-homed
    assert got[0]["reason"] == f"content moved here from {file_uri(a)}"


def test_delete_is_recorded(watched, store):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    f = root / "gone.txt"
    f.write_text("soon deleted\n")
    pump(events, ingestor, lambda: len(status_of(store, f, "pending")) == 1)
    f.unlink()
    pump(events, ingestor, lambda: len(status_of(store, f, "deleted")) == 1)


def test_folder_moved_out_deletes_its_files(watched, store, tmp_path):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    (root / "d").mkdir()
    f = root / "d" / "x.txt"
    f.write_text("inside a folder\n")
    pump(events, ingestor, lambda: len(status_of(store, f, "pending")) == 1)
    os.rename(root / "d", tmp_path / "elsewhere")  # no per-file events for this
    pump(events, ingestor, lambda: len(status_of(store, f, "deleted")) == 1)


def test_changes_made_while_stopped_are_found_on_start(watched, store):
    root, events, ingestor, make = watched
    for name in ("keep", "edit", "drop"):
        (root / f"{name}.txt").write_text(f"{name} original\n")
    m = started(make, events, ingestor)
    pump(events, ingestor, lambda: len([r for r in rows(store) if r["status"] == "pending"]) == 3)
    m.stop()
    (root / "edit.txt").write_text("edit changed while the agent was down\n")
    (root / "drop.txt").unlink()
    (root / "new.txt").write_text("new while down\n")
    started(make, events, ingestor)

    def done():
        return (len(status_of(store, root / "drop.txt", "deleted")) == 1
                and len(status_of(store, root / "new.txt", "pending")) == 1
                and len(live(store, root / "edit.txt")) == 2)

    pump(events, ingestor, done)
    settle(events, ingestor, 2 * QUIET)
    assert len(rows(store, file_uri(root / "keep.txt"))) == 1  # unchanged: no new row


def test_excluded_files_and_folders_are_ignored(watched, store):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    for rel in (".git/config", "build/out.txt", "node_modules/m/index.js", "__pycache__/x.pyc"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("ignored\n")
    for rel in ("draft.txt.swp", "x.txt~", "dl.part", ".#lock"):
        (root / rel).write_text("ignored\n")
    (root / "real.txt").write_text("the only document\n")
    pump(events, ingestor, lambda: len(rows(store)) >= 1)
    settle(events, ingestor, 2 * QUIET)
    assert [r["uri"] for r in rows(store)] == [file_uri(root / "real.txt")]


def test_include_patterns_limit_what_is_taken(watched, store):
    root, events, ingestor, make = watched
    started(make, events, ingestor, include=["*.md"])
    (root / "a.txt").write_text("not included\n")
    (root / "b.md").write_text("included\n")
    pump(events, ingestor, lambda: len(rows(store)) >= 1)
    settle(events, ingestor, 2 * QUIET)
    assert [r["uri"] for r in rows(store)] == [file_uri(root / "b.md")]


def test_refused_inputs_are_recorded_and_the_monitor_keeps_running(watched, store):
    root, events, ingestor, make = watched
    m = started(make, events, ingestor, follow_symlinks=True)
    (root / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "empty.txt").write_bytes(b"")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (root / "huge.txt").write_text("x" * 5000 + "\n")  # over the 4096-byte cap of this ingestor
    os.symlink("loop", root / "loop")  # a link to itself
    (root / "sub").mkdir()
    os.symlink("..", root / "sub" / "up")  # a folder link back to an ancestor
    expected = {
        "image.bin": "binary content", "empty.txt": "empty", "latin1.txt": "invalid UTF-8",
        "huge.txt": "too large", "loop": "symlink loop", "sub/up": "symlink loop",
    }

    def reasons():
        return {r["uri"]: r["reason"] for r in rows(store) if r["status"] == "skipped"}

    pump(events, ingestor, lambda: len(reasons()) >= len(expected))
    got = reasons()
    for rel, why in expected.items():
        assert why in (got.get(file_uri(root / rel)) or ""), (rel, sorted(got.items()))
    (root / "fine.txt").write_text("the monitor still works\n")
    pump(events, ingestor, lambda: len(status_of(store, root / "fine.txt", "pending")) == 1)
    m.check()


def test_permission_denied_and_vanished_files_are_recorded(watched, store, monkeypatch):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    locked, vanishing = root / "locked.txt", root / "vanishing.txt"
    locked.write_text("secret\n")
    vanishing.write_text("here for a moment\n")
    ready = {}
    deadline = time.monotonic() + 5
    while len(ready) < 2 and time.monotonic() < deadline:  # take the ready events, apply them by hand
        ev = events.get(timeout=5)
        if ev.kind == "ready":
            ready[os.path.basename(ev.path)] = ev
    os.chmod(locked, 0)
    if os.geteuid() == 0:  # root reads anything: make the open fail as it would for a user
        real_open = os.open

        def deny(path, flags, *a, **k):  # opened by its name, beneath the watched folder
            if os.path.basename(os.fspath(path)) == locked.name:
                raise PermissionError(errno.EACCES, "Permission denied", str(locked))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr("agent.inputs.text.os.open", deny)
    res = ingestor.handle(ready["locked.txt"])
    assert (res.outcome, res.reason) == ("refused", "permission denied")
    vanishing.unlink()  # gone between "ready" and the read
    res = ingestor.handle(ready["vanishing.txt"])
    assert (res.outcome, res.reason) == ("refused", "vanished before it could be read")
    got = {r["uri"]: (r["status"], r["reason"]) for r in rows(store)}
    assert got[file_uri(locked)] == ("skipped", "permission denied")
    assert got[file_uri(vanishing)] == ("skipped", "vanished before it could be read")
    os.chmod(locked, 0o644)


def test_a_folder_swapped_for_a_symlink_after_its_file_settled_is_not_read_through(watched, store, tmp_path):
    """The quiet period ends with the file ready; before the ingest thread reads it, a
    folder on its path becomes a link to a folder outside the root: the file is refused
    (recorded with the reason), and nothing outside the root is read."""
    root, events, ingestor, make = watched
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("a secret outside the watched folder\n")
    started(make, events, ingestor)
    sub = root / "sub"
    sub.mkdir()
    (sub / "notes.txt").write_text("words inside the watched folder\n")
    ready = None
    deadline = time.monotonic() + 5
    while ready is None and time.monotonic() < deadline:  # take the ready event, apply it by hand
        ev = events.get(timeout=5)
        if ev.kind == "ready" and ev.path == str(sub / "notes.txt"):
            ready = ev
    assert ready is not None
    shutil.rmtree(sub)
    os.symlink(outside, sub)                         # the swap, between "ready" and the read
    res = ingestor.handle(ready)
    reason = "the folder sub on its path is a symbolic link now (not followed)"
    assert (res.outcome, res.reason) == ("refused", reason)
    assert [(r["uri"], r["status"], r["reason"]) for r in rows(store)] == [
        (file_uri(sub / "notes.txt"), "skipped", reason)]


def test_symlinks_are_not_followed_by_default(watched, store, tmp_path):
    root, events, ingestor, make = watched
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the watched folder\n")
    started(make, events, ingestor)
    os.symlink(outside, root / "link.txt")
    pump(events, ingestor, lambda: len(rows(store)) == 1)
    r = rows(store)[0]
    assert (r["uri"], r["status"], r["reason"]) == (file_uri(root / "link.txt"), "skipped",
                                                    "symbolic link (not followed)")


def test_followed_folder_link_is_watched(watched, store, tmp_path):
    root, events, ingestor, make = watched
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "old.txt").write_text("there before\n")
    os.symlink(ext, root / "ext")
    started(make, events, ingestor, follow_symlinks=True)
    pump(events, ingestor, lambda: len(status_of(store, root / "ext" / "old.txt", "pending")) == 1)
    (ext / "new.txt").write_text("written in the link's target\n")
    pump(events, ingestor, lambda: len(status_of(store, root / "ext" / "new.txt", "pending")) == 1)


def test_falls_back_to_polling_when_inotify_limits_are_hit(watched, store, monkeypatch, caplog):
    root, events, ingestor, make = watched

    def exhausted(timeout):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(file_monitor, "_native_observer", exhausted)
    with caplog.at_level(logging.WARNING, logger="agent.file_monitor"):
        m = started(make, events, ingestor, poll_interval=0.1)
    assert m.observer_kind(root) == "polling"
    assert "falling back to a polling observer" in caplog.text
    f = root / "polled.txt"
    f.write_text("seen by polling\n")
    pump(events, ingestor, lambda: len(status_of(store, f, "pending")) == 1)


def test_polling_when_asked(watched, store):
    root, events, ingestor, make = watched
    m = started(make, events, ingestor, polling=True, poll_interval=0.1)
    assert m.observer_kind(root) == "polling"
    f = root / "p.txt"
    f.write_text("polled\n")
    pump(events, ingestor, lambda: len(status_of(store, f, "pending")) == 1)


def test_a_dead_observer_is_noticed_and_restarted(watched, store):
    root, events, ingestor, make = watched
    m = started(make, events, ingestor)
    obs = m._watches[str(root)].observer
    obs.stop()  # the observer thread dies
    obs.join()
    f = root / "after.txt"
    f.write_text("written after the observer died\n")
    pump(events, ingestor, lambda: len(status_of(store, f, "pending")) == 1)
    assert m.restarts >= 1
    assert m._watches[str(root)].observer is not obs


def test_stop_joins_every_thread(watched):
    root, events, ingestor, make = watched
    before = set(threading.enumerate())
    m = make().start()
    m.stop()
    assert set(threading.enumerate()) <= before


def test_monitor_refuses_a_missing_root(tmp_path):
    with pytest.raises(MonitorError, match="not a folder"):
        FileMonitor([tmp_path / "nope"], queue.Queue())


def test_a_failed_monitor_thread_is_reported_to_the_owner_at_once(watched, monkeypatch):
    """The agent blocks on an event instead of polling check(): a dying monitor thread must
    call on_failure, and check()/stop() still raise it."""
    root, events, ingestor, make = watched
    failed = threading.Event()
    seen: list = []

    def on_failure(e):
        seen.append(e)
        failed.set()

    m = make(on_failure=on_failure)
    monkeypatch.setattr(m, "_on_raw", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    m.start()
    (root / "a.txt").write_text("trigger the debounce thread\n")
    assert failed.wait(10)
    assert isinstance(seen[0], RuntimeError) and "boom" in str(seen[0])
    with pytest.raises(MonitorError, match="boom"):
        m.check()
    with pytest.raises(MonitorError, match="boom"):
        m.stop()                          # joins every thread, then re-raises
    m._errors.clear()                     # reported; the fixture's own stop() is a no-op now


# --- a path that changes type (issue 14 item 8) ----------------------------------------------

def mark_trained(store, path):
    """As if a cycle had learned the file: the row a stale entry would keep replaying."""
    from store.models import Document

    with store.session() as s:
        for d in s.query(Document).filter(Document.uri == file_uri(path)):
            d.status = "trained"


def no_refusals(store):
    return [r for r in rows(store) if r["status"] == "skipped"] == []


OBSERVERS = [pytest.param({}, id="native"), pytest.param({"polling": True, "poll_interval": 0.1}, id="polling")]


@pytest.mark.parametrize("kw", OBSERVERS)
def test_a_file_replaced_by_a_folder_is_deleted_and_the_folder_taken(watched, store, kw):
    root, events, ingestor, make = watched
    started(make, events, ingestor, **kw)
    f = root / "notes"
    f.write_text("a file called notes\n")
    pump(events, ingestor, lambda: len(status_of(store, f, "pending")) == 1)
    mark_trained(store, f)
    f.unlink()
    f.mkdir()
    (f / "a.txt").write_text("now notes is a folder\n")
    pump(events, ingestor, lambda: len(status_of(store, f / "a.txt", "pending")) == 1
         and len(status_of(store, f, "deleted")) == 1, timeout=8.0)
    settle(events, ingestor, 2 * QUIET)
    assert live(store, f) == [] and len(live(store, f / "a.txt")) == 1 and no_refusals(store)


@pytest.mark.parametrize("kw", OBSERVERS)
def test_a_folder_replaced_by_a_file_deletes_its_files_without_refusals(watched, store, kw):
    root, events, ingestor, make = watched
    started(make, events, ingestor, **kw)
    d = root / "notes"
    d.mkdir()
    (d / "a.txt").write_text("first file in the folder\n")
    (d / "b.txt").write_text("second file in the folder\n")
    pump(events, ingestor, lambda: len(rows(store)) == 2 and all(r["status"] == "pending" for r in rows(store)))
    mark_trained(store, d / "a.txt")
    shutil.rmtree(d)
    d.write_text("now notes is a file\n")
    pump(events, ingestor, lambda: len(status_of(store, d, "pending")) == 1
         and len(status_of(store, d / "a.txt", "deleted")) == 1
         and len(status_of(store, d / "b.txt", "deleted")) == 1, timeout=8.0)
    settle(events, ingestor, 2 * QUIET)
    assert no_refusals(store), rows(store)


def test_a_folder_moved_away_and_a_file_put_in_its_place_deletes_its_files(watched, store, tmp_path):
    root, events, ingestor, make = watched
    started(make, events, ingestor)
    d = root / "notes"
    d.mkdir()
    (d / "a.txt").write_text("a file in a folder about to move\n")
    pump(events, ingestor, lambda: len(status_of(store, d / "a.txt", "pending")) == 1)
    mark_trained(store, d / "a.txt")
    os.rename(d, tmp_path / "elsewhere")  # one event for the folder, none per file
    d.write_text("a file where the folder was\n")
    pump(events, ingestor, lambda: len(status_of(store, d, "pending")) == 1
         and len(status_of(store, d / "a.txt", "deleted")) == 1)
    settle(events, ingestor, 2 * QUIET)
    assert no_refusals(store), rows(store)


def test_type_changes_made_while_stopped_are_found_on_start(watched, store):
    root, events, ingestor, make = watched
    f, d = root / "was-file", root / "was-folder"
    f.write_text("a file that becomes a folder\n")
    d.mkdir()
    (d / "inner.txt").write_text("a file in a folder that becomes a file\n")
    m = started(make, events, ingestor)
    pump(events, ingestor, lambda: len([r for r in rows(store) if r["status"] == "pending"]) == 2)
    m.stop()
    mark_trained(store, f)
    mark_trained(store, d / "inner.txt")
    f.unlink()
    f.mkdir()
    (f / "x.txt").write_text("inside what was a file\n")
    shutil.rmtree(d)
    d.write_text("a file where a folder was\n")
    started(make, events, ingestor)

    def done():
        return (len(status_of(store, f, "deleted")) == 1
                and len(status_of(store, f / "x.txt", "pending")) == 1
                and len(status_of(store, d / "inner.txt", "deleted")) == 1
                and len(status_of(store, d, "pending")) == 1)

    pump(events, ingestor, done)
    settle(events, ingestor, 2 * QUIET)
    assert no_refusals(store), rows(store)
    assert sorted(r["uri"] for r in rows(store) if r["status"] != "deleted") == \
        sorted([file_uri(f / "x.txt"), file_uri(d)])


def test_roots_added_and_removed_while_running(tmp_path):
    """add_root watches a folder from then on (after its scan); remove_root stops it."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "before.txt").write_text("already there when the root was added")
    events: queue.Queue = queue.Queue()
    with FileMonitor([str(a)], events, quiet_period=0.05) as m:
        assert m.add_root(str(b)) and not m.add_root(str(b))
        seen = []

        def next_file():
            while True:
                ev = events.get(timeout=10)
                if ev.kind.value not in ("reconciled", "refused", "folder"):
                    seen.append(os.path.basename(ev.path))
                    return seen[-1]
        assert next_file() == "before.txt"               # the added root's scan
        (b / "new.txt").write_text("written after it was added")
        assert next_file() == "new.txt"
        assert m.remove_root(str(b)) and m.roots == [str(a)]
        (b / "ignored.txt").write_text("written after it was removed")
        (a / "marker.txt").write_text("written last, in the root still watched")
        assert next_file() == "marker.txt" and "ignored.txt" not in seen
