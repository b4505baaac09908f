"""JIT options for every numba kernel of the project, decided in one place.

fastmath without `nnan`/`ninf`, so NaN/Inf checks keep working; `cache=True` so later runs
start fast; `nogil=True` so kernels called from worker threads run in parallel.
"""
from __future__ import annotations

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def kernel(fn=None, **overrides):
    """Decorator: numba.njit with the project's options (overridable per kernel)."""
    opts = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
    opts.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)
