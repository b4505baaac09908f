"""The continuous trainer: pending documents in the store become training cycles.

A cycle starts when at least `min_cycle_tokens` new tokens are pending, or the oldest pending
document has waited `max_wait` seconds. A cycle learns new tokens from the pending documents
(the vocabulary delta, the model grown with it), trains on the new documents mixed with a
replay sample of earlier ones (learning rate re-warmed, then cosine decay) on the
ThreadedTrainingSystem, evaluates every source's held-out slice (validation loss and
forgetting: loss now minus loss right after that source was last learned), writes an atomic
checkpoint, and then commits ONE store transaction that completes the cycle, records the
checkpoint (path, SHA-256), the vocabulary delta and the evaluations, and marks the documents
trained.

Crash safety: documents stay pending until that transaction commits. On start, `recover()`
marks cycles left "running" as interrupted and deletes their checkpoint files (files that
never got their row); `load_latest()` refuses a checkpoint whose hash does not match its row
(with a warning) and uses the previous one.

This module does not watch folders, crawl, take the data-directory lock or handle signals:
that is the daemon's job (agent/daemon.py). Sessions stay inside one call; the trainer
belongs to one thread.
"""
from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from agent.settings import TrainerSettings
from agent.training import (CKPT_RE, TOKENIZER_RE, Doc, RunResult, State, checkpoint_dir,
                            load_state, new_state, save_state, tokenizer_path, train_run)
from engine import TrainConfig
from engine.errors import CllmError
from engine.optim import lr_at
from store.errors import StoreError

log = logging.getLogger(__name__)

METRIC_EVERY_S = 1.0          # a step metric row at most this often (live progress for status)
HELDOUT_CHARS_PER_SOURCE = 6000  # held-out text evaluated per source (keeps evaluation short)
FAULT_ENV = "CLLM_FAULT_INJECT"  # "after-checkpoint": SIGKILL between checkpoint and commit (tests)


def open_store(data_dir):
    """The store of a data directory (or of $CLLM_DATABASE_URL), migrated to this code."""
    from store import open_store as _open

    return _open(data_dir)


@dataclass
class CycleReport:
    """What one completed cycle did (everything is also in the store)."""
    cycle_id: int
    trigger: str
    doc_ids: list[int]
    replay_ids: list[int]
    checkpoint_path: Path
    checkpoint_sha256: str
    run: RunResult
    vocab_before: int
    vocab_after: int
    forgetting: dict[str, float] = field(default_factory=dict)


