"""Continuous-trainer cycles on the sample corpus: where a cycle's time goes (training vs the
rest: vocabulary learning, replay and held-out loading, evaluation, checkpoint, the store
transaction), tokens/s, and forgetting per source as sources arrive one cycle at a time.

    python benchmarks/bench_agent.py --preset small --steps 100 --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.commands import REPO_CORPUS, read_docs  # noqa: E402
from agent.continuous_trainer import (ContinuousTrainer, TrainerSettings,  # noqa: E402
                                      open_store, record_documents)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=[str(REPO_CORPUS)])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=100, help="steps per cycle")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--replay-fraction", type=float, default=0.25)
    ap.add_argument("--max-new-tokens", type=int, default=500)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    docs = read_docs([Path(p) for p in args.paths])
    sources = sorted({d.source for d in docs})
    settings = TrainerSettings(preset=args.preset, workers=args.workers, steps=args.steps,
                               batch_size=args.batch_size, replay_fraction=args.replay_fraction,
                               max_new_tokens=args.max_new_tokens)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open_store(tmp) as store:
        trainer = ContinuousTrainer(store, Path(tmp), settings)
        trainer.load_latest()
        for src in sources:                      # one source arrives per cycle
            t0 = time.perf_counter()
            batch = record_documents(store, [d for d in docs if d.source == src])
            t_ingest = time.perf_counter() - t0
            t0 = time.perf_counter()
            rep = trainer.run_cycle(batch, "bench")
            wall = time.perf_counter() - t0
            rows.append({"cycle": rep.cycle_id, "source": src, "documents": len(batch),
                         "replayed": len(rep.replay_ids), "steps": rep.run.steps,
                         "tokens_per_s": round(rep.run.tokens_per_s),
                         "train_s": round(rep.run.seconds, 2), "cycle_s": round(wall, 2),
                         "overhead_s": round(wall - rep.run.seconds, 2),
                         "ingest_s": round(t_ingest, 3),
                         "vocab": f"{rep.vocab_before}->{rep.vocab_after}",
                         "loss_end": round(rep.run.loss_end, 3),
                         "forgetting": {k: round(v, 3) for k, v in rep.forgetting.items()}})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
