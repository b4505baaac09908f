"""Store throughput and footprint: document inserts with text, dedupe hits, queue reads, size
on disk per MB of text, on SQLite (the default) and PostgreSQL when a URL is given.

Documents are slices of the shipped corpus (each made unique by a header line), inserted
through store.documents.add_document exactly as the agent does (one transaction per
document, and many per transaction) and through add_documents (one batch per transaction).
Then the same contents again (dedupe hits), then the pending queue read back with its text.
SQLite's size is the file after a clean close (WAL checkpointed into it); PostgreSQL's is
the total size of the store's tables (TOAST compresses long text).

    python benchmarks/bench_store.py --docs 2000 --doc-kb 4
    source .ci/postgres.sh && python benchmarks/bench_store.py --postgres
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sqlalchemy as sa  # noqa: E402

from store import open_store  # noqa: E402
from store.documents import add_document, add_documents, pending_documents  # noqa: E402
from store.models import Base  # noqa: E402

CORPUS = Path(__file__).resolve().parent.parent / "agent" / "sample_corpus"
MB = 1024 * 1024


def make_texts(n: int, size: int) -> list[str]:
    """n distinct texts of about `size` bytes cut from the corpus, wrapping around."""
    corpus = "\n".join(p.read_text("utf-8") for p in sorted(CORPUS.rglob("*"))
                       if p.is_file() and p.suffix in (".txt", ".md", ".rst", ""))
    out, pos = [], 0
    for i in range(n):
        if pos + size > len(corpus):
            pos = 0
        out.append(f"# document {i}\n" + corpus[pos:pos + size])
        pos += size
    return out


def insert(s, texts: list[str], start: int, api: str, prefix: str) -> list[bool]:
    items = [dict(uri=f"file:///{prefix}/{j}.txt", source="bench", text=t)
             for j, t in enumerate(texts, start=start)]
    if api == "add_documents":
        return [created for _, created in add_documents(s, items)]
    return [add_document(s, **item)[1] for item in items]


def run(label: str, url_for, texts: list[str], batch: int, api: str, size_fn) -> dict:
    """Insert `texts` in transactions of `batch`, then dedupe hits, then read the queue."""
    data_dir, url, cleanup = url_for()
    try:
        st = open_store(data_dir, url)
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            with st.session() as s:
                assert all(insert(s, texts[i:i + batch], i, api, "bench"))
        insert_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            with st.session() as s:
                assert not any(insert(s, texts[i:i + batch], i, api, "again"))
        dedupe_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        with st.session(read_only=True) as s:
            docs = pending_documents(s)
            read_bytes = sum(len(d.text.encode()) for d in docs)
        read_s = time.perf_counter() - t0
        assert len(docs) == len(texts)

        st.close()
        text_mb = sum(len(t.encode()) for t in texts) / MB
        disk_mb = size_fn(st) / MB
        return {"backend": label, "api": api, "docs": len(texts), "batch": batch,
                "text_mb": round(text_mb, 2),
                "inserts_per_s": round(len(texts) / insert_s, 1),
                "insert_mb_per_s": round(text_mb / insert_s, 2),
                "dedupe_hits_per_s": round(len(texts) / dedupe_s, 1),
                "queue_read_mb_per_s": round(read_bytes / MB / read_s, 1),
                "disk_mb": round(disk_mb, 2),
                "disk_mb_per_text_mb": round(disk_mb / text_mb, 3)}
    finally:
        cleanup()


def sqlite_target():
    d = tempfile.mkdtemp(prefix="bench-store-")
    return d, None, lambda: shutil.rmtree(d)


def sqlite_size(st) -> int:
    folder = st.path.parent
    return sum(p.stat().st_size for p in folder.iterdir())  # the file; -wal/-shm if any left


def postgres_target_factory(base_url: str):
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def target():
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = (sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
               .render_as_string(hide_password=False))

        def cleanup():
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        target.schema = schema
        return None, url, cleanup

    def size(_st) -> int:
        with admin.connect() as c:
            return sum(c.execute(sa.text("SELECT pg_total_relation_size(:t)"),
                                 {"t": f'"{target.schema}".{name}'}).scalar()
                       for name in Base.metadata.tables)
    return target, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--doc-kb", type=float, default=4.0, help="text per document (KB)")
    ap.add_argument("--runs", default="add_document:1,add_document:100,add_documents:100",
                    help="API:documents per transaction, to compare")
    ap.add_argument("--postgres", action="store_true",
                    help="also PostgreSQL at $CLLM_TEST_POSTGRES_URL (a scratch schema)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()

    texts = make_texts(args.docs, int(args.doc_kb * 1024))
    backends = [("sqlite", sqlite_target, sqlite_size)]
    if args.postgres:
        base = os.environ.get("CLLM_TEST_POSTGRES_URL")
        if not base:
            sys.exit("--postgres needs $CLLM_TEST_POSTGRES_URL (source .ci/postgres.sh)")
        backends.append(("postgresql", *postgres_target_factory(base)))
    runs = [(r.split(":")[0], int(r.split(":")[1])) for r in args.runs.split(",")]
    rows = [run(label, target, texts, batch, api, size)
            for label, target, size in backends for api, batch in runs]

    print(f"\n{args.docs} documents of {args.doc_kb:g} KB, {os.cpu_count()} cores")
    cols = ["backend", "api", "batch", "inserts_per_s", "insert_mb_per_s", "dedupe_hits_per_s",
            "queue_read_mb_per_s", "disk_mb_per_text_mb"]
    print("  ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>13}" for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
