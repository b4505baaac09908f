"""engine/priority.py through the worker spheres (issue 27): each worker thread runs at the
requested CPU and I/O priority, read back from the kernel (/proc/self/task/<tid>/stat: nice
and scheduling policy; ioprio_get), while the thread that created them keeps its own; and the
priority changes scheduling only: the trained weights are bit-identical at every priority."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import Model, ThreadedTrainingSystem, TrainConfig
from engine.priority import (IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE, PRIORITIES, io_priority,
                             lower_this_thread)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread nice, SCHED_IDLE and ioprio are Linux's")

SCHED_OTHER, SCHED_IDLE = 0, 5
CFG = engine.tiny
SGD = TrainConfig(optimizer="sgd", lr=0.05, warmup_steps=0)


def thread_stat(tid: int, pid: int | None = None) -> tuple[int, int]:
    """(nice, scheduling policy) of a thread: fields 19 and 41 of /proc/<pid>/task/<tid>/stat
    (counted after the parenthesised command name, which may hold spaces)."""
    text = Path(f"/proc/{pid or os.getpid()}/task/{tid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()    # fields[0] is field 3 (the state)
    return int(fields[19 - 3]), int(fields[41 - 3])


def data(seed: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, CFG.vocab_size, (6, 12)), rng.integers(0, CFG.vocab_size, (6, 12)))


def expected(priority: str, base_nice: int) -> tuple[int, int]:
    return {"normal": (base_nice, SCHED_OTHER), "low": (min(19, base_nice + 10), SCHED_OTHER),
            "idle": (19, SCHED_IDLE)}[priority]


@pytest.mark.parametrize("priority", PRIORITIES)
def test_worker_spheres_run_at_the_requested_priority_and_their_creator_keeps_its_own(priority):
    me = os.getpid()
    base = os.getpriority(os.PRIO_PROCESS, me)
    own_before = thread_stat(me), io_priority(me)
    m = Model(CFG, seed=0)
    with ThreadedTrainingSystem(m, SGD, n_workers=3, priority=priority) as system:
        system.train_step(*data(0))                   # every worker has started and waits
        tids = [t.native_id for t in system._threads]
        stats = [thread_stat(t) for t in tids]
        ios = [io_priority(t) for t in tids]
    assert stats == [expected(priority, base)] * 3, stats
    if priority == "low":
        assert ios == [(IOPRIO_CLASS_BE, 7)] * 3
    elif priority == "idle":
        assert [c for c, _ in ios] == [IOPRIO_CLASS_IDLE] * 3
    else:
        assert all(io == own_before[1] for io in ios)
    assert (thread_stat(me), io_priority(me)) == own_before   # the caller: untouched


def test_a_lowered_thread_never_raises_a_thread_that_is_lower_already():
    import threading

    got = {}

    def run():
        lower_this_thread("idle")
        lower_this_thread("low")                     # low after idle: still idle
        tid = threading.get_native_id()
        got["stat"], got["io"] = thread_stat(tid), io_priority(tid)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert got["stat"] == (19, SCHED_IDLE) and got["io"][0] == IOPRIO_CLASS_IDLE


def test_priority_is_scheduling_only_the_weights_are_bit_identical():
    weights = {}
    for priority in ("normal", "idle"):
        m = Model(CFG, seed=0)
        with ThreadedTrainingSystem(m, SGD, n_workers=2, priority=priority) as system:
            for i in range(3):
                system.train_step(*data(i))
        weights[priority] = m.params.copy()
    assert np.array_equal(weights["normal"], weights["idle"])


def test_an_unknown_priority_is_refused():
    with pytest.raises(ValueError, match="priority"):
        ThreadedTrainingSystem(Model(CFG, seed=0), SGD, n_workers=1, priority="urgent")
