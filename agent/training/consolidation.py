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


def consolidation_rule(store, st: TrainerSettings) -> tuple[bool, str]:
    """(stop consolidating?, why): the rule. The held-out loss (mean over sources, of the
    served weights) at the end of each consolidation sweep since the last cycle that
    learned new text must, within every `patience` sweeps in a row, come `min_improvement`
    (a fraction) below the best before them (that learning cycle's included); once
    `patience` sweeps in a row have not, consolidation has converged, until new text
    arrives. A restore cycle ends it too."""
    recent = _completed(store)
    newest = (recent[-1].schedule or {}) if recent else {}
    if newest.get("scope") == RESTORE:
        return True, (f"consolidation converged; serving the weights of cycle "
                      f"{newest.get('restored_cycle')}, its best held-out loss "
                      f"({recent[-1].val_loss:.4f})")
    base, ends = _run(recent)
    losses = [c.val_loss for c in ends]
    if len(losses) < st.patience:
        return False, (f"every document has its {st.passes:g} passes; {len(losses)} "
                       f"consolidation sweeps so far")
    before = [v for v in [base.val_loss if base is not None else None,
                          *losses[:-st.patience]] if v is not None]
    if not before:
        return False, "no held-out loss to compare with yet"
    best, last = min(before), min(losses[-st.patience:])
    if last < best * (1.0 - st.min_improvement):
        return False, f"held-out loss {last:.4f}, best before {best:.4f}: still improving"
    return True, (f"held-out loss has not improved by {st.min_improvement:.1%} in "
                  f"{st.patience} consolidation sweeps (best {best:.4f}, then {last:.4f})")


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
