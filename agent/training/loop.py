"""`TrainerLoop`, the agent's trainer thread: the cycles of the continuous trainer
(agent/continuous_trainer.py) back to back while a backlog remains, and a wait on the
agent's wake event (no CPU) when none does; a cycle that fails on the store or the disk is
retried after a back-off, a lost lease ends it. It lowers its own thread to the settings'
priority (engine/priority.py: Node Zero, tokenizer learning and evaluation run there; the
workers lower theirs), and while training is paused (by a user, the battery or the load:
agent/limits.py's Pauses) it records the phase "paused" with the reasons and waits.
"""
from __future__ import annotations

import logging
import threading
from typing import Optional

from agent.continuous_trainer import ContinuousTrainer, CycleInterrupted
from agent.limits import Pauses
from agent.training.consolidation import CONSOLIDATE
from engine.errors import CllmError
from engine.priority import lower_this_thread
from store.errors import LeaseLostError, StoreError

loop_log = logging.getLogger("agent.daemon")   # the agent's lines, as before the split
LOOP_RETRY_S = 5.0      # wait after a failed cycle before trying again, doubling with each
LOOP_RETRY_MAX_S = 300.0  # failure in a row (a full disk stays full a while) up to this


class TrainerLoop:
    """Runs `trainer`'s cycles until `stop`; `wake` (set by whoever has news for the
    trainer) ends a wait, `crawled` (set once the start-up crawl is done) lets the token
    trigger fire, and `max_cycles` completed cycles set `stop`. A cycle failing with a
    CllmError or StoreError (a full disk, a locked store) is logged in one line and retried
    after a back-off on `stop` (LOOP_RETRY_S, doubling per failure in a row)."""

    def __init__(self, trainer: ContinuousTrainer, *, stop: threading.Event,
                 wake: threading.Event, crawled: threading.Event,
                 max_cycles: Optional[int] = None, pauses: Optional[Pauses] = None) -> None:
        self.trainer = trainer
        self.stop, self.wake, self.crawled = stop, wake, crawled
        self.max_cycles = max_cycles
        self.pauses = pauses                # why trainer.paused is set (the agent's Pauses)
        self.cycles_completed = 0

    def run(self) -> None:
        trainer = self.trainer
        lower_this_thread(trainer.settings.priority)   # this thread only; never raises
        learned_since_idle = 0
        failures = 0                            # cycles failed in a row: the back-off
        while not self.stop.is_set():
            self.wake.clear()
            try:
                if trainer.paused.is_set():     # paused (a user, the battery, the load)
                    why = self.pauses.reasons() if self.pauses is not None else {}
                    trainer._set_phase("paused", "; ".join(why.values()) or "paused",
                                       paused_by=list(why))
                    self.wake.wait()            # a resume (or any news) wakes it
                    continue
                trigger, wait = trainer.due(tokens_trigger=self.crawled.is_set())
                if trigger in (None, CONSOLIDATE) and learned_since_idle:
                    loop_log.info("backlog learned: every document trained to %s passes (%d "
                                  "cycles); %s: %s", trainer.settings.passes,
                                  learned_since_idle, *trainer.phase)
                    learned_since_idle = 0
                if trigger is None:
                    self.wake.wait(wait)        # an ingest, a stop, or the age trigger
                    continue
                rep = trainer.run_pending(trigger)
            except CycleInterrupted:
                return
            except LeaseLostError:
                raise                           # another agent trains now: stop this one
            except (CllmError, StoreError) as e:  # the store locked too long, a full disk
                wait = min(LOOP_RETRY_S * 2 ** failures, LOOP_RETRY_MAX_S)
                failures += 1
                loop_log.error("cycle failed: %s; retrying in %.0f s", e.one_line(), wait)
                self.stop.wait(wait)         # back off before retrying the same documents
                continue
            if rep is None:
                continue
            failures = 0
            self.cycles_completed += 1
            learned_since_idle += trigger != CONSOLIDATE
            loop_log.info("cycle %s completed: %s documents, %s replayed, loss %.3f -> %.3f, "
                     "checkpoint %s", rep.cycle_id, len(rep.doc_ids), len(rep.replay_ids),
                     rep.run.loss_start or float("nan"), rep.run.loss_end or float("nan"),
                     rep.checkpoint_path)
            if self.max_cycles is not None and self.cycles_completed >= self.max_cycles:
                loop_log.info("%d cycles completed (--max-cycles): stopping", self.cycles_completed)
                self.stop.set()
