"""engine.neighbours against straightforward references: the similarity written from its
formula on a walked spiral, brute-force V x V neighbour tables."""
import math

import numpy as np
import pytest

from engine import neighbours as nb
from engine.lattice import ulam_coords
from tests.engine.test_lattice import SPIRAL

# ------------------------------------------------------------------------ references


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
        s = nb.crystalline_similarity(t, u)
        order = [j for j in np.lexsort((u, -s)) if j != t][:K]
        ids.append(order)
        qs.append((s[order] / s[order].sum()).astype(np.float32))
    return np.array(ids, np.int64).reshape(len(ids), K), np.array(qs).reshape(len(ids), K)


# ------------------------------------------------------------ crystalline similarity

def test_similarity_matches_reference():
    a, b = np.meshgrid(np.arange(60), np.arange(60))
    s = nb.crystalline_similarity(a, b)
    ref = np.array([[ref_similarity(int(i), int(j)) for i, j in zip(r1, r2)]
                    for r1, r2 in zip(a, b)])
    np.testing.assert_allclose(s, ref, rtol=1e-15, atol=0)
    assert (s == s.T).all()
    np.testing.assert_allclose(np.diag(s), 1.0, rtol=1e-15)
    assert (s > 0).all() and (s <= 1).all()
    # A=2 at (1, 0), B=4 at (0, 1): gcd 2, max 4, distance sqrt(2)
    assert nb.crystalline_similarity(1, 3) == pytest.approx(0.7 * 2 / 4 + 0.3 / (1 + 2**0.5))


def test_numba_similarity_is_bit_identical_to_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 10**6, 500), rng.integers(0, 10**6, 500)
    s = nb.crystalline_similarity(a, b)
    xa, ya = ulam_coords(a + 1)
    xb, yb = ulam_coords(b + 1)
    for i in range(500):
        assert nb._sim(a[i] + 1, b[i] + 1, xa[i], ya[i], xb[i], yb[i]) == s[i]


# ------------------------------------------------------------------- neighbour table

@pytest.mark.parametrize("V,k", [(1, 12), (2, 12), (3, 12), (12, 12), (13, 12), (14, 12),
                                 (50, 12), (700, 12), (300, 1), (300, 5), (300, 40)])
def test_neighbour_table_equals_brute_force(V, k):
    idx, q = nb.neighbour_table(V, k)
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
    idx, q = nb.neighbour_table(V)
    rows = [0, 1, 2, 11, 96, 1023, 4999, 5040, 7919, 9216, 9800, 9899, 9900, 9998, 9999]
    ref_idx, ref_q = brute_neighbours(V, 12, rows)
    assert np.array_equal(idx[rows], ref_idx)
    np.testing.assert_allclose(q[rows], ref_q, rtol=1e-6)


@pytest.mark.parametrize("k,sizes", [(12, [1, 2, 5, 13, 14, 40, 300, 301]),
                                     (12, [500, 1000]), (3, [2, 4, 100, 257])])
def test_extend_equals_rebuild(k, sizes):
    idx, q = nb.neighbour_table(sizes[0], k)
    for V in sizes[1:]:
        idx, q = nb.extend_neighbour_table(idx, q, V, k)
        full_idx, full_q = nb.neighbour_table(V, k)
        assert np.array_equal(idx, full_idx) and np.array_equal(q, full_q)
        assert idx.dtype == np.int32 and q.dtype == np.float32


def test_extend_rejects_foreign_tables():
    idx, q = nb.neighbour_table(100)
    with pytest.raises(ValueError, match="same k"):
        nb.extend_neighbour_table(idx, q, 200, k=5)
    q2 = q.copy()
    q2[7, 0] += 0.01
    with pytest.raises(ValueError, match="does not match"):
        nb.extend_neighbour_table(idx, q2, 200)
    with pytest.raises(ValueError):
        nb.extend_neighbour_table(idx, q, 50)                      # vocabularies only grow


def test_token_neighbours_and_describe():
    idx, q = nb.neighbour_table(500)
    for t in (0, 7, 143, 499):
        ids, s, qt = nb.token_neighbours(t, 500)
        assert np.array_equal(ids, idx[t]) and np.array_equal(qt, q[t])
        assert np.array_equal(s, nb.crystalline_similarity(t, ids.astype(np.int64)))
    info = nb.describe_token(13, 500)
    assert info["ulam"] == (1, 2) and info["symmetry_group"] == 1   # n = 14 on the spiral
    assert info["clock"] == {"ring": 1, "pos": 1, "ring_size": 60}
    assert [n["token"] for n in info["neighbours"]] == idx[13].tolist()
    with pytest.raises(ValueError):
        nb.token_neighbours(500, 500)
