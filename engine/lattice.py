"""Lattice geometry for the crystalline math: the Ulam spiral, the 12-fold clock lattice,
symmetry groups, and the clock-lattice embedding init of wte.

Exact integer geometry (numba kernels behind numpy-style wrappers), tested against walks of
the spiral and the clock; the embedding is float64 numpy. Does not hold the similarity or
the neighbour prior (engine.neighbours); engine.prime_math gathers the public API.

Legend: V = vocabulary size, C = d_model.
"""
from __future__ import annotations

import math

import numpy as np

from engine._jit import kernel
from engine.number_theory import _as_int_array, _check_count

# ---------------------------------------------------------------------- Ulam spiral

@kernel
def _isqrt(m):
    """floor(sqrt(m)) for 0 <= m < 2**62, exact."""
    r = np.int64(math.sqrt(float(m)))
    while r * r > m:
        r -= 1
    while (r + 1) * (r + 1) <= m:
        r += 1
    return r


@kernel
def _ulam_xy(n):
    """(x, y) of the integer n >= 1 on the Ulam spiral (convention: see ulam_coords)."""
    if n <= 1:
        return np.int64(0), np.int64(0)
    k = (_isqrt(n - 1) + 1) // 2          # ring = ceil((sqrt(n) - 1) / 2), exactly
    j = n - (2 * k - 1) * (2 * k - 1) - 1   # 0 .. 8k-1 along the ring
    side = j // (2 * k)
    o = j - side * 2 * k
    if side == 0:                           # right side, going up
        return k, -k + 1 + o
    if side == 1:                           # top, going left
        return k - 1 - o, k
    if side == 2:                           # left side, going down
        return -k, k - 1 - o
    return -k + 1 + o, -k                   # bottom, going right; ends at (k, -k)


@kernel
def _ulam_n(x, y):
    """Inverse of _ulam_xy: the integer at lattice point (x, y)."""
    k = max(abs(x), abs(y))
    if k == 0:
        return np.int64(1)
    base = (2 * k - 1) * (2 * k - 1) + 1
    if x == k and y > -k:
        return base + (y + k - 1)
    if y == k:
        return base + 2 * k + (k - 1 - x)
    if x == -k:
        return base + 4 * k + (k - 1 - y)
    return base + 6 * k + (x + k - 1)


@kernel
def _ulam_coords_kernel(xs, ys, n):
    for i in range(n.shape[0]):
        x, y = _ulam_xy(n[i])
        xs[i] = x
        ys[i] = y


@kernel
def _ulam_index_kernel(out, xs, ys):
    for i in range(xs.shape[0]):
        out[i] = _ulam_n(xs[i], ys[i])


def ulam_coords(n):
    """Ulam-spiral lattice coordinates (x, y) of integers n >= 1 (vectorised).

    Convention (the standard Ulam spiral, x to the right, y up): 1 at (0, 0), 2 at (1, 0),
    3 at (1, 1), 4 at (0, 1), 5 at (-1, 1), ... counterclockwise. Ring k = max(|x|, |y|)
    = ceil((sqrt(n) - 1) / 2) holds (2k-1)^2 + 1 .. (2k+1)^2: it starts at (k, -k+1), walks
    up the right side, left along the top, down the left side and right along the bottom,
    ending at (k, -k). The 5 x 5 centre, top row first:

        17 16 15 14 13
        18  5  4  3 12
        19  6  1  2 11
        20  7  8  9 10
        21 22 23 24 25

    Returns two int64 arrays of n's shape (two ints for a scalar). Valid for n < 2**62.
    """
    arr, scalar = _as_int_array(n, "n")
    if arr.size and int(arr.min()) < 1:
        raise ValueError("ulam_coords needs n >= 1 (hint: token ids are offset: ulam(t + 1))")
    flat = np.ascontiguousarray(arr).reshape(-1)
    xs, ys = np.empty_like(flat), np.empty_like(flat)
    _ulam_coords_kernel(xs, ys, flat)
    if scalar:
        return int(xs[0]), int(ys[0])
    return xs.reshape(arr.shape), ys.reshape(arr.shape)


def ulam_index(x, y):
    """Inverse of ulam_coords: the integer n >= 1 at lattice point (x, y), vectorised."""
    x, sx = _as_int_array(x, "x")
    y, sy = _as_int_array(y, "y")
    x, y = np.broadcast_arrays(x, y)
    out = np.empty(x.shape, np.int64)
    _ulam_index_kernel(out.reshape(-1), np.ascontiguousarray(x).reshape(-1),
                       np.ascontiguousarray(y).reshape(-1))
    return int(out) if (sx and sy) else out


# --------------------------------------------------------------- 12-fold clock lattice

RING_SIZES = (12, 60, 60, 100, 1000)   # hours, minutes, seconds, hundredths, thousandths
BEYOND_RING_SIZE = 1000                # every ring past the listed ones
_RING_STARTS = np.cumsum((0,) + RING_SIZES[:-1]).astype(np.int64)   # 0, 12, 72, 132, 232
_RING_SIZES = np.array(RING_SIZES, np.int64)


