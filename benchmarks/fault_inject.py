"""Run `cllm` with a SIGKILL armed at a named moment (used by benchmarks/fault_campaign.py).

    python benchmarks/fault_inject.py MOMENT NTH -- agent --data-dir D ...

kills this process with SIGKILL the NTH time MOMENT is reached (nothing is cleaned up, as
with a real `kill -9` or a power cut). The hooks wrap library functions from the outside;
the product has no fault switches of its own. Moments:

  ingest           inside the transaction that records a document, before its commit
  step             after a training step returned, before the next one
  checkpoint-temp  the checkpoint's temp file written and fsynced, before its rename
  tokenizer-temp   the tokenizer's temp file written, before its rename
  renamed          a checkpoint renamed into place, before the store's commit
  in-commit        inside the cycle's commit transaction (ledger credited, not committed)
  after-commit     the cycle committed, before checkpoint retention runs
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOMENTS = ("ingest", "step", "checkpoint-temp", "tokenizer-temp", "renamed", "in-commit",
           "after-commit")


def _die() -> None:
    sys.stderr.write("fault_inject: SIGKILL now\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(moment: str, nth: int) -> None:
    seen = [0]

    def reached() -> None:
        seen[0] += 1
        if seen[0] == nth:
            _die()

    def after(owner, attr: str) -> None:
        """owner.attr calls the real one, then counts the moment (SIGKILL the nth time)."""
        real = getattr(owner, attr)

        def wrapped(*a, **kw):
            out = real(*a, **kw)
            reached()
            return out
        setattr(owner, attr, wrapped)

    if moment == "ingest":
        from store import documents
        after(documents, "record_text")
    elif moment == "step":
        from engine.spheres import ThreadedTrainingSystem
        after(ThreadedTrainingSystem, "train_step")
    elif moment in ("checkpoint-temp", "tokenizer-temp", "renamed"):
        real_replace = os.replace
        suffix = ".tokenizer.json" if moment == "tokenizer-temp" else ".safetensors"

        def replace(src, dst, *a, **kw):
            if not str(dst).endswith(suffix):
                return real_replace(src, dst, *a, **kw)
            if moment == "renamed":
                real_replace(src, dst, *a, **kw)
            reached()
            if moment != "renamed":
                return real_replace(src, dst, *a, **kw)
        os.replace = replace
    elif moment == "in-commit":
        from store import ledger
        after(ledger, "record_cycle_credits")
    elif moment == "after-commit":
        from agent.continuous_trainer import ContinuousTrainer

        real_prune = ContinuousTrainer.prune_checkpoints

        def prune_checkpoints(self):
            reached()
            return real_prune(self)
        ContinuousTrainer.prune_checkpoints = prune_checkpoints
    else:
        raise SystemExit(f"unknown moment {moment!r}; one of {', '.join(MOMENTS)}")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit(__doc__)
    sys.path.insert(0, str(ROOT))
    arm(argv[0], int(argv[1]))
    from agent.cli import main as cllm

    cllm(argv[3:], prog_name="cllm")


if __name__ == "__main__":
    main(sys.argv[1:])
