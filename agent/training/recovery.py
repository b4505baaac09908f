"""Start-up recovery and checkpoint retention: the files of a data directory made to agree
with the store.

`recover` runs before the first cycle (under the data-directory lock, so no writer is
running): cycles left running are marked interrupted, and files no committed cycle owns are
deleted (a checkpoint whose cycle never committed, a tokenizer file without its checkpoint,
temp files of killed writes, files retention marked but did not delete yet, a live
snapshot the last run left: agent/training/snapshot.py). `prune_checkpoints`
runs after each commit: the latest K checkpoints plus one per hour stay; the others are
marked pruned in the store first and then deleted.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from agent.training.model_state import (CKPT_RE, TOKENIZER_RE, checkpoint_dir,
                                        remove_checkpoint_files, remove_live_snapshot,
                                        tokenizer_path)
from engine.atomic import is_temp_file
from store.checkpoints import list_checkpoints
from store.cycles import interrupt_running_cycles, list_cycles
from store.ledger import checkpoints_to_prune, mark_pruned
from store.models import CycleStatus

log = logging.getLogger("agent.continuous_trainer")


def recover(store, data_dir: Path) -> list[Path]:
    """Mark cycles left running as interrupted; delete checkpoint and tokenizer files no
    row names (written by a cycle that never committed), files retention already marked
    pruned, temporary files of writes that were killed, and a live snapshot the last run
    left (never a resume point). Returns the deleted files."""
    with store.session() as s:
        for c in list_cycles(s, status=CycleStatus.RUNNING):
            log.warning("cycle %s was interrupted; nothing it trained was counted", c.id)
        interrupt_running_cycles(
            s, "the agent stopped during this cycle; nothing it trained was counted",
            keep_error=True)
        rows = list_checkpoints(s)
        known = {str(Path(c.path).resolve()) for c in rows if c.pruned is None}
        pruned = [Path(c.path) for c in rows if c.pruned is not None]
        unfinished = {c.id for c in list_cycles(s) if c.status != CycleStatus.COMPLETED}
    removed = []
    for f in remove_live_snapshot(data_dir):
        log.warning("removing %s: a live snapshot the last run left (never a resume point)", f)
        removed.append(f)
    for p in pruned:            # retention marked them, a crash came before the delete
        for f in remove_checkpoint_files(p):
            log.warning("removing %s: pruned by the retention rule", f)
            removed.append(f)
    d = checkpoint_dir(data_dir)
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        if is_temp_file(p.name):
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


def prune_checkpoints(store, keep: int, protect_cycles: Iterable[int] = ()) -> list[Path]:
    """Keep the latest `keep` checkpoint files plus one per hour of checkpoints, and those of
    `protect_cycles`; mark the others pruned in the store, then delete them (a crash in
    between leaves files that `recover` removes). Returns the deleted files."""
    with store.session() as s:
        gone = [(c.id, Path(c.path)) for c in checkpoints_to_prune(
            s, keep, protect_cycles=protect_cycles)]
        if gone:
            mark_pruned(s, [i for i, _ in gone])
    removed = [f for _, p in gone for f in remove_checkpoint_files(p)]
    if gone:
        log.info("pruned %s old checkpoints (keeping the latest %s and one per hour)",
                 len(gone), keep)
    return removed
