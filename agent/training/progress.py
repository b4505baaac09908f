"""A running cycle's live progress: what `cllm status`, the dashboard and the log show while
it trains. Step metrics go to the store for the first step, then at most every
METRIC_EVERY_S, and for the last step when the cycle ends; the cycle row carries its steps
done and planned; a log line at every tenth of the plan (or every 10 s). With a
SnapshotPublisher (agent/training/snapshot.py), the served weights are published between
steps as a live snapshot for readers, every --snapshot-seconds."""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

from agent.training.snapshot import SnapshotPublisher
from store.cycles import get_cycle, record_step_metrics

log = logging.getLogger("agent.continuous_trainer")   # the cycle's lines, as before the split
METRIC_EVERY_S = 1.0          # a step metric row at most this often (live progress for status)
LOG_EVERY_S = 10.0


class CycleProgress:
    def __init__(self, store, cycle_id: int, planned: int,
                 callback: Optional[Callable[[int, int, int, float], None]] = None,
                 snapshots: Optional[SnapshotPublisher] = None) -> None:
        self.store, self.cycle_id, self.planned = store, cycle_id, planned
        self.callback = callback          # (cycle_id, step, planned steps, loss)
        self.snapshots = snapshots        # live snapshots of the served weights, or None
        self.last: Optional[tuple[int, float, float]] = None   # (step, loss, lr)
        self._recorded = 0                # the last step whose metrics are in the store
        self._recorded_at = self._logged_at = time.perf_counter()

    def step(self, i: int, loss: float, lr: float) -> None:
        self.last = (i, loss, lr)
        if self.callback is not None:
            self.callback(self.cycle_id, i, self.planned, loss)
        now = time.perf_counter()
        if i == 1 or now - self._recorded_at >= METRIC_EVERY_S:   # before the log line says so
            self._recorded_at = now
            self._record()
        if i == 1 or i % max(1, self.planned // 10) == 0 or now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.info("cycle %s: step %s, loss %.3f", self.cycle_id, i, loss)
        if self.snapshots is not None:    # on this (the trainer's) thread, between two steps
            self.snapshots.step(i, now)

    def finish(self) -> None:
        """The cycle ended: its last step's metrics, unless they are recorded already."""
        if self.last is not None and self.last[0] != self._recorded:
            self._record()

    def _record(self) -> None:
        """The last step's metrics, and the running cycle's progress (steps done / planned)."""
        i, loss, lr = self.last
        self._recorded = i
        try:
            with self.store.session() as s:
                record_step_metrics(s, self.cycle_id, [
                    {"step": i, "loss": loss if math.isfinite(loss) else None, "lr": lr}])
                c = get_cycle(s, self.cycle_id)   # progress of the running cycle, for `cllm status`
                c.steps = i
                if "steps" not in (c.schedule or {}):      # the plan, next to its horizon
                    c.schedule = {**(c.schedule or {}), "steps": self.planned}
        except Exception as e:  # metrics are for watching; never fail a cycle over them
            log.warning("could not record step metrics of cycle %s: %s", self.cycle_id, e)
