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


def consolidation_rule(store, st: TrainerSettings) -> tuple[bool, str]:
    """(stop consolidating?, why): the rule. The held-out loss (mean over sources, of the
    served weights) of the consolidation cycles since the last cycle that learned new
    text must, within every `patience` of them in a row, come `min_improvement` (a
    fraction) below the best loss before them; once `patience` cycles in a row have not,
    consolidation has converged, until new text arrives. A restore cycle ends it too."""
    recent = _completed(store)
    losses: list[float] = []
    base: Optional[float] = None
    newest = (recent[-1].schedule or {}) if recent else {}
    if newest.get("scope") == RESTORE:
        return True, (f"consolidation converged; serving the weights of cycle "
                      f"{newest.get('restored_cycle')}, its best held-out loss "
                      f"({recent[-1].val_loss:.4f})")
    for c in reversed(recent):          # newest first, back to the last learning cycle
        if (c.schedule or {}).get("scope") != CONSOLIDATE:
            base = c.val_loss
            break
        if c.val_loss is not None:
            losses.append(c.val_loss)
    losses.reverse()
    if len(losses) < st.patience:
        return False, (f"every document has its {st.passes:g} passes; {len(losses)} "
                       f"consolidation cycles so far")
    before = [v for v in [base, *losses[:-st.patience]] if v is not None]
    if not before:
        return False, "no held-out loss to compare with yet"
    best, last = min(before), min(losses[-st.patience:])
    if last < best * (1.0 - st.min_improvement):
        return False, f"held-out loss {last:.4f}, best before {best:.4f}: still improving"
    return True, (f"held-out loss has not improved by {st.min_improvement:.1%} in "
                  f"{st.patience} consolidation cycles (best {best:.4f}, then {last:.4f})")


def best_consolidated(store) -> Optional[tuple[int, float, RecordedCheckpoint]]:
    """(cycle, held-out loss, checkpoint row) of the consolidation run's best weights
    when they are not the latest: the lowest held-out loss among the last learning cycle
    and the consolidation cycles since, whose checkpoint file retention kept and whose
    vocabulary is the latest's (the stored vocabulary only grows). None when the latest
    is the best, or the best is gone."""
    run = []
    for c in reversed(_completed(store)):
        run.append(c)
        if (c.schedule or {}).get("scope") != CONSOLIDATE:
            break
    scored = [c for c in run if c.val_loss is not None]
    if not scored or scored[0] is not run[0]:
        return None
    best = min(scored, key=lambda c: (c.val_loss, -c.id))
    if best is run[0] or best.val_loss >= run[0].val_loss:
        return None
    row = {r.cycle_id: r for r in recorded_checkpoints(store)}.get(best.id)
    if row is None or best.vocab_size_after != run[0].vocab_size_after:
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
