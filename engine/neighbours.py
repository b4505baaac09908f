"""Crystalline similarity between tokens and the kissing-neighbour prior built on it: the
(idx, q) table the crystalline loss reads, grown with the vocabulary, and what
`cllm neighbours TOKEN` shows.

Does not hold the loss itself: the term lambda * KL(q(.|t) || softmax(logits)) is fused into
engine.kernels' cross-entropy. Builds on engine.number_theory (gcd) and engine.lattice (the
Ulam spiral, the clock); engine.prime_math gathers the public API.

Legend: V = vocabulary size, K = neighbours per token (12).
Token ids are 0-based; the similarity works on ids offset by one (A = a + 1), so token 0
is the integer 1 at the centre of the Ulam spiral.
"""
from __future__ import annotations

import math

import numpy as np

from engine._jit import kernel
from engine.lattice import _ulam_n, _ulam_xy, clock_position, symmetry_group, ulam_coords
from engine.number_theory import _as_int_array, _check_count, _gcd1, gcd

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
