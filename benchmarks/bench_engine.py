"""Engine speed against PyTorch eager, interleaved in one run, on the CPU it names.

Measures, ours / PyTorch, each on one thread unless said:
(a) forward+backward tokens/s of a preset at batch B;
(b) batch-1 greedy decoding with a KV cache, for each of --decode-presets: ours with int8
    and with float32 decode weights against PyTorch's eager KV-cache loop, on one thread
    and on all cores each (what a user gets by default from either);
(c) batched decoding of --batches sequences at once (ours int8 against PyTorch's batched
    eager loop), tokens/s summed over the batch.
It checks that both sides compute the same loss and the same greedy tokens (float32; int8
against float32 is reported), so the comparison is of the same math, and prints the CPU
model and instruction sets first (engine/cpu.py). There is no bf16 path in the engine: the
bf16 line says what this CPU has.

    python benchmarks/bench_engine.py --preset base --batch 8 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

import engine  # noqa: E402
from engine.cpu import describe  # noqa: E402


def median_rate(fn, work: int, rounds: int) -> float:
    return float(np.median([work / _seconds(fn) for _ in range(rounds)]))


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def header(torch) -> None:
    cpu = describe()
    print(cpu.line())
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"numpy {np.__version__} BLAS: {', '.join(blas) or 'unknown'}; PyTorch "
          f"{torch.__version__ if torch else 'not installed'}")
    print(f"bf16: {'the CPU has it (AVX512-BF16/AMX)' if cpu.has_bf16 else 'not on this CPU'}"
          "; the engine has no bf16 path, float32 throughout")


def fwd_bwd(args, torch) -> None:
    cfg = engine.preset(args.preset)
    model = engine.Model(cfg, seed=0)
    rng = np.random.default_rng(0)
    B, T = args.batch, cfg.context
    x = rng.integers(0, cfg.vocab_size, (B, T))
    y = rng.integers(0, cfg.vocab_size, (B, T))
    ours_loss, _ = model.loss_and_grad(x, y)
    steps = args.steps

    def ours():
        for _ in range(steps):
            model.loss_and_grad(x, y)
    if torch is not None:
        from torch_peer import TorchGPT, as_tensor
        peer = TorchGPT(model)
        tx, ty = as_tensor(x), as_tensor(y)
        print(f"loss: ours {ours_loss:.6f}  torch {float(peer(tx, ty)):.6f}")

        def theirs():
            for _ in range(steps):
                peer.zero_grad(set_to_none=True)
                peer(tx, ty).backward()
        theirs()
    ours()
    o, p = [], []
    for _ in range(args.rounds):                        # interleaved rounds
        o.append(B * T * steps / _seconds(ours))
        if torch is not None:
            p.append(B * T * steps / _seconds(theirs))
    print(f"\nforward+backward, preset {args.preset}, batch {B}x{T}, 1 thread, median of "
          f"{args.rounds} interleaved rounds x {steps} steps")
    print(f"  ours   {np.median(o):10.0f} tok/s")
    if p:
        print(f"  torch  {np.median(p):10.0f} tok/s")
        print(f"  ratio ours/torch = {np.median(o) / np.median(p):.2f}")


def decode(args, torch, name: str) -> None:
    cfg = engine.preset(name)
    model = engine.Model(cfg, seed=0)
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(0, cfg.vocab_size, 8)]
    n = min(args.gen_tokens, cfg.context - len(prompt))
    peer = None
    if torch is not None:
        from torch_peer import TorchGPT
        peer = TorchGPT(model)
    for threads in sorted({1, os.cpu_count() or 1}):
        threadpool_limits(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        runs = {"int8": lambda: model.generate(prompt, n, temperature=0, weights="int8"),
                "float32": lambda: model.generate(prompt, n, temperature=0, weights="float32")}
        if peer is not None:
            runs["torch"] = lambda: peer.decode(prompt, n)
        out = {k: fn() for k, fn in runs.items()}      # warm (and the tokens)
        rates: dict = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, fn in runs.items():
                rates[k].append(n / _seconds(fn))
        med = {k: float(np.median(v)) for k, v in rates.items()}
        print(f"\ndecoding, preset {name}, batch 1, {n} greedy tokens after an "
              f"{len(prompt)}-token prompt, KV cache, {threads} thread"
              f"{'s' if threads > 1 else ''} each, median of {args.rounds}")
        same = int(np.sum(np.asarray(out["int8"]) == np.asarray(out["float32"])))
        print(f"  ours int8     {med['int8']:10.0f} tok/s   (tokens agreeing with float32: "
              f"{same}/{n}; untrained weights, see benchmarks/decode_quality.py)")
        print(f"  ours float32  {med['float32']:10.0f} tok/s")
        if peer is not None:
            agree = int(np.sum(np.asarray(out["float32"]) == np.asarray(out["torch"])))
            print(f"  torch         {med['torch']:10.0f} tok/s   (tokens agreeing with ours "
                  f"float32: {agree}/{n})")
            print(f"  ratio ours int8/torch = {med['int8'] / med['torch']:.2f}, "
                  f"float32/torch = {med['float32'] / med['torch']:.2f}")
    threadpool_limits(1)
    if torch is not None:
        torch.set_num_threads(1)


def batched(args, torch) -> None:
    from engine.generate import BatchDecoder
    cfg = engine.preset(args.preset)
    model = engine.Model(cfg, seed=0)
    rng = np.random.default_rng(2)
    P = 8
    n = min(args.gen_tokens, cfg.context - P)
    peer = None
    if torch is not None:
        from torch_peer import TorchGPT
        peer = TorchGPT(model)
    print(f"\nbatched decoding, preset {args.preset}, {n} greedy tokens per sequence after "
          f"{P}-token prompts, 1 thread each, tokens/s summed over the batch")
    for B in args.batches:
        prompts = [[int(t) for t in rng.integers(0, cfg.vocab_size, P)] for _ in range(B)]

        def ours():
            dec = BatchDecoder(model, B, "int8")
            tokens = np.array([int(np.argmax(dec.prefill(p, row=i)))
                               for i, p in enumerate(prompts)])
            out = [tokens]
            for _ in range(n - 1):
                tokens = np.argmax(dec.step(tokens), axis=1)
                out.append(tokens)
            return np.stack(out, 1)
        ours()
        o, p = [], []
        for _ in range(args.rounds):
            o.append(B * n / _seconds(ours))
            if peer is not None:
                p.append(B * n / _seconds(lambda: peer.decode_batch(prompts, n)))
        line = f"  batch {B:3d}: ours int8 {np.median(o):9.0f} tok/s"
        if p:
            line += (f"   torch {np.median(p):9.0f} tok/s   ratio "
                     f"{np.median(o) / np.median(p):.2f}")
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base", help="for forward+backward and batched decoding")
    ap.add_argument("--decode-presets", default="base,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", default="1,4,16", help="batch sizes of batched decoding")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="fwd+bwd passes per timed round")
    ap.add_argument("--gen-tokens", type=int, default=100)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    threadpool_limits(1)
    try:
        import torch
        torch.set_num_threads(1)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    except ImportError:
        torch = None
        print("PyTorch not installed: measuring the engine alone "
              "(pip install torch==2.13.0 for the comparison)")
    header(torch)
    fwd_bwd(args, torch)
    for name in args.decode_presets.split(","):
        decode(args, torch, name)
    batched(args, torch)


if __name__ == "__main__":
    main()
