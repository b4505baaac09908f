"""fetched_urls' validators (ETag, Last-Modified) and the re-crawl queries of store/frontier.py,
on SQLite and PostgreSQL; migration 0005 adds the columns to a store with rows."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from store.documents import add_document
from store.migrate import head_revision
from store.models import Base, utcnow
from store import frontier


def test_a_store_at_0004_with_urls_upgrades_and_its_urls_have_no_validators(store_target):
    from alembic import command

    from store.migrate import alembic_config

    with store_target.open(upgrade=False) as st:
        with st.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004")
            conn.execute(sa.text(
                "INSERT INTO fetched_urls (id, url, url_sha256, status, fetched_at)"
                " VALUES (1, :u, :k, 'fetched', CURRENT_TIMESTAMP)"),
                {"u": "https://a.example/", "k": frontier.url_key("https://a.example/")})
    with store_target.open() as st:
        assert st.schema_state()[0] == (head_revision(),)
        with st.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    Base.metadata) == []
        with st.session() as s:
            row = frontier.get_url(s, "https://a.example/")
            assert (row.etag, row.last_modified) == (None, None)
            frontier.record_url(s, "https://a.example/", status="fetched", validators=('"x"', None))
        with st.session(read_only=True) as s:
            assert frontier.get_url(s, "https://a.example/").etag == '"x"'


def test_validators_freshness_and_due_pages(store):
    url, other = "https://a.example/p", "https://a.example/q"
    with store.session() as s:
        doc = add_document(s, uri=url, source="a", text="words of the page")[0]
        frontier.record_url(s, url, status="fetched", document_id=doc.id, depth=1,
                             validators=('"e1"', "Tue, 01 Dec 2026 10:00:00 GMT"))
        frontier.record_url(s, other, status="failed", reason="HTTP 503")
        frontier.record_url(s, url, status="fetched", document_id=doc.id)  # validators kept
    later = utcnow() + dt.timedelta(seconds=5)
    with store.session(read_only=True) as s:
        assert frontier.validators(s, url) == ('"e1"', "Tue, 01 Dec 2026 10:00:00 GMT")
        assert frontier.validators(s, other) == (None, None)
        assert frontier.url_handled(s, url) and frontier.url_handled(s, url, fresh_after=utcnow() - dt.timedelta(hours=1))
        assert not frontier.url_handled(s, url, fresh_after=later)  # fetched before: due
        assert frontier.due_under(s, "https://a.example", max_depth=2, fetched_before=later) == [(url, 1)]
        assert frontier.due_under(s, "https://a.example", max_depth=0, fetched_before=later) == []
        assert frontier.last_fetched(s, "https://a.example/none") is None
    with store.session() as s:
        assert frontier.forget_page(s, url, reason="removed from its site (HTTP 404)") == 1
        assert frontier.forget_page(s, other, reason="x") == 0
