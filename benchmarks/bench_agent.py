"""Continuous-trainer cycles on the sample corpus: where a cycle's time goes (training vs the
rest: vocabulary learning, replay and held-out loading, evaluation, checkpoint, the store
transaction), tokens/s, and forgetting per source as sources arrive one cycle at a time.

    python benchmarks/bench_agent.py --preset small --steps 100 --workers 1
    python benchmarks/bench_agent.py --preset small --steps 150 --chunks 2 --compare-replay
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.benchmark import continual_run  # noqa: E402
from agent.inputs.corpus import corpus_topics, read_docs  # noqa: E402
from agent.continuous_trainer import TrainerSettings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=[str(p) for p in corpus_topics()])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=100, help="steps per cycle")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--replay-fraction", type=float, default=0.25)
    ap.add_argument("--compare-replay", action="store_true",
                    help="run again with replay off and compare forgetting")
    ap.add_argument("--chunks", type=int, default=1,
                    help="each source arrives in this many parts (one cycle each)")
    ap.add_argument("--max-new-tokens", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    docs = read_docs([Path(p) for p in args.paths])
    fractions = [args.replay_fraction] + ([0.0] if args.compare_replay else [])
    rows = []
    for f in fractions:
        settings = TrainerSettings(preset=args.preset, workers=args.workers, max_steps=args.steps,
                                   batch_size=args.batch_size, replay_fraction=f,
                                   max_new_tokens=args.max_new_tokens, seed=args.seed)
        for row in continual_run(docs, settings, args.chunks):
            print(json.dumps(row), flush=True)
            rows.append(row)
    first = rows[0]["source"]
    print(f"\nvalidation loss (nats/byte on never-trained tails, mean over sources seen) and "
          f"forgetting of the first source ({first}) per cycle")
    for f in fractions:
        mine = [r for r in rows if r["replay_fraction"] == f]
        print(f"  replay {f:.2f}: val " + " ".join(f"{r['mean_val_nats_per_byte']:.3f}"
                                                   for r in mine)
              + f" | forgetting[{first}] " + " ".join(
                  f"{r['forgetting_nats_per_byte'][first]:+.3f}" for r in mine)
              + f" | {sum(r['tokens_per_s'] for r in mine) / len(mine):.0f} tok/s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
