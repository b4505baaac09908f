"""engine.lattice against straightforward references: a step-by-step spiral walk, a
ring-by-ring clock walk, the embedding's formula written out."""
import math

import numpy as np
import pytest

from engine import lattice as lat
from engine.numeric import all_finite

# ------------------------------------------------------------------------ references


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


# ----------------------------------------------------------------------- Ulam spiral

KNOWN_5x5 = [[17, 16, 15, 14, 13],
             [18, 5, 4, 3, 12],
             [19, 6, 1, 2, 11],
             [20, 7, 8, 9, 10],
             [21, 22, 23, 24, 25]]


def test_ulam_1_to_25_known_layout():
    xs, ys = lat.ulam_coords(np.arange(1, 26))
    grid = [[0] * 5 for _ in range(5)]
    for n, x, y in zip(range(1, 26), xs, ys):
        grid[2 - y][x + 2] = n                       # top row is y = +2
    assert grid == KNOWN_5x5
    assert lat.ulam_coords(1) == (0, 0) and lat.ulam_coords(2) == (1, 0)
    assert lat.ulam_coords(3) == (1, 1)


def test_ulam_matches_walk_and_inverts():
    n = np.arange(1, 2001)
    xs, ys = lat.ulam_coords(n)
    assert list(zip(xs.tolist(), ys.tolist())) == [SPIRAL[i] for i in range(1, 2001)]
    assert lat.ulam_index(xs, ys).tolist() == n.tolist()
    # every lattice point of the 45 x 45 square is hit exactly once by 1..45^2
    gx, gy = np.meshgrid(np.arange(-22, 23), np.arange(-22, 23))
    assert sorted(lat.ulam_index(gx, gy).ravel().tolist()) == list(range(1, 45 * 45 + 1))


@pytest.mark.parametrize("start", [10**6, 10**12 - 7, 10**15, 4 * 10**17 + 3])
def test_ulam_large_n(start):
    n = np.arange(start, start + 500, dtype=np.int64)
    xs, ys = lat.ulam_coords(n)
    ring = np.array([(math.isqrt(int(v) - 1) + 1) // 2 for v in n])
    assert (np.maximum(abs(xs), abs(ys)) == ring).all()
    assert ((abs(np.diff(xs)) + abs(np.diff(ys))) == 1).all()      # the walk takes unit steps
    assert (lat.ulam_index(xs, ys) == n).all()
    k = (math.isqrt(start) + 1) // 2                                # (2k+1)^2 ends at (k, -k)
    assert lat.ulam_coords((2 * k + 1) ** 2) == (k, -k)


def test_ulam_rejects_zero():
    with pytest.raises(ValueError):
        lat.ulam_coords(np.array([3, 0]))


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
    ring, pos, size = lat.clock_position(np.arange(n))
    assert list(zip(ring.tolist(), pos.tolist(), size.tolist())) == walk_clock(n)
    for idx, expect in [(0, (0, 0, 12)), (11, (0, 11, 12)), (12, (1, 0, 60)),
                        (131, (2, 59, 60)), (132, (3, 0, 100)), (232, (4, 0, 1000)),
                        (1231, (4, 999, 1000)), (1232, (5, 0, 1000)),
                        (10**9, (4 + (10**9 - 232) // 1000, (10**9 - 232) % 1000, 1000))]:
        assert lat.clock_position(idx) == expect
    with pytest.raises(ValueError):
        lat.clock_position(-1)


def test_symmetry_group():
    assert lat.symmetry_group(np.arange(30)).tolist() == [i % 12 for i in range(30)]
    assert lat.symmetry_group(10**12 + 5) == (10**12 + 5) % 12


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
    E = lat.lattice_embedding(V, C, std=std)
    assert E.shape == (V, C) and E.dtype == np.float32
    np.testing.assert_allclose(E, ref_lattice(V, C, std), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(E.astype(np.float64), axis=1),
                               std * math.sqrt(C), rtol=1e-5)
    assert np.array_equal(E, lat.lattice_embedding(V, C, std=std))   # deterministic


def test_lattice_embedding_large_vocab_is_finite_with_normal_scale():
    E = lat.lattice_embedding(20_000, 7, std=0.5)
    assert all_finite(E)
    np.testing.assert_allclose(np.linalg.norm(E.astype(np.float64), axis=1),
                               0.5 * math.sqrt(7), rtol=1e-5)
    # rows where cos(2 pi (t mod 12)/12) vanishes are rescaled, not zero or NaN
    assert (np.abs(E[3::12]).max(1) > 0).all()


def test_rescale_rows_falls_back_on_zero_and_nan_rows():
    E = np.ones((4, 5))
    E[1] = 0.0
    E[2, 3] = np.nan
    out = lat._rescale_rows(E, 0.1, seed=0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 0.1 * math.sqrt(5))
    np.testing.assert_allclose(out[0], 0.1)                            # ones, rescaled
    assert len(set(out[1].tolist())) == 5                              # a random row
    E = np.ones((4, 5))
    E[1] = 0.0
    E[2, 3] = np.nan
    assert np.array_equal(out, lat._rescale_rows(E, 0.1, seed=0))      # seeded
