"""Crystalline mathematics: primes, gcd, the Ulam spiral, the 12-fold clock lattice, numeric
guards, and what the engine builds on them (crystalline similarity, the kissing-neighbour
prior of the crystalline loss, the lattice embedding init).

Holds integer number theory and lattice geometry, exact and tested against plain references.
Does not hold floating-point elementary functions: exp/log/sqrt/cos/tanh are numpy's and
LLVM's (correctly rounded), used as they are. Does not hold the loss itself: the term
lambda * KL(q(.|t) || softmax(logits)) is fused into engine.kernels' cross-entropy, which
reads the (idx, q) table built here.

Legend: V = vocabulary size, K = neighbours per token (12), C = d_model.
Token ids are 0-based; the similarity works on ids offset by one (A = a + 1), so token 0
is the integer 1 at the centre of the Ulam spiral.
"""
from __future__ import annotations

import math

import numpy as np

from engine._jit import kernel

# ------------------------------------------------------------------------- helpers


def _as_int_array(x, name: str) -> tuple[np.ndarray, bool]:
    """(int64 array, was_scalar). Integers only: floats and bools are refused."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype} "
                        f"(hint: np.asarray({name}, np.int64))")
    return arr.astype(np.int64, copy=False), arr.ndim == 0


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# -------------------------------------------------------------------------- primes

@kernel
def _sieve_kernel(is_p):
    """is_p (n,) bool, all True on entry -> is_p[i] == (i is prime)."""
    n = is_p.shape[0]
    is_p[0] = False
    if n > 1:
        is_p[1] = False
    i = 2
    while i * i < n:
        if is_p[i]:
            for j in range(i * i, n, i):
                is_p[j] = False
        i += 1


def sieve(limit: int) -> np.ndarray:
    """Sieve of Eratosthenes: bool array (limit + 1,), True at the primes in 0..limit."""
    limit = _check_count(limit, "limit", 0)
    is_p = np.ones(limit + 1, np.bool_)
    _sieve_kernel(is_p)
    return is_p


def primes_up_to(limit: int) -> np.ndarray:
    """The primes <= limit, ascending, int64."""
    return np.flatnonzero(sieve(limit)).astype(np.int64)


_PRIMES = primes_up_to(1 << 16)        # grown by nth_prime; replaced whole (thread-safe read)


def nth_prime(n: int) -> int:
    """The n-th prime, 1-based: nth_prime(1) == 2, nth_prime(10**6) == 15485863.

    Sieves up to Rosser's bound p_n < n (ln n + ln ln n) (n >= 6) and keeps the primes for
    later calls.
    """
    global _PRIMES
    n = _check_count(n, "n", 1)
    if n <= _PRIMES.shape[0]:
        return int(_PRIMES[n - 1])
    bound = int(n * (math.log(n) + math.log(math.log(n)))) + 1
    primes = primes_up_to(bound)
    _PRIMES = primes
    return int(primes[n - 1])


_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def _is_prime_int(n: int) -> bool:
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x == 1 or x == n - 1:
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def is_prime(n):
    """Primality of an int (any size) or an integer array (-> bool array).

    Scalars: Miller-Rabin with the first 12 prime bases, deterministic for n < 3.3e24
    (every int64); beyond that a strong probable-prime test. Arrays: a sieve lookup when
    max(n) <= 2**24, else the scalar test per element. n < 2 is never prime.
    """
    if isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)):
        return _is_prime_int(int(n))
    arr, scalar = _as_int_array(n, "n")
    if scalar:
        return _is_prime_int(int(arr))
    if arr.size == 0:
        return np.zeros(arr.shape, np.bool_)
    hi = int(arr.max())
    if hi <= 1 << 24:
        table = sieve(max(hi, 1))
        return np.where(arr >= 0, table[np.clip(arr, 0, None)], False)
    return np.vectorize(_is_prime_int, otypes=[np.bool_])(arr)


# ----------------------------------------------------------------------------- gcd

@kernel
def _gcd1(x, y):
    """gcd of two int64 (Euclid on absolute values; gcd(0, 0) == 0)."""
    x = abs(x)
    y = abs(y)
    while y != 0:
        x, y = y, x % y
    return x


@kernel
def _gcd_kernel(out, a, b):
    """out (n,) = gcd(a (n,), b (n,))."""
    for i in range(a.shape[0]):
        out[i] = _gcd1(a[i], b[i])


def gcd(a, b):
    """Greatest common divisor, elementwise with numpy broadcasting (numba).

    gcd(0, x) == |x|, gcd(0, 0) == 0, signs are ignored (as math.gcd). Integer arrays or
    ints in, int64 array out (an int when both inputs are scalars). Values must fit int64.
    """
    a, sa = _as_int_array(a, "a")
    b, sb = _as_int_array(b, "b")
    a, b = np.broadcast_arrays(a, b)
    shape = a.shape
    out = np.empty(shape, np.int64)
    _gcd_kernel(out.reshape(-1), np.ascontiguousarray(a).reshape(-1),
                np.ascontiguousarray(b).reshape(-1))
    return int(out) if (sa and sb) else out


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


# -------------------------------------------------------------------- numeric guards

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


# ------------------------------------------------------------- crystalline similarity
#
# s(a, b) = 0.7 * gcd(A, B) / max(A, B) + 0.3 / (1 + ||ulam(A) - ulam(B)||_2),  A = a + 1.
# Evaluated as written, left to right, in float64 and without fastmath, so the numpy
# function and the numba kernels give bit-identical values (ties are then broken the same).

W_GCD = 0.7
W_SPATIAL = 0.3


def crystalline_similarity(a, b):
    """Crystalline similarity s(a, b) of token ids a, b >= 0 (broadcasting, float64).

    s is symmetric, 0 < s <= 1, and s(a, a) = 0.7 * A / A + 0.3 = 1 up to one rounding.
    """
    a, sa = _as_int_array(a, "a")
    b, sb = _as_int_array(b, "b")
    if (a.size and int(a.min()) < 0) or (b.size and int(b.min()) < 0):
        raise ValueError("token ids must be >= 0")
    A, B = np.broadcast_arrays(a + 1, b + 1)
    g = gcd(A, B)
    m = np.maximum(A, B)
    xa, ya = ulam_coords(A)
    xb, yb = ulam_coords(B)
    dx, dy = xa - xb, ya - yb
    d = np.sqrt(np.asarray(dx * dx + dy * dy, np.float64))
    s = W_GCD * g / m + W_SPATIAL / (1.0 + d)
    return float(s) if (sa and sb) else s


@kernel(fastmath=False)
def _sim(A, B, xa, ya, xb, yb):
    """s for offset ids A, B with Ulam coordinates given; same operations as the numpy."""
    g = _gcd1(A, B)
    m = max(A, B)
    dx = xa - xb
    dy = ya - yb
    d = math.sqrt(float(dx * dx + dy * dy))
    return W_GCD * g / m + W_SPATIAL / (1.0 + d)


# -------------------------------------------------------------------- neighbour table
#
# For each token t the K tokens u != t of highest s(t, u), best first, ties to the lower id.
# Exact, without the V x V scan: first the (2R+1)^2 lattice box around t (every point
# outside it is >= R+1 away, so its spatial term is <= 0.3 / (2 + R)); then, with the
# K-th best score tau in hand, only u whose gcd term can reach tau - 0.3 / (2 + R) remain,
# i.e. for each divisor g of A = t+1 the multiples B of g with max(A, B) <= g / theta.
# Rows that hold fewer than K after the box (tiny vocabularies, the spiral's rim) scan all.

_BOX = 3                  # R: half-width of the lattice box searched first
_MAX_DIVISORS = 2048      # > 1600, the most divisors of any n < 2**31


@kernel
def _spf_table(n):
    """spf (n+1,) int64: smallest prime factor of 2..n (0 for 0 and 1)."""
    spf = np.zeros(n + 1, np.int64)
    for i in range(2, n + 1):
        if spf[i] == 0:
            for j in range(i, n + 1, i):
                if spf[j] == 0:
                    spf[j] = i
    return spf


@kernel
def _divisors(divs, A, spf):
    """Write the divisors of A >= 1 (unordered) into divs; return how many."""
    nd = 1
    divs[0] = 1
    m = A
    while m > 1:
        p = spf[m]
        e = 0
        while m % p == 0:
            m //= p
            e += 1
        cur = nd
        pk = 1
        for _ in range(e):
            pk *= p
            for i in range(cur):
                divs[nd] = divs[i] * pk
                nd += 1
    return nd


@kernel(fastmath=False)
def _insert(bs, bi, cnt, s, u):
    """Insert (s, u) into the best-first list bs/bi (K,) holding cnt entries; order is
    s descending then id ascending. Returns the new count (<= K)."""
    K = bs.shape[0]
    if cnt == K:
        if s < bs[K - 1] or (s == bs[K - 1] and u > bi[K - 1]):
            return cnt
        j = K - 1
    else:
        j = cnt
        cnt += 1
    while j > 0 and (s > bs[j - 1] or (s == bs[j - 1] and u < bi[j - 1])):
        bs[j] = bs[j - 1]
        bi[j] = bi[j - 1]
        j -= 1
    bs[j] = s
    bi[j] = u
    return cnt


@kernel(fastmath=False)
def _neighbour_rows(ids, sc, cnt, t0, lo, hi, spf):
    """ids (n,K) int64, sc (n,K) float64, cnt (n,): row r is token t = t0 + r, whose first
    cnt[r] entries are already its best among ids < lo. Merges every candidate u in
    [lo, hi), u != t, keeping the exact top K; updates cnt."""
    n, K = ids.shape
    R = _BOX
    out_bound = W_SPATIAL / (2.0 + R)
    divs = np.empty(_MAX_DIVISORS, np.int64)
    for r in range(n):
        A = t0 + r + 1
        xa, ya = _ulam_xy(A)
        bs = sc[r]
        bi = ids[r]
        c = cnt[r]
        for dx in range(-R, R + 1):                       # 1. the box
            for dy in range(-R, R + 1):
                if dx == 0 and dy == 0:
                    continue
                B = _ulam_n(xa + dx, ya + dy)
                if B <= lo or B > hi:
                    continue
                c = _insert(bs, bi, c, _sim(A, B, xa, ya, xa + dx, ya + dy), B - 1)
        theta = -1.0
        if c == K:
            theta = (bs[K - 1] - out_bound) / W_GCD - 1e-9   # margin: superset, still exact
        if theta > 0.0:                                   # 2. large gcd outside the box
            nd = _divisors(divs, A, spf)
            for i in range(nd):
                g = divs[i]
                lim = g / theta                           # need max(A, B) <= lim
                if A > lim:
                    continue
                top = hi if lim >= hi else np.int64(lim)
                first = (lo + g) // g * g                 # first multiple of g > lo
                for B in range(first, top + 1, g):
                    if B == A or _gcd1(A, B) != g:
                        continue
                    xb, yb = _ulam_xy(B)
                    if abs(xb - xa) <= R and abs(yb - ya) <= R:
                        continue
                    c = _insert(bs, bi, c, _sim(A, B, xa, ya, xb, yb), B - 1)
        else:                                             # 2'. too few: scan everything
            for B in range(lo + 1, hi + 1):
                if B == A:
                    continue
                xb, yb = _ulam_xy(B)
                if abs(xb - xa) <= R and abs(yb - ya) <= R:
                    continue
                c = _insert(bs, bi, c, _sim(A, B, xa, ya, xb, yb), B - 1)
        cnt[r] = c


@kernel(fastmath=False)
def _rescore(sc, ids, t0):
    """sc[r, j] = s(t0 + r, ids[r, j]) for ids (n,K)."""
    n, K = ids.shape
    for r in range(n):
        A = t0 + r + 1
        xa, ya = _ulam_xy(A)
        for j in range(K):
            B = np.int64(ids[r, j]) + 1
            xb, yb = _ulam_xy(B)
            sc[r, j] = _sim(A, B, xa, ya, xb, yb)


@kernel(fastmath=False)
def _normalise(q, sc):
    """q (n,K) float32 = sc / row sums (summed in column order)."""
    n, K = sc.shape
    for r in range(n):
        tot = 0.0
        for j in range(K):
            tot += sc[r, j]
        for j in range(K):
            q[r, j] = sc[r, j] / tot


def _table_k(vocab_size: int, k: int) -> int:
    return min(k, vocab_size - 1)


def _finish(ids: np.ndarray, sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.empty(sc.shape, np.float32)
    _normalise(q, sc)
    return ids.astype(np.int32), q


def neighbour_table(vocab_size: int, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """The crystalline prior: (idx (V,K) int32, q (V,K) float32).

    Row t lists the K tokens u != t with the highest crystalline_similarity(t, u), best
    first, ties broken by the lower id; q(u|t) = s(t, u) / (sum of the row's K scores), so
    rows sum to 1 (to float32 rounding). K = min(k, V - 1): a vocabulary of V <= k tokens
    gives every other token as a neighbour, and V == 1 gives an empty (1, 0) table.
    Exact (same result as a full V x V scan) and about V * 100 similarity evaluations.
    """
    V = _check_count(vocab_size, "vocab_size", 1)
    k = _check_count(k, "k", 0)
    if V >= 2**31:
        raise ValueError("vocab_size must fit int32")
    K = _table_k(V, k)
    ids = np.zeros((V, K), np.int64)
    sc = np.zeros((V, K), np.float64)
    if K > 0:
        _neighbour_rows(ids, sc, np.zeros(V, np.int64), 0, 0, V, _spf_table(V))
    return _finish(ids, sc)


def extend_neighbour_table(idx: np.ndarray, q: np.ndarray, new_vocab_size: int,
                           k: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """The table of neighbour_table(new_vocab_size, k), from the table of a smaller
    vocabulary (tokens are appended, never renumbered). Exact: an old token's new top K is
    the top K of its old row plus the new tokens, and only new tokens that can beat the old
    K-th score are visited. New tokens get full rows. Equal to a rebuild, bit for bit.
    """
    idx = np.asarray(idx)
    q = np.asarray(q)
    k = _check_count(k, "k", 0)
    if idx.ndim != 2 or q.shape != idx.shape or idx.dtype.kind not in "iu":
        raise ValueError("idx and q must be (V, K) arrays from neighbour_table "
                         f"(got {idx.shape} {idx.dtype} and {q.shape})")
    V_old, K_old = idx.shape
    V = _check_count(new_vocab_size, "new_vocab_size", max(V_old, 1))
    if V >= 2**31:
        raise ValueError("new_vocab_size must fit int32")
    if K_old != _table_k(V_old, k):
        raise ValueError(f"table has {K_old} neighbours per row, neighbour_table({V_old}, "
                         f"k={k}) has {_table_k(V_old, k)} (hint: pass the same k)")
    old_ids = idx.astype(np.int64)
    if old_ids.size and (old_ids.min() < 0 or old_ids.max() >= V_old):
        raise ValueError("idx holds ids outside the old vocabulary")
    old_sc = np.empty((V_old, K_old), np.float64)
    _rescore(old_sc, old_ids, 0)
    check = np.empty(old_sc.shape, np.float32)
    _normalise(check, old_sc)
    if not np.array_equal(check, q):
        raise ValueError("q does not match idx (hint: pass both arrays of one neighbour_table)")
    K = _table_k(V, k)
    ids = np.zeros((V, K), np.int64)
    sc = np.zeros((V, K), np.float64)
    ids[:V_old, :K_old] = old_ids
    sc[:V_old, :K_old] = old_sc
    if V > V_old and K > 0:
        spf = _spf_table(V)
        cnt = np.full(V_old, K_old, np.int64)
        if V_old:
            _neighbour_rows(ids[:V_old], sc[:V_old], cnt, 0, V_old, V, spf)
        _neighbour_rows(ids[V_old:], sc[V_old:], np.zeros(V - V_old, np.int64), V_old, 0, V,
                        spf)
    return _finish(ids, sc)


def token_neighbours(token: int, vocab_size: int, k: int = 12
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row of neighbour_table(vocab_size, k), computed alone: (ids int32 (K,),
    similarities float64 (K,), prior q float32 (K,))."""
    V = _check_count(vocab_size, "vocab_size", 1)
    t = _check_count(token, "token", 0)
    if t >= V:
        raise ValueError(f"token {t} is outside the vocabulary (size {V})")
    K = _table_k(V, _check_count(k, "k", 0))
    ids = np.zeros((1, K), np.int64)
    sc = np.zeros((1, K), np.float64)
    if K > 0:
        _neighbour_rows(ids, sc, np.zeros(1, np.int64), t, 0, V, _spf_table(V))
    i32, q = _finish(ids, sc)
    return i32[0], sc[0], q[0]


def describe_token(token: int, vocab_size: int, k: int = 12) -> dict:
    """What the CLI shows for a token: its Ulam point, clock position, symmetry group and
    its K kissing neighbours with similarity and prior. Plain Python values."""
    ids, s, q = token_neighbours(token, vocab_size, k)
    ring, pos, size = clock_position(token)
    return {
        "token": int(token),
        "ulam": ulam_coords(int(token) + 1),
        "clock": {"ring": ring, "pos": pos, "ring_size": size},
        "symmetry_group": symmetry_group(int(token)),
        "neighbours": [{"token": int(u), "similarity": float(v), "prior": float(p)}
                       for u, v, p in zip(ids, s, q)],
    }


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
