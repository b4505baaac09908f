"""The continuous trainer: the backlog in the store becomes bounded training cycles.

Documents wait in a backlog (pending, or learning: part of their budget trained). The ledger
(store/ledger.py) records per document how many bytes of its training text trained sequences
have covered; a document is trained once it reaches `passes` passes. A cycle reads the
backlog in ledger order (agent/training/plan.py loads it, agent/training/backlog.py batches
it: parallel streams, each document continued where the last cycle stopped, new arrivals
first) mixed with a replay sample of trained documents, learns new tokens from the documents
it reads for the first time (the vocabulary delta, the model grown with it; a new model's
first cycle learns its vocabulary from the whole backlog instead), trains on the
ThreadedTrainingSystem until `cycle_seconds`, `max_steps`, the end of what it was given, a
stop, or (for a backlog cycle) a new arrival; then it
evaluates every source's held-out slice (validation loss and forgetting: loss now minus loss
right after that source was last learned), writes an atomic checkpoint, and commits ONE store
transaction: the cycle, its checkpoint (path, SHA-256), the vocabulary delta, the evaluations
and what it trained of each document. While a backlog remains the next cycle starts at once.
A cycle that arrivals interrupted is followed by one over the new documents alone, to their
budget, so a drop reaches a checkpoint within seconds.

Crash safety: nothing is counted until that transaction commits, so a crash loses at most the
cycle in progress. On start, `recover()` marks cycles left "running" as interrupted and
deletes their checkpoint files (files that never got their row); `load_latest()` refuses a
checkpoint whose hash does not match its row (with a warning) and uses the previous one;
the agent also applies its --passes to the documents' statuses (`follow_budget`). Retention
keeps the latest `keep_checkpoints` files plus one per hour; pruned ones are marked in the
store.

The agent's trainer thread, which calls `run_pending` while a cycle is due, is
agent/training/loop.py's TrainerLoop. Where training starts (the data-directory lock, the
store, the trainer lease: `open_training`) is the daemon's wiring (agent/daemon.py), shared
with `cllm train`. This module does not watch folders, crawl or handle signals. Sessions
stay inside one call; the trainer belongs to one thread.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from agent.limits import share_plan
from agent.settings import TrainerSettings
from agent.training.commit import commit_cycle
from agent.training.consolidation import (
    CONSOLIDATE,
    RESTORE,
    SWEEP_SHARE_BYTES,
    best_consolidated,
    best_of_run,
    commit_restore,
    consolidation_rule,
)
from agent.training.learn import Doc, LearnResult, learn
from agent.training.model_state import (
    ModelState,
    RecordedCheckpoint,
    announce_checkpoint,
    first_loadable,
    new_model_state,
    recorded_checkpoints,
    remove_checkpoint_files,
    save_model_state,
)
from agent.training.plan import CyclePlan, heldout_texts, plan_documents, sample_replay
from agent.training.progress import CycleProgress
from agent.training.recovery import prune_checkpoints, recover
from agent.training.snapshot import snapshot_publisher
from engine.errors import CllmError
from store import controls
from store.checkpoints import set_latest_checkpoint
from store.cycles import finish_cycle, list_cycles, roll_back_cycles_after, start_cycle
from store.documents import add_documents, document_counts, list_documents, mark_failed
from store.documents import pending_summary as pending_in_store
from store.errors import StoreError
from store.ledger import (
    BACKLOG_STATUSES,
    apply_budget,
    backlog,
    consolidation_order,
    document_horizon,
    fresh_documents,
)
from store.models import CycleStatus, DocumentStatus

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 16            # pending text past this many bytes per trigger token is due
FIRST_GUESS_BYTES_S = 20_000.0  # backlog bytes/s assumed before any cycle measured it
BYTES_PER_TOKEN_GUESS = 3.5     # for planning a cycle's steps (the cosine horizon)
MAX_NEW_SCOPE = 1000            # more new arrivals than this are learned as the backlog
FIRST_CYCLE_S = 10.0            # a backlog's first cycle; each next one twice as long, to
#                                 cycle_seconds (a first checkpoint soon, then few of them)
SCOPES = {"new": "new arrivals, alone", "backlog": "the backlog", "given": "the given documents",
          "consolidate": "consolidation: one more pass, least-learned first",
          "restore": "consolidation converged: back to the weights of its best held-out loss"}


@dataclass
class CycleReport:
    """What one completed cycle did (everything is also in the store)."""
    cycle_id: int
    trigger: str
    doc_ids: list[int]
    replay_ids: list[int]
    checkpoint_path: Path
    checkpoint_sha256: str
    run: LearnResult
    vocab_before: int
    vocab_after: int
    forgetting: dict[str, float] = field(default_factory=dict)
    completed: list[int] = field(default_factory=list)   # documents that reached their budget
    ended_by: str = ""


class CycleInterrupted(CllmError):
    """A cycle ended before it trained anything (a stop before its first step); its
    documents stay as they were."""


class ContinuousTrainer:
    """Turns the backlog into cycles. One thread at a time; `stop` ends a cycle at a step
    boundary and commits what it trained (a shorter cycle, not evaluated); `arrivals` (set
    by whoever ingests a new document) ends a backlog cycle the same way so the next one
    learns the new text first."""

    def __init__(self, store, data_dir: Path, settings: TrainerSettings = TrainerSettings(),
                 stop: Optional[threading.Event] = None,
                 progress: Optional[Callable[[int, int, int, float], None]] = None) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.stop = stop or threading.Event()
        self.arrivals = threading.Event()
        self.paused = threading.Event()    # set by the agent: end the cycle at a step boundary
        # set with `stop`, `paused` or `arrivals` by whoever sets them: ends a duty-cycle rest
        self.bell = threading.Event()
        self.progress = progress          # (cycle_id, step, planned steps, loss)
        # the store's trainer lease this process holds (agent/training/trainer_lease.py):
        # every cycle's commit checks it in its own transaction, so a process that lost it
        # records nothing
        self.lease = None
        self.state: Optional[ModelState] = None
        self._tok_cache: dict[int, int] = {}  # pending doc id -> tokens (current tokenizer)
        self._ramp = 0                  # cycles since the backlog was last empty
        self._tok_cache_vocab = -1
        # called on the trainer's thread after each committed checkpoint and live snapshot
        # (agent/training/snapshot.py): an in-process server reloads (agent/daemon.py)
        self.checkpoint_listeners: list[Callable[[], None]] = []
        self.phase: tuple[str, str] = ("starting", "")   # recorded in the store when it changes
        self._nothing_to_consolidate = False

    # --- start-up ---------------------------------------------------------------------------

    def recover(self) -> list[Path]:
        """Mark cycles left running as interrupted and delete the files no committed cycle
        owns (agent/training/recovery.py). Returns the deleted files."""
        return recover(self.store, self.data_dir)

    def follow_budget(self) -> dict:
        """Make the documents' statuses agree with this trainer's `passes` (it may differ
        from the run that trained them): trained ones below it learn again, learning ones
        that already reach it are trained (store/ledger.py). Returns the counts moved."""
        with self.store.session() as s:
            moved = apply_budget(s, self.settings.passes)
        if any(moved.values()):
            log.info("%g passes per document: %d trained documents learn again, %d learning "
                     "ones are trained", self.settings.passes, moved["learning_again"],
                     moved["trained"])
        return moved

    def load_latest(self) -> ModelState:
        """The latest recorded checkpoint whose SHA-256 matches its row; a mismatching one is
        refused with a warning and the previous one is used. A new model if there is none.

        Falling back rolls the store back with the model: the cycles after the checkpoint
        that loaded are marked failed, their documents return to pending (to be trained
        again) and the vocabulary they added is removed, so the store keeps describing the
        model that is actually running."""
        rows = recorded_checkpoints(self.store)
        self.state, row = first_loadable(rows)
        if row is not None:
            log.info("resumed from checkpoint %s (step %s)", row.path, self.state.step)
            if row is not rows[0]:
                self._roll_back(row.cycle_id, row.id, f"rolled back: the agent resumed from "
                                f"checkpoint {row.path} of cycle {row.cycle_id} (a later one "
                                f"failed to load)")
            return self.state
        if rows:
            log.warning("no recorded checkpoint of %s could be loaded: starting a new model",
                        self.data_dir)
        self.state = new_model_state(self.settings.preset, seed=self.settings.seed,
                               init=self.settings.init, arch=self.settings.arch_options())
        if rows:
            self._roll_back(None, None, "rolled back: no checkpoint could be loaded, the agent "
                            "started a new model")
        return self.state

    def start_fresh(self, state: ModelState) -> None:
        """Replace the model with a new one (`cllm train --fresh`); every earlier cycle is
        rolled back in the store, as when no checkpoint loads."""
        self.state = state
        self._roll_back(None, None, "rolled back: a fresh model was started (cllm train --fresh)")

    def _roll_back(self, cycle_id: Optional[int], ckpt_id: Optional[int], reason: str) -> None:
        with self.store.session() as s:
            done = roll_back_cycles_after(s, cycle_id, reason)
            if ckpt_id is not None:
                set_latest_checkpoint(s, ckpt_id)
        if done["cycles"]:
            log.warning("rolled back cycles %s: %d documents are pending again, %d vocabulary "
                        "entries removed", ", ".join(map(str, done["cycles"])), done["documents"],
                        done["vocab"])

    # --- when ---------------------------------------------------------------------------------

    def pending_summary(self) -> tuple[int, int, Optional[dt.datetime]]:
        """(pending documents, their tokens under the current tokenizer, oldest first_seen).
        Once the pending text is clearly past the token trigger it is not tokenised: the
        count is then a lower bound (every token holds at most MAX_TOKEN_BYTES bytes)."""
        tok = self._state().tokenizer
        if len(tok) != self._tok_cache_vocab:
            self._tok_cache, self._tok_cache_vocab = {}, len(tok)
        with self.store.session(read_only=True) as s:
            q = pending_in_store(s)
            if q["bytes"] >= MAX_TOKEN_BYTES * self.settings.min_cycle_tokens:
                return q["documents"], q["bytes"] // MAX_TOKEN_BYTES, q["oldest"]
            rows = [(d.id, d.first_seen) for d in list_documents(s, status=DocumentStatus.PENDING)]
            missing = [i for i, _ in rows if i not in self._tok_cache]
            if missing:
                for d in list_documents(s, ids=missing, with_text=True):
                    self._tok_cache[d.id] = len(tok.encode(d.text or ""))
        ids = {i for i, _ in rows}
        self._tok_cache = {i: n for i, n in self._tok_cache.items() if i in ids}
        oldest = min((f for _, f in rows), default=None)
        return len(rows), sum(self._tok_cache.values()), oldest

    def learning(self) -> int:
        """Documents part-way through their budget: a backlog the next cycle continues."""
        with self.store.session(read_only=True) as s:
            return sum(c["documents"] for c in document_counts(s)
                       if c["status"] == DocumentStatus.LEARNING)

    def due(self, now: Optional[dt.datetime] = None, tokens_trigger: bool = True
            ) -> tuple[Optional[str], Optional[float]]:
        """(trigger or None, seconds until the age trigger fires or None if nothing pends).
        A backlog being learned is due at once ("backlog"); otherwise new documents wait for
        the token trigger (not while the agent's start-up crawl runs: tokens_trigger=False)
        or the age trigger. With nothing pending and every document at its passes, a
        consolidation cycle is due ("consolidate") while keep_learning is on and the
        held-out loss still improves (`consolidation`)."""
        if self.learning():
            self._set_phase("learning", "documents are below their passes")
            return "backlog", 0.0
        n, tokens, oldest = self.pending_summary()
        if n == 0:
            if self.settings.keep_learning == "on" and not self._nothing_to_consolidate:
                done, why = self.consolidation()
                if not done:
                    self._set_phase("consolidating", why)
                    return CONSOLIDATE, 0.0
                if self.best_consolidated() is not None:
                    self._set_phase("consolidating", why + "; returning to its best weights")
                    return RESTORE, 0.0
                self._set_phase("converged", why + "; waiting for new text")
            elif self.settings.keep_learning == "on":
                self._set_phase("idle", "no trained document to consolidate; waiting for text")
            else:
                self._set_phase("idle", f"every document has its {self.settings.passes:g} "
                                "passes (--keep-learning off); waiting for new text")
            self._ramp = 0              # idle: the next backlog starts with a short cycle
            return None, None
        if tokens_trigger and tokens >= self.settings.min_cycle_tokens:
            self._set_phase("learning", "new text arrived")
            return "tokens", 0.0
        waited = ((now or _now()) - oldest).total_seconds()
        if waited >= self.settings.max_wait:
            self._set_phase("learning", "new text waited --max-wait")
            return "age", 0.0
        self._set_phase("waiting", f"{n} new documents ({tokens} tokens) wait for "
                        f"--min-cycle-tokens or --max-wait")
        return None, self.settings.max_wait - waited

    def consolidation(self) -> tuple[bool, str]:
        """(stop consolidating?, why): the rule (agent/training/consolidation.py)."""
        return consolidation_rule(self.store, self.settings)

    def best_consolidated(self) -> Optional[tuple[int, float, RecordedCheckpoint]]:
        """The consolidation run's best weights when they are not the latest, else None
        (agent/training/consolidation.py)."""
        return best_consolidated(self.store)

    def _restore_best(self) -> Optional[CycleReport]:
        """Consolidation converged past its best: commit the best cycle's weights as a cycle
        of no steps (agent/training/consolidation.py), so what is served, and what learning
        continues from, is the best the agent had."""
        best = self.best_consolidated()
        if best is None:
            return None
        with self.store.session(read_only=True) as s:
            horizon = document_horizon(s)
        with self.store.session() as s:
            cycle_id = start_cycle(s, trigger=RESTORE, workers=self.settings.workers,
                                   schedule={"horizon": horizon}).id
        try:
            state, path, sha = commit_restore(self.store, self.lease, self.data_dir, cycle_id,
                                              best, horizon)
        except BaseException as e:
            self._fail(cycle_id, e)
            raise
        self.state = state
        announce_checkpoint(self.data_dir, path, sha, cycle_id)   # for servers
        for fn in self.checkpoint_listeners:
            fn()
        log.info("cycle %s (%s): back to the weights of cycle %s (held-out loss %.4f), "
                 "checkpoint %s", cycle_id, RESTORE, best[0], best[1], path)
        self.prune_checkpoints()
        return None

    def _set_phase(self, phase: str, reason: str, paused_by: Sequence[str] = ()) -> None:
        """Record the trainer's phase in the store (status, dashboard, /metrics) when it
        changes (`paused_by`: the reasons of a pause); never fails a cycle over it."""
        if self.phase == (phase, reason):
            return
        if self.phase[0] != phase:
            log.info("trainer: %s (%s)", phase, reason)
        self.phase = (phase, reason)
        try:
            with self.store.session() as s:
                controls.set_trainer_phase(s, phase, reason, paused_by=paused_by)
        except StoreError as e:
            log.warning("could not record the trainer's phase: %s", e.one_line())

    # --- a cycle -------------------------------------------------------------------------------

    def run_pending(self, trigger: str) -> Optional[CycleReport]:
        """One bounded cycle over the backlog. New arrivals come first: documents that
        arrived since the last cycle started (and those of a previous such cycle not learned
        yet) are this cycle's only documents, until they reach their budget, so a drop is in
        a checkpoint soon; otherwise it continues the backlog in ledger order. None if
        nothing is left to learn."""
        self.arrivals.clear()
        if trigger == CONSOLIDATE:
            return self._consolidate()
        if trigger == RESTORE:
            return self._restore_best()
        self._nothing_to_consolidate = False
        with self.store.session(read_only=True) as s:
            # documents recorded after the last cycle's plan are new arrivals (by id, not
            # time: a row committed just after a plan read must not be missed)
            horizon = document_horizon(s)
            last = next(iter(list_cycles(s, limit=1)), None)
            seen = ((last.schedule or {}).get("horizon") if last is not None else None)
            fresh = fresh_documents(s, seen) if seen is not None else []
            done = next(iter(list_cycles(s, status=CycleStatus.COMPLETED, limit=1)), None)
            sched = (done.schedule or {}) if done is not None else {}
            if sched.get("scope") == "new":
                fresh += [d.id for d in list_documents(s, ids=sched.get("scope_ids", []))
                          if d.status in BACKLOG_STATUSES]
            if len(fresh) > MAX_NEW_SCOPE:       # a whole crawl arrived: that is the backlog
                fresh = []
            entries = backlog(s, ids=fresh) if fresh else backlog(s)
        if not entries:
            return None
        return self._cycle(entries, trigger, preemptible=not fresh,
                           scope="new" if fresh else "backlog", horizon=horizon)

    def _consolidate(self) -> Optional[CycleReport]:
        """One consolidation cycle: the rest of the current sweep (trained documents, the
        least-read first, each read to one share more: its whole text, or SWEEP_SHARE_BYTES
        of a longer one); new arrivals pre-empt it at the next step. Its bytes count in the
        ledger like any cycle's (passes keep growing); statuses stay trained."""
        with self.store.session(read_only=True) as s:
            horizon = document_horizon(s)
            entries = consolidation_order(s, self.settings.passes, SWEEP_SHARE_BYTES)
        if not entries:
            self._nothing_to_consolidate = True     # until new text is learned
            return None
        rep = self._cycle(entries, CONSOLIDATE, preemptible=True, scope="consolidate",
                          horizon=horizon)
        if rep is None:
            self._nothing_to_consolidate = True
        return rep

    def run_cycle(self, docs: Sequence[tuple[int, Doc]], trigger: str,
                  steps: Optional[int] = None) -> Optional[CycleReport]:
        """One cycle on exactly these documents (store ids with their text), whatever their
        status: `steps` steps (or the settings' bounds), reading them round and round past
        their budget (`cllm train`). Their ledger records what was trained."""
        with self.store.session(read_only=True) as s:
            entries = backlog(s, ids=[i for i, _ in docs])
            horizon = document_horizon(s)
        texts = {i: d.text for i, d in docs}
        return self._cycle(entries, trigger, preemptible=False, scope="given", steps=steps,
                           wrap=True, texts=texts, horizon=horizon)

    def _cycle(self, entries, trigger: str, *, preemptible: bool, scope: str,
               steps: Optional[int] = None, wrap: bool = False,
               texts: Optional[dict[int, str]] = None, horizon: int = 0
               ) -> Optional[CycleReport]:
        st = self.settings
        state = self._state()
        capacity = self._capacity_bytes()
        plan = plan_documents(self.store, entries, st, capacity, wrap=wrap,
                              texts=texts)
        refused = plan.refused
        if refused:
            self._refuse(refused, "no trainable text (too short once the held-out tail is cut)")
        if not plan.docs and plan.more is None:
            return None
        with self.store.session() as s:
            cycle_id = start_cycle(s, trigger=trigger, workers=st.workers,
                                   docs_new=len(entries) - len(refused),
                                   vocab_size_before=len(state.tokenizer),
                                   schedule={"horizon": horizon}).id
        log.info("cycle %s (%s): %s documents to learn (%s)", cycle_id, trigger,
                 len(entries) - len(refused), SCOPES[scope])
        try:
            return self._train_and_record(cycle_id, trigger, plan, {e.id for e in entries},
                                          steps, preemptible, capacity, scope, horizon)
        except BaseException as e:
            self._fail(cycle_id, e)
            self.state = None           # the in-memory model moved on: reload before the next cycle
            raise

    def _cycle_seconds(self) -> float:
        """How long the next backlog cycle runs: FIRST_CYCLE_S, doubling with every cycle
        since the backlog was last empty, up to cycle_seconds."""
        return min(self.settings.cycle_seconds, FIRST_CYCLE_S * 2 ** self._ramp)

    def _capacity_bytes(self) -> float:
        """Backlog bytes a cycle is expected to train: the last cycle's rate times the cycle's
        length (a first guess before any cycle ran)."""
        st = self.settings
        with self.store.session(read_only=True) as s:
            done = [c for c in reversed(list_cycles(s, status=CycleStatus.COMPLETED, limit=5))
                    if c.bytes_new and (c.schedule or {}).get("seconds")]
        rate = (done[0].bytes_new / done[0].schedule["seconds"]) if done else FIRST_GUESS_BYTES_S
        seconds = self._cycle_seconds()
        if st.max_steps is not None:
            T = self._state().model.config.context
            seconds = min(seconds, st.max_steps * st.batch_size * T * 4 / max(rate, 1.0))
        return rate * seconds

    def _train_and_record(self, cycle_id: int, trigger: str, plan: CyclePlan,
                          scope_ids: set[int], steps: Optional[int], preemptible: bool,
                          capacity: float, scope: str, horizon: int
                          ) -> Optional[CycleReport]:
        st = self.settings
        state = self._state()
        vocab_before = len(state.tokenizer)
        docs = plan.docs
        # consolidation reads learned documents only: no replay on top
        replay = [] if scope == "consolidate" else sample_replay(self.store, st, cycle_id,
                                                                  scope_ids)
        by_source: dict[str, list[str]] = {}
        for d in docs:
            by_source.setdefault(d.source, []).append(plan.tails.get(d.id, ""))
        heldout = heldout_texts(self.store, st.val_fraction, by_source)
        max_steps = steps if steps is not None else st.max_steps
        planned = max_steps or max(1, int(capacity / max(
            1.0, st.batch_size * state.model.config.context * BYTES_PER_TOKEN_GUESS)))
        tcfg = st.train_config(planned, resumed=state.optimizer.cfg.optimizer
                               if state.optimizer is not None else None)
        publish = snapshot_publisher(self.store, self.data_dir, state, cycle_id,
                                     st.snapshot_seconds, self.checkpoint_listeners)
        progress = CycleProgress(self.store, cycle_id, planned, self.progress, publish)

        def why_stop() -> Optional[str]:
            if self.stop.is_set():
                return "stop"
            if preemptible and self.arrivals.is_set():
                return "preempted"
            if self.paused.is_set():       # a user paused training: commit what it learned
                return "paused"
            return None

        seconds = self._cycle_seconds()
        self._ramp = min(self._ramp + 1, 30)
        workers, duty = share_plan(st.workers, st.cpu_share)   # usable CPUs, --cpu-share
        res = learn(state, docs, tcfg, max_steps=max_steps,
                    max_seconds=None if steps is not None else seconds,
                    workers=workers, priority=st.priority, duty=duty, bell=self.bell,
                    replay=replay,
                    replay_fraction=st.replay_fraction if replay else 0.0,
                    fim_rate=st.fim_rate,
                    max_new_tokens=st.max_new_tokens, more=plan.more, heldout=heldout,
                    seed=st.seed + cycle_id, progress=progress.step, stop=why_stop,
                    vocab=plan.vocab,      # a new model's vocabulary: its whole backlog's
                    average_sweep=scope == "consolidate" and st.sweep_average == "on")
        if res.steps == 0:
            self.state = None   # its vocabulary is not recorded: the next cycle learns it again
            if res.ended_by == "stop":
                raise CycleInterrupted(f"cycle {cycle_id} stopped before its first step",
                                       "its documents stay as they were for the next cycle")
            why = res.ended_by or "nothing to read"
            self._end_untrained(cycle_id, CycleStatus.INTERRUPTED,
                                f"ended before its first step ({why})")
            return None
        progress.finish()
        where = res.vocab_docs or docs         # token id -> the document it first occurs in
        first = {t: where[i].id for t, i in state.tokenizer.first_occurrence(
            res.new_token_ids, [d.text for d in where]).items()}
        path, sha = save_model_state(state, self.data_dir, cycle_id)
        try:
            heldout_tokens = {src: len(state.tokenizer.encode(t)) for src, t in heldout.items()}
            forgetting, credited = commit_cycle(
                self.store, self.lease, st, state, cycle_id, docs, replay, res, path, sha,
                vocab_before, first, planned, tcfg, heldout_tokens, scope, scope_ids, horizon)
        except BaseException:
            # the checkpoint never got its row: it must not be mistaken for a trained one
            remove_checkpoint_files(path)
            raise
        announce_checkpoint(self.data_dir, path, sha, cycle_id)   # for servers
        for fn in self.checkpoint_listeners:
            fn()
        log.info("cycle %s completed (%s): %s steps, loss %.3f -> %.3f, %.0f tok/s, %s bytes "
                 "learned (+%s replayed), %s documents done, checkpoint %s", cycle_id,
                 res.ended_by, res.steps, res.loss_start or float("nan"),
                 res.loss_end or float("nan"), res.tokens_per_s, credited["bytes_new"],
                 credited["bytes_replay"], len(credited["completed"]), path)
        try:
            self.prune_checkpoints()
        except OSError as e:    # the cycle is committed: never mark it failed over a deletion
            log.warning("could not prune old checkpoints: %s", e)
        return CycleReport(cycle_id, trigger, sorted(res.new_bytes), [d.id for d in replay],
                           path, sha, res, vocab_before, len(state.tokenizer), forgetting,
                           completed=credited["completed"], ended_by=res.ended_by)

    def prune_checkpoints(self) -> list[Path]:
        """Apply the retention rule (agent/training/recovery.py). Returns the deleted files."""
        best = best_of_run(self.store)          # a restore may return to it
        return prune_checkpoints(self.store, self.settings.keep_checkpoints,
                                 protect_cycles=() if best is None else (best,))

    # --- helpers -------------------------------------------------------------------------------

    def _state(self) -> ModelState:
        if self.state is None:
            self.load_latest()
        return self.state

    def _refuse(self, doc_ids: Sequence[int], reason: str) -> None:
        with self.store.session() as s:
            mark_failed(s, list(doc_ids), reason)
        log.warning("%s documents not trained: %s", len(doc_ids), reason)

    def _end_untrained(self, cycle_id: int, status: str, reason: str) -> None:
        """Close a cycle that trained nothing (the next one takes its documents)."""
        with self.store.session() as s:
            finish_cycle(s, cycle_id, status=status, error=reason)
        log.info("cycle %s %s: %s", cycle_id, status, reason)

    def _fail(self, cycle_id: int, e: BaseException) -> None:
        status = (CycleStatus.INTERRUPTED if isinstance(e, (CycleInterrupted, KeyboardInterrupt))
                  else CycleStatus.FAILED)
        try:
            with self.store.session() as s:
                finish_cycle(s, cycle_id, status=status,
                             error=(e.one_line() if isinstance(e, (CllmError, StoreError))
                                    else repr(e))[:2000])
        except Exception as e2:
            log.error("could not record the end of cycle %s: %s", cycle_id, e2)
        if status == CycleStatus.FAILED:
            first = str(e).splitlines()[0] if str(e) else ""   # the traceback goes with the raise
            log.error("cycle %s failed (%s: %s); nothing it trained was counted", cycle_id,
                      type(e).__name__, first)
        else:
            log.warning("cycle %s interrupted; nothing it trained was counted", cycle_id)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def record_documents(store, docs: Sequence[Doc]) -> list[tuple[int, Doc]]:
    """Store `docs` (deduplicated by content) and return them with their ids, for a one-shot
    cycle such as `cllm train`: a document seen before keeps its row and is trained again."""
    out: dict[int, Doc] = {}
    with store.session() as s:
        rows = add_documents(s, [{"uri": d.uri, "source": d.source, "text": d.text} for d in docs])
        s.flush()
        for (row, _), d in zip(rows, docs):
            out.setdefault(row.id, d)
    return list(out.items())
