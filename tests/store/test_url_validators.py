"""fetched_urls' validators (ETag, Last-Modified) and the re-crawl queries of store/urls.py,
on SQLite and PostgreSQL; migration 0005 adds the columns to a store with rows."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from store.documents import add_document
from store.migrate import head_revision
from store.models import Base, utcnow
from store import urls as url_store


def test_a_store_at_0004_with_urls_upgrades_and_its_urls_have_no_validators(store_target):
    from alembic import command

    from store.migrate import alembic_config

    with store_target.open(upgrade=False) as st:
        with st.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004")
            conn.execute(sa.text(
                "INSERT INTO fetched_urls (id, url, url_sha256, status, fetched_at)"
                " VALUES (1, :u, :k, 'fetched', CURRENT_TIMESTAMP)"),
                {"u": "https://a.example/", "k": url_store.url_key("https://a.example/")})
    with store_target.open() as st:
        assert st.schema_state()[0] == (head_revision(),)
        with st.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    Base.metadata) == []
        with st.session() as s:
            row = url_store.get_url(s, "https://a.example/")
            assert (row.etag, row.last_modified) == (None, None)
            url_store.record_url(s, "https://a.example/", status="fetched", validators=('"x"', None))
        with st.session(read_only=True) as s:
            assert url_store.get_url(s, "https://a.example/").etag == '"x"'


def test_validators_freshness_and_due_pages(store):
    url, other = "https://a.example/p", "https://a.example/q"
    with store.session() as s:
        doc = add_document(s, uri=url, source="a", text="words of the page")[0]
        url_store.record_url(s, url, status="fetched", document_id=doc.id, depth=1,
                             validators=('"e1"', "Tue, 01 Dec 2026 10:00:00 GMT"))
        url_store.record_url(s, other, status="failed", reason="HTTP 503")
        url_store.record_url(s, url, status="fetched", document_id=doc.id)  # validators kept
    later = utcnow() + dt.timedelta(seconds=5)
    with store.session(read_only=True) as s:
        assert url_store.validators(s, url) == ('"e1"', "Tue, 01 Dec 2026 10:00:00 GMT")
        assert url_store.validators(s, other) == (None, None)
        assert url_store.url_handled(s, url) and url_store.url_handled(s, url, fresh_after=utcnow() - dt.timedelta(hours=1))
        assert not url_store.url_handled(s, url, fresh_after=later)  # fetched before: due
        assert url_store.due_under(s, "https://a.example", max_depth=2, fetched_before=later) == [(url, 1)]
        assert url_store.due_under(s, "https://a.example", max_depth=0, fetched_before=later) == []
        assert url_store.last_fetched(s, "https://a.example/none") is None
    with store.session() as s:
        assert url_store.forget_page(s, url, reason="removed from its site (HTTP 404)") == 1
        assert url_store.forget_page(s, other, reason="x") == 0
