"""The two ways to combine gradients across ranks, measured on each preset's flat buffer:

  allreduce   one in-place Allreduce, then every rank applies the whole AdamW update
              (what engine/spheres.py does, per worker segment);
  rs+ag       Reduce_scatter_block, each rank updates its 1/R shard (AdamW moments sharded),
              then Allgather of the updated parameters.

    mpiexec -n 2 --oversubscribe python benchmarks/bench_mpi.py [--rounds 20]

Rank 0 prints median milliseconds per step of each, communication and update together.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import Optimizer, TrainConfig  # noqa: E402
from engine.cpu import describe  # noqa: E402


def main() -> None:
    from mpi4py import MPI

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--presets", default="tiny,small,base")
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    R, rank = comm.Get_size(), comm.Get_rank()
    tcfg = TrainConfig(lr=1e-4, warmup_steps=0)
    rows = []
    for name in a.presets.split(","):
        model = engine.Model(engine.preset(name), seed=0)
        P = model.layout.size
        P -= P % R                      # Reduce_scatter_block: equal blocks
        params = model.params[:P].copy()
        grad = np.random.default_rng(rank).standard_normal(P).astype(np.float32)
        opt = Optimizer(model.layout, tcfg)
        hyper = opt.hyper(1e-4)
        shard = np.empty(P // R, np.float32)
        lo, hi = rank * P // R, (rank + 1) * P // R
        times = {"allreduce": [], "rs+ag": []}
        for _ in range(a.rounds + 2):
            g = grad.copy()
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
            opt.update_segment(params, g, 0, P, hyper, 1.0)
            times["allreduce"].append(time.perf_counter() - t0)
            g = grad.copy()
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Reduce_scatter_block(g, shard, op=MPI.SUM)
            g[lo:hi] = shard
            opt.update_segment(params, g, lo, hi, hyper, 1.0)
            comm.Allgather(MPI.IN_PLACE, params)
            times["rs+ag"].append(time.perf_counter() - t0)
        med = {k: 1000 * float(np.median(v[2:])) for k, v in times.items()}
        rows.append((name, 4 * P / 1e6, med["allreduce"], med["rs+ag"]))
    if rank == 0:
        cpu = describe().model
        print(f"{R} ranks on one machine ({cpu}), median of {a.rounds} rounds, "
              f"ms per step (collective + AdamW update)")
        print(f"{'preset':>7} {'MB':>7} {'allreduce':>10} {'rs+ag':>8} {'rs+ag / allreduce':>18}")
        for name, mb, ar, rs in rows:
            print(f"{name:>7} {mb:>7.1f} {ar:>10.2f} {rs:>8.2f} {rs / ar:>17.2f}x")


if __name__ == "__main__":
    main()
