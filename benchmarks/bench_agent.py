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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.commands import REPO_CORPUS, read_docs  # noqa: E402
from agent.continuous_trainer import (ContinuousTrainer, TrainerSettings,  # noqa: E402
                                      open_store, record_documents)


def nats_per_byte(state, texts: list[str]) -> float:
    """Validation loss in nats per byte of held-out text: comparable across cycles even
    though the vocabulary (and so the number of tokens per byte) grows."""
    from engine.data import eval_windows, pack

    stream = pack([state.tokenizer.encode(t) for t in texts], state.tokenizer.eod_id)
    x, y = eval_windows(stream, state.model.config.context)
    total = 0.0
    for i in range(0, len(x), 16):
        total += state.model.loss(x[i:i + 16], y[i:i + 16])[0]
    return total / sum(len(t.encode("utf-8")) for t in texts)


def run(docs, args, replay_fraction: float) -> list[dict]:
    from agent.continuous_trainer import split_text

    sources = sorted({d.source for d in docs})
    settings = TrainerSettings(preset=args.preset, workers=args.workers, steps=args.steps,
                               batch_size=args.batch_size, replay_fraction=replay_fraction,
                               max_new_tokens=args.max_new_tokens, seed=args.seed)
    arrivals = []                                 # (source, documents), in arrival order
    for src in sources:
        mine = [d for d in docs if d.source == src]
        k = max(1, min(args.chunks, len(mine)))
        arrivals += [(src, mine[i::k]) for i in range(k)]
    heldout: dict[str, list[str]] = {}            # tails never trained on, fixed per source
    learned: dict[str, float] = {}                # nats/byte right after a source's last part
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open_store(tmp) as store:
        trainer = ContinuousTrainer(store, Path(tmp), settings)
        trainer.load_latest()
        for src, part in arrivals:
            t0 = time.perf_counter()
            batch = record_documents(store, part)
            t_ingest = time.perf_counter() - t0
            heldout.setdefault(src, []).extend(split_text(d.text, settings.val_fraction)[1]
                                               for d in part)
            t0 = time.perf_counter()
            rep = trainer.run_cycle(batch, "bench")
            wall = time.perf_counter() - t0
            state = trainer._state()
            npb = {s: nats_per_byte(state, t) for s, t in heldout.items()}
            learned[src] = npb[src]
            rows.append({"replay_fraction": replay_fraction, "cycle": rep.cycle_id,
                         "source": src, "documents": len(batch),
                         "replayed": len(rep.replay_ids), "steps": rep.run.steps,
                         "tokens_per_s": round(rep.run.tokens_per_s),
                         "train_s": round(rep.run.seconds, 2), "cycle_s": round(wall, 2),
                         "overhead_s": round(wall - rep.run.seconds, 2),
                         "ingest_s": round(t_ingest, 3),
                         "vocab": f"{rep.vocab_before}->{rep.vocab_after}",
                         "loss_end": round(rep.run.loss_end, 3),
                         "forgetting": {k: round(v, 3) for k, v in rep.forgetting.items()},
                         "val_nats_per_byte": {k: round(v, 4) for k, v in npb.items()},
                         "mean_val_nats_per_byte": round(sum(npb.values()) / len(npb), 4),
                         "forgetting_nats_per_byte": {k: round(npb[k] - learned[k], 4)
                                                      for k in npb}})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=[str(REPO_CORPUS)])
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
    rows = [r for f in fractions for r in run(docs, args, f)]
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
