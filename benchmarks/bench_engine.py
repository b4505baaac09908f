"""Engine speed against PyTorch eager, interleaved in one run.

Measures (a) forward+backward tokens/s of a preset at batch B on one thread each, (b) batch-1
generation tokens/s with the KV cache on one thread each and on all cores each (what a user
gets by default from either), and prints the ratios ours / PyTorch. Also checks that both
sides compute the same loss and the same greedy tokens, so the comparison is of the same math.

    python benchmarks/bench_engine.py --preset base --batch 8 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="fwd+bwd passes per timed round")
    ap.add_argument("--gen-tokens", type=int, default=100)
    args = ap.parse_args()

    threadpool_limits(1)
    cfg = engine.preset(args.preset)
    model = engine.Model(cfg, seed=0)
    rng = np.random.default_rng(0)
    B, T = args.batch, cfg.context
    x = rng.integers(0, cfg.vocab_size, (B, T))
    y = rng.integers(0, cfg.vocab_size, (B, T))

    try:
        import torch
        from torch_peer import TorchGPT, as_tensor
        torch.set_num_threads(1)
        peer = TorchGPT(model)
        tx, ty = as_tensor(x), as_tensor(y)
    except ImportError:
        peer = None
        print("PyTorch not installed: measuring the engine alone "
              "(pip install torch==2.13.0 for the comparison)")

    def ours_fb():
        model.loss_and_grad(x, y)

    def torch_fb():
        peer.zero_grad(set_to_none=True)
        peer(tx, ty).backward()

    # same math check
    ours_loss, _ = model.loss_and_grad(x, y)
    if peer is not None:
        tl = float(peer(tx, ty))
        print(f"loss: ours {ours_loss:.6f}  torch {tl:.6f}  (|diff| {abs(ours_loss - tl):.2e})")

    def timed(fn, n):
        fn()  # warm
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    ours_t, torch_t = [], []
    for r in range(args.rounds):
        ours_t.append(timed(ours_fb, args.steps))
        if peer is not None:
            torch_t.append(timed(torch_fb, args.steps))
    ntok = B * T
    o = ntok / np.median(ours_t)
    print(f"\nforward+backward, preset {args.preset}, batch {B}x{T}, 1 thread, "
          f"median of {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"  ours   {o:10.0f} tok/s")
    if peer is not None:
        p = ntok / np.median(torch_t)
        print(f"  torch  {p:10.0f} tok/s")
        print(f"  ratio ours/torch = {o / p:.2f}")

    # generation, batch 1, greedy, KV cache; one thread each, then all cores each
    prompt = list(rng.integers(0, cfg.vocab_size, 8))
    n = min(args.gen_tokens, cfg.context - len(prompt))
    for threads in sorted({1, os.cpu_count() or 1}):
        threadpool_limits(threads)
        if peer is not None:
            torch.set_num_threads(threads)
        og, tg = [], []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            a = model.generate(prompt, n, temperature=0)
            og.append(n / (time.perf_counter() - t0))
            if peer is not None:
                t0 = time.perf_counter()
                b = peer.decode(prompt, n)
                tg.append(n / (time.perf_counter() - t0))
        print(f"\ngeneration, batch 1, {n} tokens after an {len(prompt)}-token prompt, KV cache, "
              f"{threads} thread{'s' if threads > 1 else ''} each")
        print(f"  ours   {np.median(og):10.0f} tok/s")
        if peer is not None:
            agree = int(np.sum(np.asarray(a) == np.asarray(b)))
            print(f"  torch  {np.median(tg):10.0f} tok/s   (greedy tokens agreeing: {agree}/{n})")
            print(f"  ratio ours/torch = {np.median(og) / np.median(tg):.2f}")

if __name__ == "__main__":
    main()
