"""The agent's trainer thread: cycles back to back while a backlog remains, and a wait (on
the agent's wake event: no CPU) when none does.

`TrainerLoop.run` asks the ContinuousTrainer whether a cycle is due (the token trigger only
once the start-up crawl has passed over every target; the age trigger always), runs it, and
otherwise waits until something wakes it: an ingest, a crawled target, a lease heartbeat, a
user's resume, the stop, or the age trigger's time. A cycle that fails on the store (locked
too long) is logged and retried after RETRY_S; a lost trainer lease or anything unexpected
ends the loop with its error, for the agent to stop and re-raise.

What a cycle trains is agent/continuous_trainer.py's; the thread itself, and the events it
waits on, are the daemon's (agent/daemon.py).
"""
from __future__ import annotations

import logging
import threading
from typing import Optional

from agent.continuous_trainer import ContinuousTrainer, CycleInterrupted
from engine.errors import CllmError
from store.errors import LeaseLostError, StoreError

log = logging.getLogger("agent.daemon")   # the agent's lines, as before the split
RETRY_S = 5.0      # wait after a failed cycle before trying again


class TrainerLoop:
    """Runs `trainer`'s cycles until `stop`; `wake` (set by whoever has news for the
    trainer) ends a wait, `crawled` (set once the start-up crawl is done) lets the token
    trigger fire, and `max_cycles` completed cycles set `stop`."""

    def __init__(self, trainer: ContinuousTrainer, *, stop: threading.Event,
                 wake: threading.Event, crawled: threading.Event,
                 max_cycles: Optional[int] = None) -> None:
        self.trainer = trainer
        self.stop, self.wake, self.crawled = stop, wake, crawled
        self.max_cycles = max_cycles
        self.cycles_completed = 0

    def run(self) -> None:
        trainer = self.trainer
        learned_since_idle = 0
        while not self.stop.is_set():
            self.wake.clear()
            try:
                if trainer.paused.is_set():     # a user paused training: wait for resume
                    self.wake.wait()
                    continue
                trigger, wait = trainer.due(tokens_trigger=self.crawled.is_set())
                if trigger is None:
                    if learned_since_idle:
                        log.info("backlog learned: every document trained to %s passes (%d "
                                 "cycles); waiting for new text", trainer.settings.passes,
                                 learned_since_idle)
                        learned_since_idle = 0
                    self.wake.wait(wait)        # an ingest, a stop, or the age trigger
                    continue
                rep = trainer.run_pending(trigger)
            except CycleInterrupted:
                return
            except LeaseLostError:
                raise                           # another agent trains now: stop this one
            except (CllmError, StoreError) as e:  # e.g. the store was locked too long
                log.error("cycle failed: %s", e.one_line())
                self.stop.wait(RETRY_S)         # back off before retrying the same documents
                continue
            if rep is None:
                continue
            self.cycles_completed += 1
            learned_since_idle += 1
            log.info("cycle %s completed: %s documents, %s replayed, loss %.3f -> %.3f, "
                     "checkpoint %s", rep.cycle_id, len(rep.doc_ids), len(rep.replay_ids),
                     rep.run.loss_start or float("nan"), rep.run.loss_end or float("nan"),
                     rep.checkpoint_path)
            if self.max_cycles is not None and self.cycles_completed >= self.max_cycles:
                log.info("%d cycles completed (--max-cycles): stopping", self.cycles_completed)
                self.stop.set()
