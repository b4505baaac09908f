"""engine.prime_math against straightforward references: trial division, math.gcd, a
step-by-step spiral walk, a ring-by-ring clock walk, brute-force V x V neighbour tables."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import prime_math as pm

# ------------------------------------------------------------------------ references


def trial_is_prime(n: int) -> bool:
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def walk_spiral(n_max: int) -> dict[int, tuple[int, int]]:
    """Ulam spiral by walking it: right 1, up 1, left 2, down 2, right 3, up 3, ..."""
    pos, x, y, n, step = {1: (0, 0)}, 0, 0, 1, 1
    dirs = [(1, 0), (0, 1), (-1, 0), (0, -1)]
    d = 0
    while n < n_max:
        for _ in range(2):
            dx, dy = dirs[d % 4]
            for _ in range(step):
                x, y, n = x + dx, y + dy, n + 1
                pos[n] = (x, y)
            d += 1
        step += 1
    return {k: v for k, v in pos.items() if k <= n_max}


SPIRAL = walk_spiral(2000)


def ref_similarity(a: int, b: int) -> float:
    A, B = a + 1, b + 1
    (xa, ya), (xb, yb) = SPIRAL[A], SPIRAL[B]
    return 0.7 * math.gcd(A, B) / max(A, B) + 0.3 / (1 + math.hypot(xa - xb, ya - yb))


def brute_neighbours(V: int, k: int, rows=None):
    """Full scan: per row, all s(t, u), sorted by (s desc, id asc), self removed."""
    K = min(k, V - 1)
    rows = range(V) if rows is None else rows
    ids, qs = [], []
    u = np.arange(V)
    for t in rows:
        s = pm.crystalline_similarity(t, u)
        order = [j for j in np.lexsort((u, -s)) if j != t][:K]
        ids.append(order)
        qs.append((s[order] / s[order].sum()).astype(np.float32))
    return np.array(ids, np.int64).reshape(len(ids), K), np.array(qs).reshape(len(ids), K)


# ---------------------------------------------------------------------------- primes

@pytest.mark.parametrize("limit", [0, 1, 2, 3, 10, 2003])
def test_sieve_matches_trial_division(limit):
    is_p = pm.sieve(limit)
    assert is_p.dtype == np.bool_ and is_p.shape == (limit + 1,)
    assert is_p.tolist() == [trial_is_prime(n) for n in range(limit + 1)]
    assert pm.primes_up_to(limit).tolist() == [n for n in range(limit + 1) if trial_is_prime(n)]


def test_nth_prime_small_and_large():
    primes = [n for n in range(2, 2000) if trial_is_prime(n)]
    assert [pm.nth_prime(i + 1) for i in range(len(primes))] == primes
    assert pm.nth_prime(1) == 2
    assert pm.nth_prime(10_000) == 104_729
    assert pm.nth_prime(1_000_000) == 15_485_863
    assert pm.nth_prime(6543) == 65_537          # inside the precomputed range
    with pytest.raises(ValueError):
        pm.nth_prime(0)


def test_is_prime_scalar_and_array():
    ns = list(range(-5, 3000)) + list(range(10**10, 10**10 + 300))
    expect = [trial_is_prime(n) for n in ns]
    assert [pm.is_prime(n) for n in ns] == expect
    assert pm.is_prime(np.array(ns[:3005])).tolist() == expect[:3005]       # sieve path
    assert pm.is_prime(np.array(ns)).tolist() == expect                     # scalar path
    assert pm.is_prime(np.int64(97)) is True


@pytest.mark.parametrize("n,prime", [
    (2**31 - 1, True), (2**61 - 1, True), (18446744073709551557, True),   # largest < 2**64
    (561, False), (41041, False),                                          # Carmichael
    (2047, False), (3215031751, False), (3825123056546413051, False),      # strong pseudoprimes
    (2**61 + 1, False), ((2**31 - 1) * (2**31 - 1), False),
])
def test_is_prime_hard_cases(n, prime):
    assert pm.is_prime(n) is prime


# ------------------------------------------------------------------------------- gcd

I63 = st.integers(-(2**63) + 1, 2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(I63, I63), min_size=1, max_size=20))
def test_gcd_matches_math_gcd(pairs):
    a = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    assert pm.gcd(a, b).tolist() == [math.gcd(x, y) for x, y in pairs]


def test_gcd_zero_broadcast_and_types():
    assert pm.gcd(0, 0) == 0 and pm.gcd(0, 12) == 12 and pm.gcd(-12, 0) == 12
    assert isinstance(pm.gcd(6, 4), int)
    a = np.arange(0, 30).reshape(5, 6)
    b = np.arange(0, 6)
    g = pm.gcd(a, b)
    assert g.shape == (5, 6)
    assert g.tolist() == [[math.gcd(int(x), int(y)) for x, y in zip(r, b)] for r in a]
    assert pm.gcd(np.array([12], np.uint16), np.int32(18)).tolist() == [6]
    with pytest.raises(TypeError):
        pm.gcd(np.array([1.5]), 2)


# ----------------------------------------------------------------------- Ulam spiral

KNOWN_5x5 = [[17, 16, 15, 14, 13],
             [18, 5, 4, 3, 12],
             [19, 6, 1, 2, 11],
             [20, 7, 8, 9, 10],
             [21, 22, 23, 24, 25]]


def test_ulam_1_to_25_known_layout():
    xs, ys = pm.ulam_coords(np.arange(1, 26))
    grid = [[0] * 5 for _ in range(5)]
    for n, x, y in zip(range(1, 26), xs, ys):
        grid[2 - y][x + 2] = n                       # top row is y = +2
    assert grid == KNOWN_5x5
    assert pm.ulam_coords(1) == (0, 0) and pm.ulam_coords(2) == (1, 0)
    assert pm.ulam_coords(3) == (1, 1)


def test_ulam_matches_walk_and_inverts():
    n = np.arange(1, 2001)
    xs, ys = pm.ulam_coords(n)
    assert list(zip(xs.tolist(), ys.tolist())) == [SPIRAL[i] for i in range(1, 2001)]
    assert pm.ulam_index(xs, ys).tolist() == n.tolist()
    # every lattice point of the 45 x 45 square is hit exactly once by 1..45^2
    gx, gy = np.meshgrid(np.arange(-22, 23), np.arange(-22, 23))
    assert sorted(pm.ulam_index(gx, gy).ravel().tolist()) == list(range(1, 45 * 45 + 1))


@pytest.mark.parametrize("start", [10**6, 10**12 - 7, 10**15, 4 * 10**17 + 3])
def test_ulam_large_n(start):
    n = np.arange(start, start + 500, dtype=np.int64)
    xs, ys = pm.ulam_coords(n)
    ring = np.array([(math.isqrt(int(v) - 1) + 1) // 2 for v in n])
    assert (np.maximum(abs(xs), abs(ys)) == ring).all()
    assert ((abs(np.diff(xs)) + abs(np.diff(ys))) == 1).all()      # the walk takes unit steps
    assert (pm.ulam_index(xs, ys) == n).all()
    k = (math.isqrt(start) + 1) // 2                                # (2k+1)^2 ends at (k, -k)
    assert pm.ulam_coords((2 * k + 1) ** 2) == (k, -k)


def test_ulam_rejects_zero():
    with pytest.raises(ValueError):
        pm.ulam_coords(np.array([3, 0]))


# ---------------------------------------------------------------- clock lattice, groups

def walk_clock(n: int):
    sizes = [12, 60, 60, 100, 1000]
    out, ring = [], 0
    while len(out) < n:
        size = sizes[ring] if ring < len(sizes) else 1000
        out += [(ring, p, size) for p in range(size)]
        ring += 1
    return out[:n]


def test_clock_position_matches_walk():
    n = 5000
    ring, pos, size = pm.clock_position(np.arange(n))
    assert list(zip(ring.tolist(), pos.tolist(), size.tolist())) == walk_clock(n)
    for idx, expect in [(0, (0, 0, 12)), (11, (0, 11, 12)), (12, (1, 0, 60)),
                        (131, (2, 59, 60)), (132, (3, 0, 100)), (232, (4, 0, 1000)),
                        (1231, (4, 999, 1000)), (1232, (5, 0, 1000)),
                        (10**9, (4 + (10**9 - 232) // 1000, (10**9 - 232) % 1000, 1000))]:
        assert pm.clock_position(idx) == expect
    with pytest.raises(ValueError):
        pm.clock_position(-1)


def test_symmetry_group():
    assert pm.symmetry_group(np.arange(30)).tolist() == [i % 12 for i in range(30)]
    assert pm.symmetry_group(10**12 + 5) == (10**12 + 5) % 12


# -------------------------------------------------------------------- numeric guards

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 4095, 4096, 8191, 10_000, -1])
def test_all_finite_finds_every_bad_value(dtype, bad, where):
    x = np.random.default_rng(0).standard_normal(10_001).astype(dtype)
    assert pm.all_finite(x)
    x[where] = bad
    assert not pm.all_finite(x)
    assert not pm.all_finite(x.reshape(1, -1))
    assert pm.all_finite(x[:where] if where > 0 else x[:0])


def test_all_finite_edges():
    f32 = np.finfo(np.float32)
    assert pm.all_finite(np.array([f32.max, -f32.max, f32.tiny / 4, 0.0, -0.0], np.float32))
    assert pm.all_finite(np.zeros(0, np.float32))
    assert pm.all_finite(np.arange(10))                          # ints: trivially finite
    x = np.ones((6, 7), np.float64)
    x[3, 5] = np.nan                                              # odd column
    assert pm.all_finite(x[:, ::2]) == bool(np.isfinite(x[:, ::2]).all())
    assert pm.all_finite(x[:, 1::2]) == bool(np.isfinite(x[:, 1::2]).all())
    assert not pm.all_finite(np.array([1, np.inf], np.float16))
    with pytest.raises(TypeError):
        pm.all_finite(np.array(["a"]))


def test_safe_log():
    x = np.array([0.0, 1e-40, 1.0, np.e, np.nan], np.float32)
    y = pm.safe_log(x)
    assert y.dtype == np.float32
    assert y[0] == y[1] == np.float32(np.log(np.float32(1e-30)))
    assert y[2] == 0.0 and abs(y[3] - 1.0) < 1e-6 and np.isnan(y[4])
    assert pm.safe_log(0, floor=1e-10) == pytest.approx(math.log(1e-10))


# ------------------------------------------------------------ crystalline similarity

def test_similarity_matches_reference():
    a, b = np.meshgrid(np.arange(60), np.arange(60))
    s = pm.crystalline_similarity(a, b)
    ref = np.array([[ref_similarity(int(i), int(j)) for i, j in zip(r1, r2)]
                    for r1, r2 in zip(a, b)])
    np.testing.assert_allclose(s, ref, rtol=1e-15, atol=0)
    assert (s == s.T).all()
    np.testing.assert_allclose(np.diag(s), 1.0, rtol=1e-15)
    assert (s > 0).all() and (s <= 1).all()
    # A=2 at (1, 0), B=4 at (0, 1): gcd 2, max 4, distance sqrt(2)
    assert pm.crystalline_similarity(1, 3) == pytest.approx(0.7 * 2 / 4 + 0.3 / (1 + 2**0.5))


def test_numba_similarity_is_bit_identical_to_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 10**6, 500), rng.integers(0, 10**6, 500)
    s = pm.crystalline_similarity(a, b)
    xa, ya = pm.ulam_coords(a + 1)
    xb, yb = pm.ulam_coords(b + 1)
    for i in range(500):
        assert pm._sim(a[i] + 1, b[i] + 1, xa[i], ya[i], xb[i], yb[i]) == s[i]


# ------------------------------------------------------------------- neighbour table

@pytest.mark.parametrize("V,k", [(1, 12), (2, 12), (3, 12), (12, 12), (13, 12), (14, 12),
                                 (50, 12), (700, 12), (300, 1), (300, 5), (300, 40)])
def test_neighbour_table_equals_brute_force(V, k):
    idx, q = pm.neighbour_table(V, k)
    K = min(k, V - 1)
    assert idx.shape == q.shape == (V, K)
    assert idx.dtype == np.int32 and q.dtype == np.float32
    ref_idx, ref_q = brute_neighbours(V, k)
    assert np.array_equal(idx, ref_idx)
    np.testing.assert_allclose(q, ref_q, rtol=1e-6)
    if K:
        assert (idx != np.arange(V)[:, None]).all()
        np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
        assert (np.diff(q, axis=1) <= 0).all()                     # best first


def test_neighbour_table_10k_rows_equal_brute_force():
    V = 10_000
    idx, q = pm.neighbour_table(V)
    rows = [0, 1, 2, 11, 96, 1023, 4999, 5040, 7919, 9216, 9800, 9899, 9900, 9998, 9999]
    ref_idx, ref_q = brute_neighbours(V, 12, rows)
    assert np.array_equal(idx[rows], ref_idx)
    np.testing.assert_allclose(q[rows], ref_q, rtol=1e-6)


@pytest.mark.parametrize("k,sizes", [(12, [1, 2, 5, 13, 14, 40, 300, 301]),
                                     (12, [500, 1000]), (3, [2, 4, 100, 257])])
def test_extend_equals_rebuild(k, sizes):
    idx, q = pm.neighbour_table(sizes[0], k)
    for V in sizes[1:]:
        idx, q = pm.extend_neighbour_table(idx, q, V, k)
        full_idx, full_q = pm.neighbour_table(V, k)
        assert np.array_equal(idx, full_idx) and np.array_equal(q, full_q)
        assert idx.dtype == np.int32 and q.dtype == np.float32


def test_extend_rejects_foreign_tables():
    idx, q = pm.neighbour_table(100)
    with pytest.raises(ValueError, match="same k"):
        pm.extend_neighbour_table(idx, q, 200, k=5)
    q2 = q.copy()
    q2[7, 0] += 0.01
    with pytest.raises(ValueError, match="does not match"):
        pm.extend_neighbour_table(idx, q2, 200)
    with pytest.raises(ValueError):
        pm.extend_neighbour_table(idx, q, 50)                      # vocabularies only grow


def test_token_neighbours_and_describe():
    idx, q = pm.neighbour_table(500)
    for t in (0, 7, 143, 499):
        ids, s, qt = pm.token_neighbours(t, 500)
        assert np.array_equal(ids, idx[t]) and np.array_equal(qt, q[t])
        assert np.array_equal(s, pm.crystalline_similarity(t, ids.astype(np.int64)))
    info = pm.describe_token(13, 500)
    assert info["ulam"] == (1, 2) and info["symmetry_group"] == 1   # n = 14 on the spiral
    assert info["clock"] == {"ring": 1, "pos": 1, "ring_size": 60}
    assert [n["token"] for n in info["neighbours"]] == idx[13].tolist()
    with pytest.raises(ValueError):
        pm.token_neighbours(500, 500)


# ----------------------------------------------------------------- lattice embedding

def ref_lattice(V, C, std):
    phi = [3, 7, 31, 12, 19, 5, 11, 13, 17, 23, 29, 37]
    clock = walk_clock(V)
    E = np.zeros((V, C))
    for t in range(V):
        ring, pos, P = clock[t]
        angle = 2 * math.pi * pos / P
        for d in range(C):
            L = (3.0 ** (ring + pos / P) * math.cos(angle * phi[d % 12])
                 * math.cos(2 * math.pi * (t % 12) / 12) * math.tanh(1 + 0.1 * ring + 0.01 * d))
            E[t, d] = math.tanh(L / 100)
        E[t] *= std * math.sqrt(C) / np.linalg.norm(E[t])
    return E


def test_lattice_embedding_matches_formula():
    V, C, std = 300, 20, 0.02
    E = pm.lattice_embedding(V, C, std=std)
    assert E.shape == (V, C) and E.dtype == np.float32
    np.testing.assert_allclose(E, ref_lattice(V, C, std), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(E.astype(np.float64), axis=1),
                               std * math.sqrt(C), rtol=1e-5)
    assert np.array_equal(E, pm.lattice_embedding(V, C, std=std))   # deterministic


def test_lattice_embedding_large_vocab_is_finite_with_normal_scale():
    E = pm.lattice_embedding(20_000, 7, std=0.5)
    assert pm.all_finite(E)
    np.testing.assert_allclose(np.linalg.norm(E.astype(np.float64), axis=1),
                               0.5 * math.sqrt(7), rtol=1e-5)
    # rows where cos(2 pi (t mod 12)/12) vanishes are rescaled, not zero or NaN
    assert (np.abs(E[3::12]).max(1) > 0).all()


def test_rescale_rows_falls_back_on_zero_and_nan_rows():
    E = np.ones((4, 5))
    E[1] = 0.0
    E[2, 3] = np.nan
    out = pm._rescale_rows(E, 0.1, seed=0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 0.1 * math.sqrt(5))
    np.testing.assert_allclose(out[0], 0.1)                            # ones, rescaled
    assert len(set(out[1].tolist())) == 5                              # a random row
    E = np.ones((4, 5))
    E[1] = 0.0
    E[2, 3] = np.nan
    assert np.array_equal(out, pm._rescale_rows(E, 0.1, seed=0))      # seeded
