"""The store queries `cllm status` and `cllm history urls` read through (the CLI writes no
SQL), on SQLite and PostgreSQL."""
from __future__ import annotations

from store import cycles
from store.frontier import list_urls, record_url


def test_count_cycles_counts_by_status(store):
    with store.session() as s:
        assert cycles.count_cycles(s) == 0
        for _ in range(3):
            c = cycles.start_cycle(s, trigger="tokens")
        cycles.finish_cycle(s, c.id, status="completed")
    with store.session(read_only=True) as s:
        assert cycles.count_cycles(s) == 3
        assert cycles.count_cycles(s, status="completed") == 1
        assert cycles.count_cycles(s, status="running") == 2
        assert cycles.count_cycles(s, status="failed") == 0


def test_history_urls_lists_in_id_order_filtered_and_limited(store):
    with store.session() as s:
        for i, status in enumerate(["fetched", "refused", "fetched", "disallowed"]):
            record_url(s, f"https://example.org/{i}", status=status, reason=f"because {i}")
    with store.session(read_only=True) as s:
        assert [u.url[-1] for u in list_urls(s)] == ["0", "1", "2", "3"]
        assert [u.url[-1] for u in list_urls(s, status="fetched")] == ["0", "2"]
        assert [u.url[-1] for u in list_urls(s, limit=2)] == ["0", "1"]
        assert [u.reason for u in list_urls(s, status="refused")] == ["because 1"]
        assert list_urls(s, status="failed") == []