def clock_position(index):
    """Position of index >= 0 on the 12-fold clock lattice: (ring, pos, ring_size).

    Rings hold 12, 60, 60, 100 and 1000 positions (indices 0-11, 12-71, 72-131, 132-231,
    232-1231); past those, every further ring holds 1000 (ring 5 = 1232-2231, ...), so no
    index is folded onto another. pos is 0-based within the ring. Vectorised (int64 arrays;
    three ints for a scalar).
    """
    idx, scalar = _as_int_array(index, "index")
    if idx.size and int(idx.min()) < 0:
        raise ValueError("clock_position needs index >= 0")
    r = np.searchsorted(_RING_STARTS, idx, side="right") - 1            # 0..4
    extra = np.where(r == len(RING_SIZES) - 1,
                     (idx - _RING_STARTS[-1]) // BEYOND_RING_SIZE, 0)
    ring = r + extra
    pos = idx - _RING_STARTS[r] - extra * BEYOND_RING_SIZE
    size = _RING_SIZES[r]                  # the last listed size is also BEYOND_RING_SIZE
    if scalar:
        return int(ring), int(pos), int(size)
    return ring, pos, size


def symmetry_group(index):
    """Symmetry group of a token id: index mod 12 (0..11), vectorised."""
    idx, scalar = _as_int_array(index, "index")
    g = np.mod(idx, 12)
    return int(g) if scalar else g


# ------------------------------------------------------------------ lattice embedding

LATTICE_PHI = (3, 7, 31, 12, 19, 5, 11, 13, 17, 23, 29, 37)
_MAX_EXPONENT = 60.0      # 3**60 ~ 4e28: tanh is saturated long before; avoids inf * 0


def lattice_embedding(vocab_size: int, d_model: int, std: float = 0.02, seed: int = 0
                      ) -> np.ndarray:
    """The prototype's clock-lattice embedding for wte: (V, C) float32.

        E[t, d] = tanh(L / 100),
        L = 3^(ring + pos/P) * cos(angle * phi[d mod 12]) * cos(2 pi (t mod 12) / 12)
            * tanh(1 + 0.1 ring + 0.01 d),

    with (ring, pos, P) = clock_position(t), angle = 2 pi pos / P and phi = LATTICE_PHI.
    Computed in float64; the exponent is capped at 60 (tanh is already +-1 there; the cap
    only avoids inf * 0 = NaN for huge vocabularies). Each row is then rescaled to norm
    std * sqrt(C), the RMS norm of a N(0, std) row, so it starts at the normal init's scale.
    Rows with t = 3, 9 (mod 12), where cos(2 pi (t mod 12) / 12) is zero in exact
    arithmetic, carry float64's +-6e-17 there: tanh is linear at that scale, so the rescaled
    row is the limit direction of the formula. A row that is still (numerically) zero gets a
    N(0, std) row from default_rng(seed), rescaled the same way: never NaN.
    Past ring ~6 tanh saturates, so those rows are +-1 patterns of period 12 in d.
    """
    V = _check_count(vocab_size, "vocab_size", 1)
    C = _check_count(d_model, "d_model", 1)
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"std must be a positive number, got {std}")
    t = np.arange(V, dtype=np.int64)
    ring, pos, P = clock_position(t)
    frac = pos / P
    angle = 2.0 * np.pi * frac                                          # (V,)
    d = np.arange(C, dtype=np.int64)
    phi = np.asarray(LATTICE_PHI, np.float64)[d % 12]                   # (C,)
    mag = 3.0 ** np.minimum(ring + frac, _MAX_EXPONENT)                 # (V,)
    clock = np.cos(2.0 * np.pi * (t % 12) / 12.0)                       # (V,)
    L = (mag[:, None] * np.cos(angle[:, None] * phi[None, :]) * clock[:, None]
         * np.tanh(1.0 + 0.1 * ring[:, None] + 0.01 * d[None, :]))     # (V, C)
    return _rescale_rows(np.tanh(L / 100.0), std, seed).astype(np.float32)


def _rescale_rows(E: np.ndarray, std: float, seed: int) -> np.ndarray:
    """E (V,C) float64, rows rescaled IN PLACE to norm std * sqrt(C); rows with a norm that
    is not finite or below 1e-150 are replaced by N(0, std) rows from default_rng(seed)."""
    C = E.shape[1]
    norms = np.sqrt(np.einsum("vc,vc->v", E, E))
    bad = ~(norms > 1e-150) | ~np.isfinite(norms)
    if bad.any():
        rng = np.random.default_rng(seed)
        E[bad] = rng.normal(0.0, std, (int(bad.sum()), C))
        norms[bad] = np.sqrt(np.einsum("vc,vc->v", E[bad], E[bad]))
    E *= (std * math.sqrt(C) / norms)[:, None]
    return E
