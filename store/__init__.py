"""Crystalline CLLM store: SQLAlchemy models, engine factory, migrations, and the functions that
write and read every table (the store owns all SQL).

    from store import open_store
    from store.documents import add_document

    with open_store("cllm-data") as st:          # SQLite file, or $CLLM_DATABASE_URL
        with st.session() as s:                  # one transaction: commit or roll back
            doc, created = add_document(s, uri="file:///a.txt", source="notes", text="hi")

Modules: `db` (the engine factory; the only SQLite-specific code), `models`, `migrate`
(Alembic, applied on open), `core` (Store, open_store), `documents` (a document's lifecycle
and reading documents back), `ledger` (what was trained of each document, the backlog),
`cycles` (a cycle's row, step metrics, evaluations, rolling cycles back), `vocab` (the
vocabulary's history), `checkpoints` (checkpoint rows, the latest one), `frontier` (the
crawler's handled and queued URLs), `targets` (watch roots and crawl targets), `controls`
(pause/resume and other user controls), `lease` (named leases: the single-trainer rule).
The store imports nothing from the agent or the engine; `cllm db` is agent/cli/db.py.
"""
from .core import Store, open_store
from .errors import (DatabaseUnavailableError, NotADatabaseError, ReadOnlyDatabaseError,
                     SchemaTooNewError, StoreError)
from .models import (Base, Checkpoint, CrawlTarget, Cycle, Document, EvalResult, FetchedUrl,
                     StepMetric, VocabEntry)

__all__ = [
    "Store", "open_store",
    "StoreError", "NotADatabaseError", "ReadOnlyDatabaseError", "SchemaTooNewError",
    "DatabaseUnavailableError",
    "Base", "CrawlTarget", "Document", "VocabEntry", "Cycle", "StepMetric", "EvalResult",
    "Checkpoint", "FetchedUrl",
]
