"""Documents name the machine whose agent recorded them (several agents, one store)."""
from __future__ import annotations

import socket

from sqlalchemy import select

from store.documents import record_refused, record_text
from store.models import Document


def test_documents_carry_the_origin_of_the_store_that_recorded_them(store):
    with store.session() as s:
        record_text(s, uri="file:///a", source="a", text="from this host")
    store.origin = "laptop"
    with store.session() as s:
        record_text(s, uri="file:///b", source="b", text="from the laptop")
        record_refused(s, uri="file:///c", source="b", reason="binary content")
    with store.session() as s:
        got = {d.uri: d.origin for d in s.scalars(select(Document))}
    assert got == {"file:///a": socket.gethostname(), "file:///b": "laptop",
                   "file:///c": "laptop"}
