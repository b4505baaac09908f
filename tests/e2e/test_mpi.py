"""`mpiexec -n 2 cllm train` and `mpiexec -n 2 cllm agent` end to end (issue 17): rank 0
alone touches the store and the checkpoints, and the model it writes is the one a single
process trains on the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import select

from engine.checkpoint import load_checkpoint
from store import open_store
from store.models import Cycle
from tests.engine.mpi import mpiexec_path

pytestmark = pytest.mark.slow
MPIEXEC = [mpiexec_path(), "-n", "2", "--oversubscribe",
           "--allow-run-as-root"]
ARGS = ["--preset", "tiny", "--batch-size", "6", "--seed", "3"]


def corpus(tmp_path):
    notes = tmp_path / "corpus" / "notes"
    notes.mkdir(parents=True)
    (notes / "a.txt").write_text("the crystal lattice hums a quiet tune. " * 80)
    (notes / "b.txt").write_text("every sphere touches twelve neighbours. " * 80)
    return tmp_path / "corpus"


def run(cmd, timeout=240):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_two_ranks_train_the_model_one_process_trains(tmp_path):
    src = corpus(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "agent", "train", str(src), "--data-dir", str(one), *ARGS,
         "--steps", "8", "--workers", "2"])
    run([*MPIEXEC, sys.executable, "-m", "agent", "train", str(src), "--data-dir", str(two),
         *ARGS, "--steps", "8", "--workers", "1"])
    a = load_checkpoint(one / "checkpoints" / "ckpt-000001.safetensors")
    b = load_checkpoint(two / "checkpoints" / "ckpt-000001.safetensors")
    assert a.step == b.step == 8
    assert np.abs(a.model.params - b.model.params).max() < 1e-5
    assert np.abs(a.model.params - b.model.params).max() <= np.abs(a.model.params).max()
    # rank 0 alone wrote the store: one cycle, one checkpoint file pair
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        "ckpt-000001.safetensors", "ckpt-000001.tokenizer.json", "committed.json"]
    with open_store(two) as st, st.session() as s:
        assert [c.status for c in s.scalars(select(Cycle))] == ["completed"]


def test_the_agent_under_mpiexec_learns_and_stops_every_rank(tmp_path):
    watch = tmp_path / "watched"
    watch.mkdir()
    (watch / "a.txt").write_text("ranks learn the watched folder together. " * 60)
    p = run([*MPIEXEC, sys.executable, "-m", "agent", "-v", "agent", "--data-dir",
             str(tmp_path / "data"), "--watch", str(watch), "--preset", "tiny", "--workers", "1",
             "--min-cycle-tokens", "100", "--max-steps", "4", "--batch-size", "4",
             "--max-cycles", "2"])
    assert "2 cycles completed" in p.stderr
    with open_store(tmp_path / "data") as st, st.session() as s:
        assert [c.status for c in s.scalars(select(Cycle))] == ["completed", "completed"]
