"""Thread scaling of the ThreadedTrainingSystem against PyTorch eager, in one run.

For each worker count: tokens/s of full training steps (forward + backward + reduction +
AdamW), scaling efficiency against one worker, CPU utilisation (process CPU seconds / wall
seconds / cores) while training, and PyTorch eager's full training step at the same thread
count (intra-op threads), interleaved round by round. Prints the sphere topology at the end.

    python benchmarks/bench_spheres.py --preset base --batch 8 --workers 1,2,16 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import engine  # noqa: E402
from engine import ThreadedTrainingSystem, TrainConfig  # noqa: E402


def measure(fn, steps: int) -> tuple[float, float]:
    """(wall seconds per step, CPU utilisation as a fraction of all cores)."""
    fn()  # warm
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        fn()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return wall / steps, cpu / wall / (os.cpu_count() or 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", default="1,2,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="write the table to this file")
    args = ap.parse_args()

    cfg = engine.preset(args.preset)
    tcfg = TrainConfig(lr=1e-4, warmup_steps=0)
    rng = np.random.default_rng(0)
    B, T = args.batch, cfg.context
    x = rng.integers(0, cfg.vocab_size, (B, T))
    y = rng.integers(0, cfg.vocab_size, (B, T))
    counts = [int(c) for c in args.workers.split(",")]

    torch = None
    if not args.no_torch:
        try:
            import torch
            from torch_peer import TorchGPT, as_tensor, torch_adamw
        except ImportError:
            print("PyTorch not installed: engine only (pip install torch==2.13.0 to compare)")

    rows = {n: {"ours": [], "cpu": [], "torch": []} for n in counts}
    topo = None
    systems = {}
    models = {}
    for n in counts:
        models[n] = engine.Model(cfg, seed=0)
        systems[n] = ThreadedTrainingSystem(models[n], tcfg, n_workers=n)
    peers = {}
    if torch is not None:
        for n in counts:
            m = TorchGPT(engine.Model(cfg, seed=0))
            peers[n] = (m, torch_adamw(m, tcfg))
        tx, ty = as_tensor(x), as_tensor(y)
    try:
        for r in range(args.rounds):
            for n in counts:
                s = systems[n]
                dt, util = measure(lambda: s.train_step(x, y), args.steps)
                rows[n]["ours"].append(B * T / dt)
                rows[n]["cpu"].append(util)
                if torch is not None:
                    torch.set_num_threads(min(n, os.cpu_count() or 1) if n > 1 else 1)
                    m, opt = peers[n]

                    def tstep():
                        opt.zero_grad(set_to_none=True)
                        m(tx, ty).backward()
                        opt.step()
                    dt, _ = measure(tstep, args.steps)
                    rows[n]["torch"].append(B * T / dt)
        topo = systems[counts[-1]].topology()
    finally:
        for s in systems.values():
            s.close()

    base = np.median(rows[counts[0]]["ours"])
    print(f"\npreset {args.preset}, global batch {B}x{T}, {os.cpu_count()} cores, "
          f"median of {args.rounds} interleaved rounds x {args.steps} steps (fwd+bwd+AdamW)")
    hdr = f"{'workers':>8} {'tok/s':>9} {'scaling':>8} {'eff.':>6} {'CPU util':>9}"
    if torch is not None:
        hdr += f" {'torch tok/s':>12} {'ours/torch':>11}"
    print(hdr)
    table = []
    for n in counts:
        o = float(np.median(rows[n]["ours"]))
        u = float(np.median(rows[n]["cpu"]))
        line = f"{n:>8} {o:>9.0f} {o / base:>7.2f}x {o / base / min(n, os.cpu_count()):>6.2f}" \
               f" {100 * u:>8.1f}%"
        rec = {"workers": n, "tok_s": o, "scaling": o / base, "cpu_util": u}
        if torch is not None:
            p = float(np.median(rows[n]["torch"]))
            line += f" {p:>12.0f} {o / p:>10.2f}x"
            rec.update(torch_tok_s=p, ratio=o / p)
        print(line)
        table.append(rec)
    print("\nsphere topology of the last system (Node Zero -> level-1 spheres -> children):")
    for c in topo["children"]:
        kids = len(c["children"])
        print(f"  sphere {c['id']:>2} pos {c['position']:>2}: batches {c['batches']:>3} "
              f"tokens {c['tokens']:>6} busy {c['busy_s']:.2f}s idle {c['idle_s']:.2f}s"
              + (f"  [{kids} children]" if kids else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": table, "topology": topo}, f, indent=1)


if __name__ == "__main__":
    main()
