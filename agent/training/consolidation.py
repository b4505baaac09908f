"""Learning on past the passes: the rule that ends consolidation, the consolidation run's
best weights, and the restore cycle that commits them again (agent/continuous_trainer.py
decides when; this module reads the store and writes the checkpoint)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from agent.settings import TrainerSettings
from agent.training.model_state import (
    ModelState,
    RecordedCheckpoint,
    load_model_state,
    recorded_checkpoints,
    remove_checkpoint_files,
    save_model_state,
)
from store.checkpoints import record_checkpoint
from store.cycles import finish_cycle, list_cycles
from store.models import CycleStatus

CONSOLIDATE = "consolidate"     # the trigger (and scope) of a consolidation cycle
RESTORE = "restore"             # the trigger (and scope) of a return to the best weights
# A sweep reads at most this much of any one document, from where the last stopped
# (store.ledger.consolidation_order). Read whole, a document longer than the sweep's
# bytes over the reader's streams cannot be done before the others: the end of every
# sweep was a few long texts read alone (CPython's stdlib has a 756 KB file in 9.9 MB), and
# the weights that closed a sweep scored worse on held-out files than those in mid-sweep.
SWEEP_SHARE_BYTES = 32 * 1024


def _completed(store) -> list:
    with store.session(read_only=True) as s:
        return list_cycles(s, status=CycleStatus.COMPLETED, limit=200)


def ends_sweep(cycle) -> bool:
    """Whether a consolidation cycle ended its sweep: it read every document of the sweep
    (store.ledger.consolidation_order) to one more pass, not cut by its time or by new text."""
    sched = cycle.schedule or {}
    return sched.get("scope") == CONSOLIDATE and sched.get("ended_by") == "backlog"


def _run(recent: list) -> tuple[Optional[object], list]:
    """(the last cycle that learned new text, or None; the consolidation cycles since that
    ended a sweep, oldest first). Only these are judged: each sweep reads the documents in
    the same order, so the held-out loss after one is comparable with the next, where a
    cycle's in mid-sweep moves with which documents it happened to read (on CPython's
    stdlib it alternated by 4% from cycle to cycle while held-out files improved 1%)."""
    base, ends = None, []
    for c in reversed(recent):                     # newest first
        if (c.schedule or {}).get("scope") != CONSOLIDATE:
            base = c
            break
        if ends_sweep(c) and c.val_loss is not None:
            ends.append(c)
    ends.reverse()
    return base, ends


def trend(losses: list[float]) -> float:
    """The fraction by which a least-squares line through `losses` (one a sweep) falls per
    sweep, relative to their mean (negative: rising)."""
    n = len(losses)
    xm, ym = (n - 1) / 2, sum(losses) / n
    slope = (sum((i - xm) * (v - ym) for i, v in enumerate(losses))
             / sum((i - xm) ** 2 for i in range(n)))
    return -slope / ym


def consolidation_rule(store, st: TrainerSettings) -> tuple[bool, str]:
    """(stop consolidating?, why): the rule. A straight line through the held-out loss (mean
    over sources, of the served weights) at the ends of the last `patience` consolidation
    sweeps since the last cycle that learned new text must fall by `min_improvement` (a
    fraction) a sweep; once it does not, consolidation has converged, until new text
    arrives. A line, not the best so far: once the rate is at its floor a sweep gains less
    than the loss moves between sweeps, and a rule that waits for a new best stops a model
    that is still improving (on CPython's stdlib one such stop came at 26 minutes, the
    sweep ends 2.807, 2.802, 2.791, 2.805, 2.794, 2.792). A restore cycle ends it too."""
    recent = _completed(store)
    newest = (recent[-1].schedule or {}) if recent else {}
    if newest.get("scope") == RESTORE:
        return True, (f"consolidation converged; serving the weights of cycle "
                      f"{newest.get('restored_cycle')}, its best held-out loss "
                      f"({recent[-1].val_loss:.4f})")
    _, ends = _run(recent)
    losses = [c.val_loss for c in ends][-st.patience:]
    if len(losses) < max(2, st.patience):
        return False, (f"every document has its {st.passes:g} passes; {len(ends)} "
                       f"consolidation sweeps so far")
    gain = trend(losses)
    if gain >= st.min_improvement:
        return False, (f"held-out loss falling {gain:.2%} a sweep over the last "
                       f"{len(losses)} sweeps ({losses[0]:.4f} to {losses[-1]:.4f}): "
                       f"still improving")
    moved = f"fell {gain:.2%}" if gain >= 0 else f"rose {-gain:.2%}"
    return True, (f"held-out loss {moved} a sweep over the last {len(losses)} "
                  f"consolidation sweeps ({losses[0]:.4f} to {losses[-1]:.4f}), less than "
                  f"{st.min_improvement:.2%} down")


def best_of_run(store) -> Optional[int]:
    """The cycle whose weights the consolidation run under way judged best (lowest held-out
    loss among its last learning cycle and its sweep ends): retention keeps its checkpoint,
    so a restore can return to it however long the run."""
    base, ends = _run(_completed(store))
    scored = [c for c in [base, *ends] if c is not None and c.val_loss is not None]
    return min(scored, key=lambda c: (c.val_loss, -c.id)).id if scored else None


def best_consolidated(store) -> Optional[tuple[int, float, RecordedCheckpoint]]:
    """(cycle, held-out loss, checkpoint row) of the consolidation run's best weights
    when they are not the latest: the lowest held-out loss among the last learning cycle
    and the consolidation cycles since that ended a sweep, whose checkpoint file retention
    kept and whose vocabulary is the latest's (the stored vocabulary only grows). None
    when the latest cycle did not end a sweep or is the best, or the best is gone."""
    recent = _completed(store)
    base, ends = _run(recent)
    if not recent or not ends or ends[-1].id != recent[-1].id:
        return None
    scored = [c for c in [base, *ends] if c is not None and c.val_loss is not None]
    latest = ends[-1]
    best = min(scored, key=lambda c: (c.val_loss, -c.id))
    if best is latest or best.val_loss >= latest.val_loss:
        return None
    row = {r.cycle_id: r for r in recorded_checkpoints(store)}.get(best.id)
    if row is None or best.vocab_size_after != latest.vocab_size_after:
        return None
    return best.id, best.val_loss, row


def commit_restore(store, lease, data_dir: Path, cycle_id: int,
                   best: tuple[int, float, RecordedCheckpoint], horizon: int
                   ) -> tuple[ModelState, Path, str]:
    """Write the best cycle's state (model, optimizer, EMA, tokenizer) as cycle `cycle_id`'s
    checkpoint and commit it, a cycle of no steps, in one transaction fenced by `lease`;
    the ledger is untouched (what was trained stays counted). Returns (state, path, sha)."""
    best_cycle, best_loss, row = best
    state = load_model_state(row.path, expected_sha256=row.sha256)
    vocab = len(state.tokenizer)
    path, sha = save_model_state(state, data_dir, cycle_id)
    try:
        with store.session() as s:
            if lease is not None:
                lease.fence(s)
            record_checkpoint(s, path=str(path), sha256=sha, step=state.step, vocab_size=vocab,
                              cycle_id=cycle_id, size_bytes=path.stat().st_size)
            finish_cycle(s, cycle_id, status=CycleStatus.COMPLETED, docs_new=0, tokens=0,
                         steps=0, val_loss=best_loss, vocab_size_before=vocab,
                         vocab_size_after=vocab, bytes_new=0, bytes_replay=0,
                         schedule={"scope": RESTORE, "restored_cycle": best_cycle,
                                   "horizon": horizon, "global_step": state.step,
                                   "document_ids": [], "new_token_ids": []})
    except BaseException:
        remove_checkpoint_files(path)
        raise
    return state, path, sha
