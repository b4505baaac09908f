"""Does the crystalline prior help? Train the same model to the same token budget with
crystalline_weight 0 and two non-zero values, and with normal vs lattice embedding init;
report per-source validation loss (plain cross-entropy, lambda excluded) and tokens/s.

    python benchmarks/bench_crystalline.py --preset small --steps 300 --weights 0,0.05,0.2 --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from agent.inputs.corpus import corpus_topics, read_docs  # noqa: E402
from agent.training.learn import PlanDoc, learn, split_validation  # noqa: E402
from agent.training.model_state import new_model_state  # noqa: E402
from engine import TrainConfig  # noqa: E402
from engine.data import evaluate, pack  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=[str(p) for p in corpus_topics()])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weights", default="0,0.05,0.2")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=3000)
    ap.add_argument("--seeds", default="0",
                    help="comma-separated seeds (init and batch order); figures are means")
    ap.add_argument("--json")
    args = ap.parse_args()

    from pathlib import Path
    docs = read_docs([Path(p) for p in args.paths])
    train_docs, heldout = split_validation(docs, 0.05)
    # one shared vocabulary so every run sees identical token streams
    proto = new_model_state(args.preset)
    vocab = Tokenizer.from_json(proto.tokenizer.to_json())
    vocab.learn([d.text for d in train_docs], max_new_tokens=args.max_new_tokens)
    runs = [(float(w), "normal") for w in args.weights.split(",")] + [(0.0, "lattice")]
    seeds = [int(x) for x in args.seeds.split(",")]
    rows = []
    for lam, init in runs:
        vals, tok_s, ends, per = [], [], [], []
        for seed in seeds:
            st = new_model_state(args.preset, seed=seed, init=init)
            st.tokenizer = Tokenizer.from_json(vocab.to_json())
            st.model.grow_vocab(len(st.tokenizer))
            tcfg = TrainConfig(lr=args.lr, min_lr=args.lr / 10, warmup_steps=args.steps // 10,
                               batch_size=args.batch_size, crystalline_weight=lam,
                               schedule="cosine", total_steps=args.steps, ema_decay=None,
                               beta2=0.95)    # the recipe these figures were measured with
            docs_ = [PlanDoc(i, d.source, d.text) for i, d in enumerate(train_docs)]
            res = learn(st, docs_, tcfg, max_steps=args.steps, workers=args.workers,
                        max_new_tokens=0, seed=seed)
            val = {s: evaluate(st.model, pack([st.tokenizer.encode(t)], st.tokenizer.eod_id))
                   for s, t in heldout.items()}
            vals.append(float(np.mean([v for v in val.values() if v is not None])))
            tok_s.append(res.tokens_per_s)
            ends.append(res.loss_end)
            per.append(val)
            print(f"lambda {lam:<5} init {init:<8} seed {seed} val {vals[-1]:.4f}  train-end "
                  f"{res.loss_end:.4f}  {res.tokens_per_s:8.0f} tok/s", flush=True)
        rows.append({"crystalline_weight": lam, "init": init, "seeds": seeds,
                     "val_loss": float(np.mean(vals)), "val_loss_by_seed": vals,
                     "val_loss_spread": float(np.max(vals) - np.min(vals)),
                     "val_loss_sem": float(np.std(vals, ddof=1) / np.sqrt(len(vals)))
                     if len(vals) > 1 else None,
                     "per_source": per, "train_loss_end": float(np.mean(ends)),
                     "tok_s": float(np.mean(tok_s)), "tokens": res.tokens})
    base = rows[0]
    print(f"\npreset {args.preset}, {args.steps} steps x {args.batch_size} sequences, vocab "
          f"{len(vocab)}; validation = plain cross-entropy on held-out tails per source")
    for r in rows:
        print(f"  lambda {r['crystalline_weight']:<5} {r['init']:<8} val {r['val_loss']:.4f} "
              f"({r['val_loss'] - base['val_loss']:+.4f}; seed spread "
              f"{r['val_loss_spread']:.4f}, s.e.m. {r['val_loss_sem'] or float('nan'):.4f})  speed "
              f"{r['tok_s'] / base['tok_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
