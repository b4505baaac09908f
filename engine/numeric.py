"""Numeric guards: a one-pass finite check of flat float buffers (numba) and a log that
stays finite at 0.

engine.checkpoint checks every array it saves or loads with all_finite. Does not hold
floating-point elementary functions: exp/log/sqrt/cos/tanh are numpy's and LLVM's (correctly
rounded), used as they are.
"""
from __future__ import annotations

import numpy as np

from engine._jit import kernel

_FINITE_BLOCK = 16384


@kernel
def _block_not_finite(x, big):
    """Non-zero iff some element of x (n,) is NaN or +-inf. Branch-free over a flat view, so
    LLVM vectorises it (an inner loop over range(start, stop) of the whole array did not)."""
    bad = np.uint8(0)
    for i in range(x.shape[0]):
        v = x[i]
        bad |= np.uint8(abs(v) > big) | np.uint8(v != v)
    return bad


@kernel
def _all_finite_kernel(x, big):
    """True iff every element of x (n,) is finite; `big` is the dtype's max in that dtype.
    Without nnan/ninf (engine._jit) LLVM must keep both comparisons. Block by block, so a
    bad value exits early."""
    n = x.shape[0]
    for start in range(0, n, _FINITE_BLOCK):
        if _block_not_finite(x[start:start + _FINITE_BLOCK], big):
            return False
    return True


def all_finite(flat: np.ndarray) -> bool:
    """True iff no element is NaN or +-inf. One pass, no temporaries, early exit (numba).

    Meant for flat float32/float64 buffers every step; contiguous arrays of any shape are
    viewed flat, other layouts are copied. Integer and bool arrays are trivially finite.
    """
    x = np.asarray(flat)
    kind = x.dtype.kind
    if kind in "iub":
        return True
    if kind != "f":
        raise TypeError(f"all_finite needs a float array, got dtype {x.dtype}")
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    if x.ndim != 1:
        x = x.reshape(-1)                  # a view when contiguous
    if x.size == 0:
        return True
    return bool(_all_finite_kernel(x, x.dtype.type(np.finfo(x.dtype).max)))


def safe_log(x, floor: float = 1e-30):
    """log(max(x, floor)): finite for x >= 0 (log 0 -> log floor). NaN stays NaN, so a
    later all_finite still sees it. Float inputs keep their dtype; ints become float64."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return np.log(np.maximum(x, x.dtype.type(floor)))