class CycleInterrupted(CllmError):
    """A stop was requested during a cycle; its documents stay pending."""


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(training head, held-out tail): the same cut every cycle, so forgetting compares like
    with like."""
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


class ContinuousTrainer:
    """Turns pending documents into cycles. One thread at a time; `stop` ends a cycle at a
    step boundary (the cycle is then recorded as interrupted and nothing else changes)."""

    def __init__(self, store, data_dir: Path, settings: TrainerSettings = TrainerSettings(),
                 stop: Optional[threading.Event] = None,
                 progress: Optional[Callable[[int, int, int, float], None]] = None) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.stop = stop or threading.Event()
        self.progress = progress          # (cycle_id, step, steps, loss)
        self.state: Optional[State] = None
        self._tok_cache: dict[int, int] = {}  # pending doc id -> tokens (current tokenizer)
        self._tok_cache_vocab = -1

    # --- start-up ---------------------------------------------------------------------------

    def recover(self) -> list[Path]:
        """Mark cycles left running as interrupted; delete checkpoint and tokenizer files no
        row names (written by a cycle that never committed) and temporary files of writes
        that were killed. Returns the deleted files."""
        from store.queries import interrupt_running_cycles, list_checkpoints, list_cycles

        with self.store.session() as s:
            for c in list_cycles(s, status="running"):
                log.warning("cycle %s was interrupted; its documents are still pending", c.id)
            interrupt_running_cycles(
                s, "the agent stopped during this cycle; its documents stayed pending",
                keep_error=True)
            known = {str(Path(c.path).resolve()) for c in list_checkpoints(s)}
            unfinished = {c.id for c in list_cycles(s) if c.status != "completed"}
        removed = []
        d = checkpoint_dir(self.data_dir)
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                # a write killed before its rename (we hold the data-directory lock, so no
                # writer is running): never a checkpoint
                log.warning("removing %s: an unfinished write", p)
            else:
                m = CKPT_RE.match(p.name) or TOKENIZER_RE.match(p.name)
                ckpt = d / f"ckpt-{m.group(1)}.safetensors" if m else None
                if (ckpt is None or str(ckpt.resolve()) in known
                        or int(m.group(1)) not in unfinished or not p.exists()):
                    continue                    # recorded, not ours, or removed just before
                if p == ckpt:
                    log.warning("removing checkpoint %s: its cycle never committed", p)
                    tokenizer_path(p).unlink(missing_ok=True)
                elif ckpt.exists():
                    continue                    # removed with its checkpoint
                else:
                    log.warning("removing %s: its checkpoint was never written", p)
            p.unlink(missing_ok=True)
            removed.append(p)
        return removed

    def load_latest(self) -> State:
        """The latest recorded checkpoint whose SHA-256 matches its row; a mismatching one is
        refused with a warning and the previous one is used. A new model if there is none.

        Falling back rolls the store back with the model: the cycles after the checkpoint
        that loaded are marked failed, their documents return to pending (to be trained
        again) and the vocabulary they added is removed, so the store keeps describing the
        model that is actually running."""
        from store.queries import list_checkpoints

        with self.store.session(read_only=True) as s:
            # the latest first, then the others newest first (the sort is stable)
            rows = [(c.id, c.path, c.sha256, c.cycle_id) for c in sorted(
                list_checkpoints(s, newest_first=True), key=lambda c: not c.is_latest)]
        for i, (ckpt_id, path, sha, cycle_id) in enumerate(rows):
            try:
                self.state = load_state(Path(path), expected_sha256=sha)
            except CllmError as e:
                log.warning("refusing checkpoint %s: %s; trying the previous one", path, e.one_line())
                continue
            log.info("resumed from checkpoint %s (step %s)", path, self.state.step)
            if i > 0:
                self._roll_back(cycle_id, ckpt_id, f"rolled back: the agent resumed from "
                                f"checkpoint {path} of cycle {cycle_id} (a later one failed "
                                f"to load)")
            return self.state
        if rows:
            log.warning("no recorded checkpoint of %s could be loaded: starting a new model",
                        self.data_dir)
        self.state = new_state(self.settings.preset, seed=self.settings.seed,
                               init=self.settings.init)
        if rows:
            self._roll_back(None, None, "rolled back: no checkpoint could be loaded, the agent "
                            "started a new model")
        return self.state

    def start_fresh(self, state: State) -> None:
        """Replace the model with a new one (`cllm train --fresh`); every earlier cycle is
        rolled back in the store, as when no checkpoint loads."""
        self.state = state
        self._roll_back(None, None, "rolled back: a fresh model was started (cllm train --fresh)")

    def _roll_back(self, cycle_id: Optional[int], ckpt_id: Optional[int], reason: str) -> None:
        from store.queries import roll_back_cycles_after, set_latest_checkpoint

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
        """(pending documents, their tokens under the current tokenizer, oldest first_seen)."""
        from store.queries import list_documents

        tok = self._state().tokenizer
        if len(tok) != self._tok_cache_vocab:
            self._tok_cache, self._tok_cache_vocab = {}, len(tok)
        with self.store.session(read_only=True) as s:
            rows = [(d.id, d.first_seen) for d in list_documents(s, status="pending")]
            missing = [i for i, _ in rows if i not in self._tok_cache]
            if missing:
                for d in list_documents(s, ids=missing, with_text=True):
                    self._tok_cache[d.id] = len(tok.encode(d.text or ""))
        ids = {i for i, _ in rows}
        self._tok_cache = {i: n for i, n in self._tok_cache.items() if i in ids}
        oldest = min((f for _, f in rows), default=None)
        return len(rows), sum(self._tok_cache.values()), oldest

    def due(self, now: Optional[dt.datetime] = None, tokens_trigger: bool = True
            ) -> tuple[Optional[str], Optional[float]]:
        """(trigger or None, seconds until the age trigger fires or None if nothing pends).
        With tokens_trigger=False only the age trigger counts (the agent's start-up crawl)."""
        n, tokens, oldest = self.pending_summary()
        if n == 0:
            return None, None
        if tokens_trigger and tokens >= self.settings.min_cycle_tokens:
            return "tokens", 0.0
        waited = ((now or _now()) - oldest).total_seconds()
        if waited >= self.settings.max_wait:
            return "age", 0.0
        return None, self.settings.max_wait - waited

    def cycle_steps(self, new_tokens: int) -> int:
        st = self.settings
        if st.steps is not None:
            return st.steps
        per_step = st.batch_size * self._state().model.config.context * (1.0 - st.replay_fraction)
        return int(min(st.max_steps, max(st.min_steps, math.ceil(st.epochs * new_tokens / per_step))))

    # --- a cycle -------------------------------------------------------------------------------

    def run_pending(self, trigger: str) -> Optional[CycleReport]:
        """One cycle over (up to max_cycle_docs of) the pending documents."""
        from store.documents import pending_documents

        with self.store.session(read_only=True) as s:
            docs = [(d.id, Doc(d.uri, d.source, d.text or ""))
                    for d in pending_documents(s, limit=self.settings.max_cycle_docs)]
        if not docs:
            return None
        return self.run_cycle(docs, trigger)

    def run_cycle(self, docs: Sequence[tuple[int, Doc]], trigger: str,
                  steps: Optional[int] = None) -> Optional[CycleReport]:
        """Train one cycle on `docs` (store ids with their text) and record it atomically.
        Documents with nothing to train on are marked failed (with the reason) instead."""
        from store.queries import start_cycle

        st = self.settings
        state = self._state()
        if sum(len(split_text(d.text, st.val_fraction)[0].strip()) for _, d in docs) < 2:
            self._refuse(docs, "no trainable text (too short once the held-out tail is cut)")
            return None
        with self.store.session() as s:
            cycle_id = start_cycle(s, trigger=trigger, workers=st.workers, docs_new=len(docs),
                                   vocab_size_before=len(state.tokenizer)).id
        log.info("cycle %s (%s): %s new documents", cycle_id, trigger, len(docs))
        try:
            return self._train_and_record(cycle_id, docs, trigger, steps)
        except BaseException as e:
            self._fail(cycle_id, e)
            self.state = None           # the in-memory model moved on: reload before the next cycle
            raise

    def _train_and_record(self, cycle_id: int, docs, trigger: str, steps: Optional[int]
                          ) -> CycleReport:
        st = self.settings
        state = self._state()
        vocab_before = len(state.tokenizer)
        heads = [Doc(d.uri, d.source, split_text(d.text, st.val_fraction)[0]) for _, d in docs]
        replay = self._replay_sample(cycle_id, {i for i, _ in docs})
        replay_docs = [Doc(d.uri, d.source, split_text(d.text, st.val_fraction)[0])
                       for _, d in replay]
        by_source: dict[str, list[str]] = {}
        for _, d in docs:
            by_source.setdefault(d.source, []).append(d.text)
        heldout = self._heldout(by_source)
        if steps is None:
            steps = self.cycle_steps(sum(len(state.tokenizer.encode(d.text)) for d in heads))
        tcfg = st.train_config(steps)
        sampled: list[tuple[int, float, float]] = []
        last = [time.perf_counter()]
        logged = [time.perf_counter()]

        def on_step(i: int, n: int, loss: float) -> None:
            sampled.append((i, loss, lr_at(i - 1, tcfg)))
            if self.progress is not None:
                self.progress(cycle_id, i, n, loss)
            now = time.perf_counter()
            if i == 1 or i == n or i % max(1, n // 10) == 0 or now - logged[0] >= 10.0:
                logged[0] = now
                log.info("cycle %s: step %s/%s, loss %.3f", cycle_id, i, n, loss)
            if i == 1 or i == n or time.perf_counter() - last[0] >= METRIC_EVERY_S:
                last[0] = time.perf_counter()
                self._write_metrics(cycle_id, sampled[-1:], steps)

        res = train_run(state, heads, tcfg, steps, workers=st.workers, replay=replay_docs,
                        replay_fraction=st.replay_fraction if replay_docs else 0.0,
                        max_new_tokens=st.max_new_tokens, heldout=heldout, seed=st.seed + cycle_id,
                        progress=on_step, stop=self.stop.is_set)
        if res.steps < steps:
            raise CycleInterrupted(f"cycle {cycle_id} stopped after {res.steps}/{steps} steps",
                                   "its documents stay pending for the next cycle")
        first = state.tokenizer.first_occurrence(res.new_token_ids, [d.text for d in heads])
        path, sha = save_state(state, self.data_dir, cycle_id)
        if os.environ.get(FAULT_ENV) == "after-checkpoint":   # crash-window tests only
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            heldout_tokens = {src: len(state.tokenizer.encode(t)) for src, t in heldout.items()}
            forgetting = self._commit(cycle_id, docs, replay, res, path, sha, vocab_before,
                                      first, steps, tcfg, heldout_tokens)
        except BaseException:
            # the checkpoint never got its row: it must not be mistaken for a trained one
            path.unlink(missing_ok=True)
            tokenizer_path(path).unlink(missing_ok=True)
            raise
        log.info("cycle %s completed: %s steps, loss %.3f -> %.3f, %.0f tok/s, checkpoint %s",
                 cycle_id, res.steps, res.loss_start or float("nan"), res.loss_end or float("nan"),
                 res.tokens_per_s, path)
        return CycleReport(cycle_id, trigger, [i for i, _ in docs], [i for i, _ in replay], path,
                           sha, res, vocab_before, len(state.tokenizer), forgetting)

    def _commit(self, cycle_id, docs, replay, res: RunResult, path: Path, sha: str,
                vocab_before: int, first: dict[int, int], steps: int, tcfg: TrainConfig,
                heldout_tokens: dict[str, int]) -> dict[str, float]:
        """The one transaction: cycle completed, checkpoint row (latest), vocabulary delta,
        evaluations with forgetting, documents trained."""
        from store.documents import mark_trained
        from store.queries import (finish_cycle, forgetting_by_source, record_checkpoint,
                                   record_eval, record_vocab, vocab_size)

        st, tok = self.settings, self.state.tokenizer
        new_sources = {d.source for _, d in docs}
        doc_ids = [i for i, _ in docs]
        forgetting: dict[str, float] = {}
        with self.store.session() as s:
            # vocabulary: the byte tokens (no cycle) once, then this cycle's delta; the
            # stored vocabulary is append-only, so what is missing is what lies past its end
            parts = {z: (a, b) for a, b, z in tok.merges}
            new_ids = set(res.new_token_ids)
            entries = []
            for tid in range(vocab_size(s), len(tok)):
                new = tid in new_ids
                a, b = parts.get(tid, (None, None))
                entries.append((new, {"token_id": tid, "token_bytes": tok.token_bytes(tid),
                                      "left_id": a, "right_id": b,
                                      "document_id": doc_ids[first[tid]]
                                      if new and tid in first else None}))
            for new, group in itertools.groupby(entries, key=lambda e: e[0]):
                record_vocab(s, [e for _, e in group], cycle_id=cycle_id if new else None)
            # documents: trained in this cycle (only now, in the same transaction); every one
            # records this cycle, also one trained before (`cllm train` learns it again)
            mark_trained(s, doc_ids, cycle_id, retrain=True,
                         n_tokens={i: len(tok.encode(d.text)) for i, d in docs})
            # evaluations: baseline = loss right after the source was last learned (by this
            # cycle's documents, else carried from the source's latest evaluation)
            for source, loss in sorted(res.val_loss.items()):
                if source in new_sources:
                    base = loss
                else:
                    earlier = forgetting_by_source(s, source=source)
                    base = earlier[-1]["baseline_loss"] if earlier else None
                e = record_eval(s, cycle_id, source, loss, n_tokens=heldout_tokens.get(source),
                                baseline_loss=base, derive_baseline=False)
                if e.forgetting is not None:
                    forgetting[source] = e.forgetting
            # checkpoint row, the new latest
            record_checkpoint(s, path=str(path), sha256=sha, step=self.state.step,
                              vocab_size=len(tok), cycle_id=cycle_id,
                              size_bytes=path.stat().st_size)
            vals = list(res.val_loss.values())
            finish_cycle(
                s, cycle_id, status="completed", docs_new=len(docs), docs_replayed=len(replay),
                tokens=res.tokens, steps=res.steps, skipped_steps=res.skipped,
                loss_start=res.loss_start, loss_end=res.loss_end,
                val_loss=float(np.mean(vals)) if vals else None,
                forgetting_mean=float(np.mean(list(forgetting.values()))) if forgetting else None,
                forgetting_max=max(forgetting.values()) if forgetting else None,
                tokens_per_s=res.tokens_per_s, workers=st.workers,
                vocab_size_before=vocab_before, vocab_size_after=len(tok),
                schedule={"steps": steps, "lr": tcfg.lr, "min_lr": tcfg.min_lr,
                          "warmup_steps": tcfg.warmup_steps, "decay": "cosine",
                          "batch_size": tcfg.batch_size, "replay_fraction": st.replay_fraction,
                          "replay_document_ids": [i for i, _ in replay],
                          "document_ids": doc_ids, "new_token_ids": list(res.new_token_ids),
                          "seconds": round(res.seconds, 3)})
        return forgetting

    # --- helpers -------------------------------------------------------------------------------

    def _state(self) -> State:
        if self.state is None:
            self.load_latest()
        return self.state

    def _replay_sample(self, cycle_id: int, exclude: set[int]) -> list[tuple[int, Doc]]:
        """A seeded sample of trained documents for replay (their text read from the store)."""
        from store.documents import replay_sample

        if self.settings.replay_fraction <= 0:
            return []
        rng = np.random.default_rng(self.settings.seed * 1_000_003 + cycle_id)

        def draw(ids: list[int], k: int) -> list[int]:
            return rng.choice(ids, size=k, replace=False).tolist()

        with self.store.session(read_only=True) as s:
            return [(d.id, Doc(d.uri, d.source, d.text or "")) for d in replay_sample(
                s, self.settings.replay_docs, exclude_ids=sorted(exclude), draw=draw)]

    def _heldout(self, new_by_source: dict[str, list[str]]) -> dict[str, str]:
        """Held-out tails per source: the tails of its earliest trained documents (by id),
        then of this cycle's new ones, up to HELDOUT_CHARS_PER_SOURCE. Earlier documents come
        first so a source's slice stays the same from cycle to cycle once it is full."""
        from store.queries import list_documents

        vf = self.settings.val_fraction
        budget: dict[str, float] = {}
        chosen: list[int] = []
        with self.store.session(read_only=True) as s:
            for d in list_documents(s, status="trained"):
                if budget.get(d.source, 0.0) < HELDOUT_CHARS_PER_SOURCE:
                    budget[d.source] = budget.get(d.source, 0.0) + (d.size_bytes or 0) * vf
                    chosen.append(d.id)
            texts: dict[str, list[str]] = {}
            for d in list_documents(s, ids=chosen, with_text=True):
                texts.setdefault(d.source, []).append(split_text(d.text or "", vf)[1])
        for source, items in new_by_source.items():
            for t in items:
                if sum(map(len, texts.get(source, []))) < HELDOUT_CHARS_PER_SOURCE:
                    texts.setdefault(source, []).append(split_text(t, vf)[1])
        return {src: "\n".join(parts) for src, parts in texts.items() if "".join(parts).strip()}

    def _write_metrics(self, cycle_id: int, rows, steps: int) -> None:
        """Sampled step metrics, and the running cycle's progress (steps done / planned)."""
        from store.queries import get_cycle, record_step_metrics

        try:
            with self.store.session() as s:
                record_step_metrics(s, cycle_id, [
                    {"step": i, "loss": loss if math.isfinite(loss) else None, "lr": lr}
                    for i, loss, lr in rows])
                c = get_cycle(s, cycle_id)   # progress of the running cycle, for `cllm status`
                c.steps = max(i for i, _, _ in rows)
                if c.schedule is None:
                    c.schedule = {"steps": steps}
        except Exception as e:  # metrics are for watching; never fail a cycle over them
            log.warning("could not record step metrics of cycle %s: %s", cycle_id, e)

    def _refuse(self, docs, reason: str) -> None:
        from store.documents import mark_failed

        with self.store.session() as s:
            mark_failed(s, [i for i, _ in docs], reason)
        log.warning("%s documents not trained: %s", len(docs), reason)

    def _fail(self, cycle_id: int, e: BaseException) -> None:
        from store.queries import finish_cycle

        status = "interrupted" if isinstance(e, (CycleInterrupted, KeyboardInterrupt)) else "failed"
        try:
            with self.store.session() as s:
                finish_cycle(s, cycle_id, status=status,
                             error=(e.one_line() if isinstance(e, (CllmError, StoreError))
                                    else repr(e))[:2000])
        except Exception as e2:
            log.error("could not record the end of cycle %s: %s", cycle_id, e2)
        if status == "failed":
            log.error("cycle %s failed: %r; its documents stay pending", cycle_id, e)
        else:
            log.warning("cycle %s interrupted; its documents stay pending", cycle_id)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def record_documents(store, docs: Sequence[Doc]) -> list[tuple[int, Doc]]:
    """Store `docs` (deduplicated by content) and return them with their ids, for a one-shot
    cycle such as `cllm train`: a document seen before keeps its row and is trained again."""
    from store.documents import add_documents

    out: dict[int, Doc] = {}
    with store.session() as s:
        rows = add_documents(s, [{"uri": d.uri, "source": d.source, "text": d.text} for d in docs])
        s.flush()
        for (row, _), d in zip(rows, docs):
            out.setdefault(row.id, d)
    return list(out.items())
