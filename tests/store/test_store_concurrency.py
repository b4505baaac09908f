"""The store under concurrent processes, on SQLite (WAL) and PostgreSQL.

A writer process and a reader process (two threads, one of which also writes now and then)
run together for a few seconds: no "database is locked", no lost write, readers never see
a count go backwards. Processes racing to insert the same content create it exactly once;
processes racing to open an empty database migrate it once.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
import time
import traceback

import sqlalchemy as sa

from store import open_store
from store.documents import add_document, add_documents
from store.migrate import head_revision
from store.models import Document, FetchedUrl
from store.documents import list_documents
from store.frontier import record_url

DURATION_S = 2.5
FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30  # ~1.7 KB


def doc_text(i: int) -> str:
    return f"document {i}\n{FILLER}"


def _writer(data_dir, url, start, results) -> None:
    try:
        st = open_store(data_dir, url, upgrade=False)
        start.wait()
        deadline = time.monotonic() + DURATION_S
        n = 0
        while time.monotonic() < deadline:
            with st.session() as s:  # small batches, each its own transaction
                for _ in range(5):
                    _, created = add_document(s, uri=f"w/{n}", source="w", text=doc_text(n))
                    assert created
                    n += 1
        st.close()
        results.put(("writer", n, None))
    except BaseException:  # noqa: BLE001 - reported to the test
        results.put(("writer", None, traceback.format_exc()))


def _reader_thread(st, index: int, deadline: float, out: dict) -> None:
    seen, urls, errors = [], [], []
    k = 0
    try:
        while time.monotonic() < deadline:
            with st.session(read_only=True) as s:
                n = s.scalar(sa.select(sa.func.count(Document.id)))
                for d in list_documents(s, limit=3):  # rows are whole: text matches its uri
                    assert d.text == doc_text(int(d.uri.split("/")[1])), d.uri
            seen.append(n)
            if index == 1 and k % 5 == 0:  # a second writer now and then
                u = f"https://example.org/{index}/{k}"
                with st.session() as s:
                    record_url(s, u, status="fetched", http_status=200)
                urls.append(u)
            k += 1
    except BaseException:  # noqa: BLE001
        errors.append(traceback.format_exc())
    out[index] = (seen, urls, errors)


def _readers(data_dir, url, start, results) -> None:
    try:
        st = open_store(data_dir, url, upgrade=False)
        start.wait()
        deadline = time.monotonic() + DURATION_S
        out: dict = {}
        threads = [threading.Thread(target=_reader_thread, args=(st, i, deadline, out))
                   for i in range(2)]  # each thread opens its own sessions
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st.close()
        results.put(("readers", out, None))
    except BaseException:  # noqa: BLE001
        results.put(("readers", None, traceback.format_exc()))


def run_processes(target, *specs) -> list:
    """Start one process per (function, extra args), release them together, and return
    their results (each puts exactly one). Forked, so children skip re-importing the world;
    the parent holds no open connection when it forks (stores closed, NullPool admin)."""
    ctx = mp.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=fn, args=(str(target.data_dir), target.url, start, results,
                                          *extra)) for fn, *extra in specs]
    for p in procs:
        p.start()
    start.set()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def test_a_writer_and_readers_in_other_processes(store_target):
    store_target.open().close()  # migrated; the children open with upgrade=False
    out = dict((name, (value, err)) for name, value, err in
               run_processes(store_target, (_writer,), (_readers,)))
    for name, (_, err) in out.items():
        assert err is None, f"{name} failed:\n{err}"
    written = out["writer"][0]
    readers = out["readers"][0]
    assert written >= 20, f"the writer barely ran: {written}"
    urls = []
    runs = {i: (len(seen), len(u)) for i, (seen, u, _) in readers.items()}
    for index, (seen, thread_urls, errors) in readers.items():
        assert not errors, f"reader {index} failed:\n{errors[0]}"
        assert seen == sorted(seen), "a reader saw the document count go backwards"
        assert 0 <= seen[-1] <= written
        urls += thread_urls
    # The pure reader is never blocked (WAL / MVCC). The one that also writes queues for the
    # lock behind a writer in a tight loop (SQLite's lock is not fair), so it may run little.
    assert runs[0][0] >= 10, f"the pure reader barely ran: {runs}, writer {written}"
    assert runs[1][1] >= 1, f"the reader that also writes never wrote: {runs}"
    with store_target.open() as st, st.session(read_only=True) as s:  # no write was lost
        uris = set(s.scalars(sa.select(Document.uri)))
        assert uris == {f"w/{i}" for i in range(written)}
        assert set(s.scalars(sa.select(FetchedUrl.url))) == set(urls)


def _add_same_contents(data_dir, url, start, results, seed: int) -> None:
    try:
        st = open_store(data_dir, url, upgrade=False)
        order = list(range(40))  # the same order everywhere: the processes collide often
        start.wait()
        created = {}
        if seed == 0:  # bulk: a lost race inside a batch falls back to one at a time
            for k in range(0, len(order), 8):
                with st.session() as s:
                    got = add_documents(s, [dict(uri=f"p{seed}/{i}", source="race",
                                                 text=doc_text(i)) for i in order[k:k + 8]])
                    created.update((i, (doc.id, new)) for i, (doc, new) in zip(order[k:k + 8], got))
        else:
            for i in order:
                with st.session() as s:
                    doc, new = add_document(s, uri=f"p{seed}/{i}", source="race", text=doc_text(i))
                    created[i] = (doc.id, new)
        st.close()
        results.put((seed, created, None))
    except BaseException:  # noqa: BLE001
        results.put((seed, None, traceback.format_exc()))


def test_processes_inserting_the_same_content_create_it_once(store_target):
    store_target.open().close()
    out = run_processes(store_target, *[(_add_same_contents, seed) for seed in range(3)])
    for seed, _, err in out:
        assert err is None, f"process {seed} failed:\n{err}"
    for i in range(40):
        outcomes = [created[i] for _, created, _ in out]
        assert len({doc_id for doc_id, _ in outcomes}) == 1, "two rows for one content"
        assert sum(new for _, new in outcomes) == 1, "created twice, or never"
    with store_target.open() as st, st.session(read_only=True) as s:
        assert s.scalar(sa.select(sa.func.count(Document.id))) == 40


def _open_and_report(data_dir, url, start, results) -> None:
    try:
        start.wait()
        with open_store(data_dir, url) as st:
            results.put(("ok", st.schema_state(), None))
    except BaseException:  # noqa: BLE001
        results.put(("error", None, traceback.format_exc()))


def test_processes_opening_an_empty_database_together_migrate_it_once(store_target):
    out = run_processes(store_target, *[(_open_and_report,)] * 3)
    for status, state, err in out:
        assert err is None, err
        assert state == ((head_revision(),), head_revision())
