"""The store's leases (issue 14 item 5): one holder at a time on both backends, taken over
only when expired or when its holder is a dead process of this host, fenced at commit."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading

import pytest

from store import lease
from store.errors import LeaseHeldError, LeaseLostError
from store.models import Lease


def test_one_holder_at_a_time_until_it_releases(store):
    with store.session() as s:
        got = lease.acquire(s, "agent-a", 30, data_dir="/data/a")
    assert got.holder == "agent-a" and got.pid == os.getpid() and not got.expired
    with pytest.raises(LeaseHeldError) as e, store.session() as s:
        lease.acquire(s, "agent-b", 30, data_dir="/data/b")
    assert f"pid {os.getpid()}" in str(e.value) and "/data/a" in str(e.value)
    assert e.value.hint
    with store.session() as s:               # the holder renews and re-enters freely
        before = lease.current(s).expires_at
        assert lease.renew(s, "agent-a", 60).expires_at > before
        lease.acquire(s, "agent-a", 30)
        lease.holds(s, "agent-a")
        assert lease.release(s, "agent-a")
    with store.session() as s:
        assert lease.current(s) is None
        assert lease.acquire(s, "agent-b", 30).holder == "agent-b"


def test_an_expired_lease_is_taken_over_and_its_old_holder_is_fenced(store):
    with store.session() as s:
        lease.acquire(s, "stalled", 30)
    with store.session() as s:               # it stopped renewing 31 s ago
        row = s.get(Lease, lease.TRAINER)
        row.expires_at = lease.db_now(s) - dt.timedelta(seconds=1)
    with store.session() as s:
        assert lease.current(s).expired
        assert lease.acquire(s, "fresh", 30).holder == "fresh"
    with pytest.raises(LeaseLostError) as e, store.session() as s:
        lease.renew(s, "stalled", 30)
    assert "taken over" in str(e.value) and f"pid {os.getpid()}" in str(e.value)
    with pytest.raises(LeaseLostError), store.session() as s:
        lease.holds(s, "stalled")
    with store.session() as s:
        assert not lease.release(s, "stalled")   # not ours: the new holder keeps it
        assert lease.current(s).holder == "fresh"


def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    with store.session() as s:
        lease.acquire(s, "killed-agent", 3600)
    with store.session() as s:
        s.get(Lease, lease.TRAINER).pid = int(dead.stdout)
    with store.session() as s:
        assert not lease.current(s).expired
        assert lease.acquire(s, "restarted", 30).holder == "restarted"


def test_racing_takers_cannot_both_win(store_target):
    """Eight processes' worth of stores race for a free (then an expired) lease: one wins."""
    stores = [store_target.open() for _ in range(8)]
    try:
        for round_ in range(2):
            start = threading.Barrier(len(stores))
            won, held = [], []

            def take(i, st):
                start.wait()
                try:
                    with st.session() as s:
                        lease.acquire(s, f"r{round_}-{i}", 30)
                    won.append(i)
                except LeaseHeldError:
                    held.append(i)

            threads = [threading.Thread(target=take, args=(i, st)) for i, st in enumerate(stores)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(won) == 1 and len(held) == len(stores) - 1, (won, held)
            with stores[0].session() as s:
                assert lease.current(s).holder == f"r{round_}-{won[0]}"
                s.get(Lease, lease.TRAINER).expires_at = lease.db_now(s) - dt.timedelta(seconds=1)
    finally:
        for st in stores:
            st.close()
