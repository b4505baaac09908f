"""Where does a forward+backward go? Times every kernel and every BLAS matmul of one
training pass (1 thread) by wrapping them, and prints a table sorted by time.

    python benchmarks/profile_step.py --preset base --batch 8 --steps 3
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
import engine.model as model_mod  # noqa: E402


class _TimedNumpy:
    """Stands in for `np` inside engine.model: times matmuls, forwards everything else."""

    def __init__(self, totals: dict, vocab: int) -> None:
        self._totals, self._vocab = totals, vocab

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, out=None):
        t = time.perf_counter()
        r = np.matmul(a, b, out=out)
        if a.ndim == 4:
            key = "matmul attention (batched)"
        elif self._vocab in (a.shape[-1], a.shape[0], b.shape[-1], b.shape[0]):
            key = "matmul head (tied wte)"
        else:
            key = "matmul linear layers"
        self._totals[key] = self._totals.get(key, 0.0) + time.perf_counter() - t
        return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    threadpool_limits(1)
    cfg = engine.preset(args.preset)
    m = engine.Model(cfg)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (args.batch, cfg.context))
    y = rng.integers(0, cfg.vocab_size, (args.batch, cfg.context))
    m.loss_and_grad(x, y)                      # compile and warm
    totals: dict[str, float] = {}
    kernels = model_mod.K
    originals = {}
    for name in dir(kernels):
        fn = getattr(kernels, name)
        if callable(fn) and hasattr(fn, "py_func") and name != "exp_affine":  # inside others
            originals[name] = fn

            def timed(*a, _fn=fn, _name=name, **k):
                t = time.perf_counter()
                r = _fn(*a, **k)
                totals[_name] = totals.get(_name, 0.0) + time.perf_counter() - t
                return r
            setattr(kernels, name, timed)
    model_mod.np = _TimedNumpy(totals, cfg.vocab_size)
    try:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            m.loss_and_grad(x, y)
        wall = (time.perf_counter() - t0) / args.steps
    finally:
        model_mod.np = np
        for name, fn in originals.items():
            setattr(kernels, name, fn)
    matmul = sum(v for k, v in totals.items() if k.startswith("matmul"))
    print(f"preset {args.preset}, batch {args.batch}x{cfg.context}, 1 thread: "
          f"{wall * 1e3:.1f} ms per forward+backward ({args.batch * cfg.context / wall:.0f} tok/s)")
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {k:32s} {v / args.steps * 1e3:8.1f} ms  {100 * v / args.steps / wall:5.1f}%")
    rest = wall - sum(totals.values()) / args.steps
    print(f"  {'python glue and the rest':32s} {rest * 1e3:8.1f} ms  {100 * rest / wall:5.1f}%")
    print(f"matmul share of the step: {100 * matmul / args.steps / wall:.1f}%")


if __name__ == "__main__":
    main()
