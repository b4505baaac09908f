"""Programs run under `mpiexec -n R` by tests/engine/test_mpi.py (not collected by
pytest: no test_ prefix). Each prints one `RESULT {...}` line on rank 0.

    mpiexec -n 2 python tests/engine/mpi/ranks.py equality WORKERS
    mpiexec -n 2 python tests/engine/mpi/ranks.py nan
    mpiexec -n 2 python tests/engine/mpi/ranks.py die|hang
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import engine  # noqa: E402
from engine import Model, ThreadedTrainingSystem, TrainConfig  # noqa: E402
from engine.config import parse_arch  # noqa: E402
from engine.mpi import world  # noqa: E402

# $CLLM_TEST_ARCH: the recipe's options of the model (engine.config.parse_arch)
CFG = engine.tiny.replace(**parse_arch(os.environ.get("CLLM_TEST_ARCH", "")))
SGD = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, warmup_steps=0, grad_clip=1.0)
ADAMW = TrainConfig(optimizer="adamw", lr=3e-3, warmup_steps=0, grad_clip=1.0)
MUON = TrainConfig(optimizer="muon", lr=3e-3, warmup_steps=0, grad_clip=1.0)


def batches():
    """Global batches: even and uneven row counts, rows without valid targets, one batch
    whose rank-1 shard has no valid target, one with no valid target at all."""
    rng = np.random.default_rng(7)
    out = []
    for i, (B, ignore) in enumerate([(8, ()), (5, ()), (7, (1, 2)), (4, (2, 3)), (3, (0, 1, 2)),
                                     (6, ()), (1, ())]):
        x = rng.integers(0, CFG.vocab_size, (B, 12))
        y = rng.integers(0, CFG.vocab_size, (B, 12))
        for r in ignore:
            y[r] = -1
        out.append((x, y))
    return out


def train(tcfg, workers, group):
    m = Model(CFG, seed=0)
    with ThreadedTrainingSystem(m, tcfg, n_workers=workers, group=group) as s:
        results = [s.train_step(x, y) for x, y in batches()]
        s.gather_state()
    return m, s, results


def equality(workers: int) -> dict:
    group = world()
    out = {}
    for name, tcfg in (("sgd", SGD), ("adamw", ADAMW), ("muon", MUON)):
        m, s, res = train(tcfg, workers, group)
        digest = group.check_agreement(m.params, *s.optimizer.state().values())
        if group.is_root:       # moments: rank 0's are whole, as a checkpoint needs them
            out_state = {k: v.copy() for k, v in s.optimizer.state().items()}
        if group.is_root:       # the single-process reference, computed on rank 0 alone
            ref, rs, ref_res = train(tcfg, 1, None)
            out[name] = {
                "max_abs_diff": float(np.abs(m.params - ref.params).max()),
                "moved": float(np.abs(m.params - Model(CFG, seed=0).params).max()),
                "losses": [r.loss for r in res], "ref_losses": [r.loss for r in ref_res],
                "skipped": [r.skipped for r in res], "ref_skipped": [r.skipped for r in ref_res],
                "tokens": [r.tokens for r in res], "ref_tokens": [r.tokens for r in ref_res],
                "t": s.optimizer.t, "ref_t": rs.optimizer.t, "digest": digest,
                "moments_diff": max(float(np.abs(out_state[k] - v).max())
                                    for k, v in rs.optimizer.state().items())}
    return out


def nan_on_one_rank() -> dict:
    group = world()
    m = Model(CFG, seed=0)
    real = m.forward_backward
    calls = [0]

    def poisoned(ws, x, y, row, scale, lam):
        out = real(ws, x, y, row, scale, lam)
        calls[0] += 1
        if group.rank == 1 and calls[0] == 2:
            row[3] = np.nan
        return out

    m.forward_backward = poisoned
    with ThreadedTrainingSystem(m, SGD, n_workers=1, group=group) as s:
        res = []
        before = None
        for i, (x, y) in enumerate(batches()[:3]):
            if i == 1:
                before = m.params.copy()
            res.append(s.train_step(x, y))
            if i == 1:
                unchanged = bool((m.params == before).all())
    group.check_agreement(m.params)
    return {"skipped": [r.skipped for r in res], "reason": res[1].reason,
            "unchanged": unchanged, "finite": bool(np.isfinite(m.params).all())}


def fault(kind: str) -> dict:
    group = world()
    m = Model(CFG, seed=0)
    real = m.forward_backward

    def faulty(ws, x, y, row, scale, lam):
        if group.rank == 1:
            sys.stderr.write(f"rank 1: {kind} now\n")
            sys.stderr.flush()
            if kind == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return real(ws, x, y, row, scale, lam)

    m.forward_backward = faulty
    with ThreadedTrainingSystem(m, SGD, n_workers=1, group=group, watchdog_timeout=3.0) as s:
        for x, y in batches():
            s.train_step(x, y)
    return {"finished": True}


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "equality":
        result = equality(int(sys.argv[2]))
    elif what == "nan":
        result = nan_on_one_rank()
    else:
        result = fault(what)
    g = world()
    if g.is_root:
        print("RESULT " + json.dumps(result), flush=True)
