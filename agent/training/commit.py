"""A cycle's one store transaction: the cycle completed, its checkpoint row (the new latest),
the vocabulary delta, the evaluations with forgetting, and the ledger (what it trained of each
document), all or nothing, fenced by the trainer lease. Nothing a cycle trained counts before
this commits, so a crash loses at most the cycle in progress (agent/continuous_trainer.py).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from agent.settings import TrainerSettings
from agent.training.learn import LearnResult
from agent.training.model_state import ModelState
from engine import TrainConfig
from store.checkpoints import record_checkpoint
from store.cycles import finish_cycle, forgetting_by_source, record_eval
from store.ledger import record_cycle_credits
from store.models import CycleStatus
from store.vocab import record_vocab, vocab_size


def commit_cycle(store, lease, settings: TrainerSettings, state: ModelState, cycle_id: int,
                 docs, replay, res: LearnResult, path: Path, sha: str, vocab_before: int,
                 first: dict[int, int], planned: int, tcfg: TrainConfig,
                 heldout_tokens: dict[str, int], scope: str, scope_ids: set[int],
                 horizon: int) -> tuple[dict[str, float], dict]:
    """The one transaction: cycle completed, checkpoint row (latest), vocabulary delta,
    evaluations with forgetting, and the ledger (what it trained of each document)."""
    st, tok = settings, state.tokenizer
    trained_ids = set(res.new_bytes)
    new_sources = {d.source for d in docs if d.id in trained_ids}
    forgetting: dict[str, float] = {}
    credits = {i: (res.new_bytes.get(i, 0), res.replay_bytes.get(i, 0))
               for i in set(res.new_bytes) | set(res.replay_bytes)}
    with store.session() as s:
        if lease is not None:
            lease.fence(s)
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
                                  "document_id": first.get(tid) if new else None}))
        for new, group in itertools.groupby(entries, key=lambda e: e[0]):
            record_vocab(s, [e for _, e in group], cycle_id=cycle_id if new else None)
        # the ledger: what this cycle trained of each document (only now, in the same
        # transaction: a crash before this line counts nothing)
        credited = record_cycle_credits(s, cycle_id, credits, res.trainable_bytes,
                                        st.passes)
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
        record_checkpoint(s, path=str(path), sha256=sha, step=state.step,
                          vocab_size=len(tok), cycle_id=cycle_id,
                          size_bytes=path.stat().st_size)
        vals = list(res.val_loss.values())
        finish_cycle(
            s, cycle_id, status=CycleStatus.COMPLETED, docs_new=len(trained_ids),
            docs_replayed=len(replay), tokens=res.tokens, steps=res.steps,
            skipped_steps=res.skipped, loss_start=res.loss_start, loss_end=res.loss_end,
            val_loss=float(np.mean(vals)) if vals else None,
            forgetting_mean=float(np.mean(list(forgetting.values()))) if forgetting else None,
            forgetting_max=max(forgetting.values()) if forgetting else None,
            tokens_per_s=res.tokens_per_s, workers=st.workers,
            vocab_size_before=vocab_before, vocab_size_after=len(tok),
            bytes_new=credited["bytes_new"], bytes_replay=credited["bytes_replay"],
            schedule={"steps": planned, "lr": tcfg.lr, "min_lr": tcfg.min_lr,
                      "warmup_steps": tcfg.warmup_steps, "decay": tcfg.schedule,
                      "decay_steps": tcfg.decay_steps,
                      "ema_decay": tcfg.ema_decay, "global_step": state.step,
                      "batch_size": tcfg.batch_size, "replay_fraction": st.replay_fraction,
                      "ended_by": res.ended_by, "passes": st.passes, "scope": scope,
                      "horizon": horizon,
                      "scope_ids": sorted(scope_ids) if scope == "new" else [],
                      "replay_document_ids": [d.id for d in replay],
                      "document_ids": sorted(trained_ids),
                      "new_token_ids": list(res.new_token_ids),
                      "seconds": round(res.seconds, 3)})
    return forgetting, credited
