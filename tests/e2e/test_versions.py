"""A watched file rewritten while the agent learns it (issue 14 item 2), end to end: every
version ends in one honest state (skipped if never trained, deleted "superseded after
training" if trained, the last one live and learned), never "skipped before training" with a
cycle's credits."""
import hashlib
import signal
import time

import pytest
from sqlalchemy import select

from store import open_store
from store.models import CycleDocument, Document
from tests.e2e.test_agent import AgentProc

pytestmark = pytest.mark.slow


def test_a_file_appended_to_while_its_cycles_train_keeps_one_live_version(tmp_path):
    data, watch = tmp_path / "data", tmp_path / "watched"
    watch.mkdir()
    f = watch / "growing.txt"
    a = AgentProc(data, watch, "--min-cycle-tokens", "200", "--max-wait", "1")
    try:
        a.wait_for(r"agent running")
        chunk = "the crystal lattice hums a quiet tune over the prime spiral. " * 34  # ~2 KB
        for _ in range(8):          # a writer appending while cycles start and train
            with open(f, "a") as fh:
                fh.write(chunk)
            time.sleep(0.4)
        final = hashlib.sha256(f.read_bytes()).hexdigest()
        store = open_store(data)
        try:
            while True:             # each completed cycle is a chance the last version is learned
                a.wait_for(r"cycle \d+ completed", timeout=120)
                with store.session(read_only=True) as s:
                    last = s.scalars(select(Document).where(Document.sha256 == final)).first()
                    if last is not None and last.status == "trained":
                        break
            with store.session(read_only=True) as s:
                docs = s.scalars(select(Document).order_by(Document.id)).all()
                credited = set(s.scalars(select(CycleDocument.document_id).where(
                    CycleDocument.new_bytes > 0)))
        finally:
            store.close()
    finally:
        assert a.stop(signal.SIGTERM) == 0, "".join(a.log)
    live = [d for d in docs if d.status not in ("skipped", "deleted")]
    assert [d.sha256 for d in live] == [final]
    for d in docs:
        if d.id == live[0].id:
            continue
        if d.status == "skipped":    # never trained
            assert d.reason.endswith("before training") and d.cycle_id is None
            assert d.trained_bytes == 0 and d.id not in credited
        else:                        # trained, then replaced
            assert d.status == "deleted" and d.reason.endswith("after training")
            assert d.trained_bytes > 0 and d.id in credited and d.cycle_id is not None
