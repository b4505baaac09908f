"""Training cycles as the store records them: a cycle's row from start to finish (or
interruption), its step metrics, its per-source evaluations and forgetting, and undoing
completed cycles when the model is resumed from an earlier checkpoint.

Every function takes a Session and neither commits nor opens one (the caller owns the
transaction). Rows are ORM objects of that session; aggregates are plain dicts. Lists come
oldest first unless a function says otherwise.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from .ledger import undo_cycle_credits
from .models import (CYCLE_STATUSES, Checkpoint, Cycle, Document, EvalResult, StepMetric,
                     VocabEntry, get_row, utcnow)


CYCLE_FIGURES = frozenset({
    "docs_new", "docs_replayed", "tokens", "steps", "schedule", "loss_start", "loss_end",
    "val_loss", "forgetting_mean", "forgetting_max", "tokens_per_s", "workers",
    "vocab_size_before", "vocab_size_after", "skipped_steps", "bytes_new", "bytes_replay",
    "error"})


def start_cycle(session: Session, *, trigger: str, workers: Optional[int] = None,
                schedule: Optional[Mapping[str, Any]] = None,
                vocab_size_before: Optional[int] = None, docs_new: int = 0) -> Cycle:
    """A new cycle in status "running" (flushed, so `.id` is set); `docs_new`: the new
    documents it is about to train on."""
    cycle = Cycle(trigger=trigger, status="running", workers=workers,
                  schedule=dict(schedule) if schedule is not None else None,
                  vocab_size_before=vocab_size_before, docs_new=docs_new)
    session.add(cycle)
    session.flush()
    return cycle


def finish_cycle(session: Session, cycle_id: int, *, status: str = "completed",
                 **figures: Any) -> Cycle:
    """Close a cycle with its figures (any of CYCLE_FIGURES) and the finish time.

    val_loss, forgetting_mean and forgetting_max not passed are derived from the cycle's
    evaluations (val_loss weighted by each source's tokens when all are known).
    """
    if status not in CYCLE_STATUSES or status == "running":
        raise ValueError(f"status must be one of {CYCLE_STATUSES[1:]}, not {status!r}")
    unknown = set(figures) - CYCLE_FIGURES
    if unknown:
        raise TypeError(f"unknown cycle figures: {', '.join(sorted(unknown))}")
    cycle = get_row(session, Cycle, cycle_id)
    evals = session.scalars(select(EvalResult).where(EvalResult.cycle_id == cycle_id)).all()
    if evals and "val_loss" not in figures:
        weights = [e.n_tokens for e in evals]
        if all(weights):
            figures["val_loss"] = sum(e.val_loss * w for e, w in zip(evals, weights)) / sum(weights)
        else:
            figures["val_loss"] = sum(e.val_loss for e in evals) / len(evals)
    forgetting = [e.forgetting for e in evals if e.forgetting is not None]
    if forgetting:
        figures.setdefault("forgetting_mean", sum(forgetting) / len(forgetting))
        figures.setdefault("forgetting_max", max(forgetting))
    for name, value in figures.items():
        setattr(cycle, name, value)
    cycle.status = status
    cycle.finished = utcnow()
    session.flush()
    return cycle


def interrupt_running_cycles(session: Session, reason: str = "the agent stopped", *,
                             keep_error: bool = False) -> int:
    """Mark cycles still "running" (left by a crash or kill) as interrupted; returns how many.
    Call once at agent start, when no cycle of this data directory can be running.
    `reason` becomes their error; with keep_error, only of those that have none yet."""
    error = func.coalesce(Cycle.error, reason) if keep_error else reason
    return session.execute(
        update(Cycle).where(Cycle.status == "running")
        .values(status="interrupted", error=error, finished=utcnow())
        .execution_options(synchronize_session="fetch")).rowcount


def get_cycle(session: Session, cycle_id: int) -> Optional[Cycle]:
    return session.get(Cycle, cycle_id)


def list_cycles(session: Session, *, status: Optional[str] = None,
                limit: Optional[int] = None) -> list[Cycle]:
    """Cycles oldest first; with `limit`, the most recent `limit` of them."""
    q = select(Cycle).order_by(Cycle.id.desc())
    if status is not None:
        q = q.where(Cycle.status == status)
    if limit is not None:
        q = q.limit(limit)
    return list(reversed(session.scalars(q).all()))


def count_cycles(session: Session, *, status: Optional[str] = None) -> int:
    """How many cycles (with this status): a count, without loading the rows."""
    q = select(func.count(Cycle.id))
    if status is not None:
        q = q.where(Cycle.status == status)
    return session.scalar(q)


def record_step_metrics(session: Session, cycle_id: int,
                        metrics: Iterable[Mapping[str, Any]]) -> int:
    """Append sampled steps: mappings with "step" and any of loss, lr, grad_norm,
    tokens_per_s. Returns how many rows were added."""
    allowed = {"step", "loss", "lr", "grad_norm", "tokens_per_s"}
    rows = []
    for m in metrics:
        extra = set(m) - allowed
        if extra:
            raise TypeError(f"unknown step metric fields: {', '.join(sorted(extra))}")
        rows.append(StepMetric(cycle_id=cycle_id, **m))
    session.add_all(rows)
    session.flush()
    return len(rows)


def step_metrics(session: Session, cycle_id: int) -> list[StepMetric]:
    return list(session.scalars(select(StepMetric).where(StepMetric.cycle_id == cycle_id)
                                .order_by(StepMetric.step)))


def list_step_metrics(session: Session, *, cycle_id: Optional[int] = None,
                      limit: Optional[int] = None, offset: int = 0) -> list[StepMetric]:
    """Sampled steps of every cycle (or of one), cycle by cycle, each in step order; a page
    of them with `limit` and `offset`."""
    q = select(StepMetric).order_by(StepMetric.cycle_id, StepMetric.step, StepMetric.id)
    if cycle_id is not None:
        q = q.where(StepMetric.cycle_id == cycle_id)
    if limit is not None:
        q = q.limit(limit)
    if offset:
        q = q.offset(offset)
    return list(session.scalars(q))


def count_step_metrics(session: Session, *, cycle_id: Optional[int] = None) -> int:
    """How many sampled steps are recorded (of one cycle): counted in SQL."""
    q = select(func.count(StepMetric.id))
    if cycle_id is not None:
        q = q.where(StepMetric.cycle_id == cycle_id)
    return session.scalar(q)


def latest_step_metric(session: Session, cycle_id: int) -> Optional[StepMetric]:
    """The cycle's most recent sampled step (a running cycle's progress)."""
    return session.scalars(select(StepMetric).where(StepMetric.cycle_id == cycle_id)
                           .order_by(StepMetric.step.desc()).limit(1)).first()


def record_eval(session: Session, cycle_id: int, source: str, val_loss: float, *,
                n_tokens: Optional[int] = None, baseline_loss: Optional[float] = None,
                derive_baseline: bool = True) -> EvalResult:
    """Validation loss of one source after a cycle, with its forgetting.

    Forgetting = val_loss - baseline_loss, where the baseline is the loss right after the
    source was last learned: this cycle's own loss if this cycle trained documents of that
    source (forgetting 0), else that of the latest earlier cycle that did. Call it after
    mark_trained in the same transaction. Without any such cycle, forgetting is None.
    A baseline_loss passed is used as it is; with derive_baseline=False, so is None (no
    baseline, forgetting None): for a caller that decides the baseline by its own rule.
    """
    if baseline_loss is None and derive_baseline:
        learned = session.scalar(select(func.max(Document.cycle_id)).where(
            Document.source == source, Document.cycle_id <= cycle_id))
        if learned == cycle_id:
            baseline_loss = val_loss
        elif learned is not None:
            baseline_loss = session.scalar(select(EvalResult.val_loss).where(
                EvalResult.cycle_id == learned, EvalResult.source == source))
    result = EvalResult(cycle_id=cycle_id, source=source, val_loss=val_loss, n_tokens=n_tokens,
                        baseline_loss=baseline_loss,
                        forgetting=None if baseline_loss is None else val_loss - baseline_loss)
    session.add(result)
    session.flush()
    return result


def forgetting_by_source(session: Session, *, cycle_id: Optional[int] = None,
                         source: Optional[str] = None, by_cycle: bool = False) -> list[dict]:
    """One dict per (source, cycle) evaluation, ordered by source then cycle (by_cycle: by
    cycle then source): cycle_id, source, val_loss, baseline_loss, forgetting, n_tokens."""
    q = select(EvalResult).order_by(
        *((EvalResult.cycle_id, EvalResult.source) if by_cycle
          else (EvalResult.source, EvalResult.cycle_id)))
    if cycle_id is not None:
        q = q.where(EvalResult.cycle_id == cycle_id)
    if source is not None:
        q = q.where(EvalResult.source == source)
    return [{"cycle_id": e.cycle_id, "source": e.source, "val_loss": e.val_loss,
             "baseline_loss": e.baseline_loss, "forgetting": e.forgetting,
             "n_tokens": e.n_tokens} for e in session.scalars(q)]


def roll_back_cycles_after(session: Session, cycle_id: Optional[int], reason: str) -> dict:
    """Undo, in the store, every completed cycle after `cycle_id` (all of them for None): the
    model was resumed from that cycle's checkpoint, so their training is lost. Their
    documents return to pending (they will be trained again), the vocabulary they added is
    removed (the resumed tokenizer does not have it, and the ids will be learned anew), and
    the cycles are marked failed with `reason`. What they trained leaves the ledger: their
    documents count those bytes no more and are pending or learning again. Returns what
    was changed."""
    q = select(Cycle.id).where(Cycle.status == "completed")
    if cycle_id is not None:
        q = q.where(Cycle.id > cycle_id)
    ids = list(session.scalars(q))
    if not ids:
        return {"cycles": [], "documents": 0, "vocab": 0}
    docs = undo_cycle_credits(session, ids)
    # rows trained before the ledger recorded per-cycle shares
    docs += session.execute(update(Document).where(Document.cycle_id.in_(ids),
                                                   Document.status.in_(("trained", "learning")))
                            .values(status="pending", cycle_id=None, reason=None,
                                    trained_bytes=0)
                            .execution_options(synchronize_session=False)).rowcount
    vocab = session.execute(delete(VocabEntry).where(VocabEntry.cycle_id.in_(ids))
                            .execution_options(synchronize_session=False)).rowcount
    session.execute(update(Cycle).where(Cycle.id.in_(ids))
                    .values(status="failed", error=reason)
                    .execution_options(synchronize_session=False))
    session.execute(update(Checkpoint).where(Checkpoint.cycle_id.in_(ids))
                    .values(is_latest=False).execution_options(synchronize_session=False))
    session.expire_all()
    return {"cycles": ids, "documents": docs, "vocab": vocab}
