"""Speed of engine.prime_math's per-step and per-vocabulary work, one thread.

Measures neighbour_table(V) (built when a model starts with crystalline_weight > 0 and
rebuilt when the vocabulary grows), extend_neighbour_table against that rebuild, all_finite
on a flat float32 buffer against np.isfinite(x).all(), the sieve behind nth_prime(10**6),
and lattice_embedding; and counts how many lattice-embedding rows are distinct (tanh
saturates on the outer rings). Medians of --rounds timed calls after one warm-up call.

    python benchmarks/bench_prime_math.py --vocab 10000 --floats 6000000 --rounds 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from engine import prime_math as pm  # noqa: E402


def median_ms(fn, rounds: int) -> float:
    fn()                                                   # warm-up (JIT, caches)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=10_000)
    ap.add_argument("--grow-from", type=int, default=None, help="default: 90%% of --vocab")
    ap.add_argument("--floats", type=int, default=6_000_000)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    V, R = args.vocab, args.rounds
    V0 = args.grow_from or int(0.9 * V)

    build = median_ms(lambda: pm.neighbour_table(V), R)
    print(f"neighbour_table({V})                 {build:9.2f} ms")
    idx0, q0 = pm.neighbour_table(V0)
    ext = median_ms(lambda: pm.extend_neighbour_table(idx0, q0, V), R)
    print(f"extend_neighbour_table({V0} -> {V})  {ext:9.2f} ms")

    x = np.random.default_rng(0).standard_normal(args.floats).astype(np.float32)
    ours = median_ms(lambda: pm.all_finite(x), R)
    ref = median_ms(lambda: np.isfinite(x).all(), R)
    print(f"all_finite({args.floats} float32)       {ours:9.3f} ms   "
          f"np.isfinite(x).all() {ref:.3f} ms   ratio {ref / ours:.2f}x")
    y = x.copy()
    y[1000] = np.nan
    ours_bad = median_ms(lambda: pm.all_finite(y), R)
    ref_bad = median_ms(lambda: np.isfinite(y).all(), R)
    print(f"  with a NaN at index 1000 (early exit) {ours_bad:9.3f} ms   "
          f"np.isfinite(x).all() {ref_bad:.3f} ms")

    bound = 15_485_863
    print(f"primes_up_to({bound}) (nth_prime(10**6)) "
          f"{median_ms(lambda: pm.primes_up_to(bound), max(1, R // 2)):9.1f} ms")

    C = args.d_model
    t_emb = median_ms(lambda: pm.lattice_embedding(V, C), max(1, R // 2))
    E = pm.lattice_embedding(V, C)
    distinct = len(np.unique(E, axis=0))
    signs = len(np.unique(np.sign(E), axis=0))
    print(f"lattice_embedding({V}, {C})         {t_emb:9.1f} ms   "
          f"distinct rows {distinct} / {V}, distinct sign patterns {signs}")


if __name__ == "__main__":
    main()
