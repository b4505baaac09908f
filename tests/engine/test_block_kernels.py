"""The recipe's kernels (engine.block_kernels) against plain numpy: forward values, and each
backward against the analytic derivative checked by central differences in float64."""
import numpy as np
import pytest

from engine import block_kernels as BK

RNG = np.random.default_rng(11)


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def numeric_vjp(f, x, dout, eps=1e-6):
    """d/dx of sum(f(x) * dout) by central differences, float64."""
    x = x.astype(np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = (f(x) * dout).sum()
        x[i] = old - eps
        fm = (f(x) * dout).sum()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def test_embedding_without_positions():
    V, B, T, C = 7, 2, 3, 4
    wte, inp = randn(V, C), RNG.integers(0, V, (B, T))
    out = np.empty((B, T, C), np.float32)
    BK.embed_forward(out, inp, wte)
    close(out, wte[inp])
    dwte, dout = np.ones((V, C), np.float32), randn(B, T, C)
    BK.embed_backward(dwte, dout, inp)
    want = np.ones((V, C))
    np.add.at(want, inp.reshape(-1), dout.reshape(-1, C))
    close(dwte, want)


def test_relu2_forward_and_backward():
    x = randn(5, 8)
    x[0, :3] = 0.0                                   # the kink: derivative 0 there
    out = np.empty_like(x)
    BK.relu2_forward(out, x)
    close(out, np.maximum(x, 0) ** 2)
    dout, dinp = randn(5, 8), np.empty_like(x)
    BK.relu2_backward(dinp, x, dout)
    close(dinp, dout * 2 * np.maximum(x, 0))
    y = x.copy()
    BK.relu2_forward(y, y)                           # in place, as the decoder calls it
    close(y, out)


def rms_ref(qkv, wq, wk, NH, eps=BK.RMS_EPS):
    N, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    out = qkv.astype(np.float64).copy()
    for part, w in ((0, wq), (1, wk)):
        x = out[:, part * C:(part + 1) * C].reshape(N, NH, hs)
        x = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w
        out[:, part * C:(part + 1) * C] = x.reshape(N, C)
    return out


@pytest.mark.parametrize("NH,hs", [(2, 4), (3, 6)])
def test_head_rmsnorm_forward_and_backward(NH, hs):
    N, C = 4, NH * hs
    qkv = randn(N, 3 * C, scale=2.0)
    wq, wk = randn(hs) + 1, randn(hs) + 1
    got = qkv.copy()
    raw, rstd = np.empty((N, 2 * C), np.float32), np.empty((N, 2 * NH), np.float32)
    BK.head_rmsnorm_forward(got, raw, rstd, wq, wk)
    close(got, rms_ref(qkv, wq, wk, NH))
    assert np.array_equal(raw, qkv[:, :2 * C]) and np.array_equal(got[:, 2 * C:], qkv[:, 2 * C:])
    dout = randn(N, 3 * C)
    d = dout.copy()
    dwq, dwk = np.ones(hs, np.float32), np.ones(hs, np.float32)
    BK.head_rmsnorm_backward(d, dwq, dwk, raw, rstd, wq, wk)
    close(d[:, :2 * C], numeric_vjp(lambda x: rms_ref(x, wq, wk, NH), qkv, dout)[:, :2 * C], 1e-4)
    assert np.array_equal(d[:, 2 * C:], dout[:, 2 * C:])      # v's gradient passes untouched
    close(dwq, 1 + numeric_vjp(lambda w: rms_ref(qkv, w, wk, NH), wq, dout), 1e-4)
    close(dwk, 1 + numeric_vjp(lambda w: rms_ref(qkv, wq, w, NH), wk, dout), 1e-4)


def rope_ref(qkv, pos, NH, base):
    N, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    half = hs // 2
    ang = np.asarray(pos)[:, None] * base ** (-np.arange(0, hs, 2) / hs)[None, :]   # (N, half)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = qkv.astype(np.float64).copy()
    for part in range(2):
        x = out[:, part * C:(part + 1) * C].reshape(N, NH, hs)
        a, b = x[..., :half], x[..., half:]
        out[:, part * C:(part + 1) * C] = np.concatenate(
            [a * cos - b * sin, a * sin + b * cos], -1).reshape(N, C)
    return out


def test_rope_rotates_q_and_k_by_position_and_turns_back():
    NH, hs, T = 2, 6, 9
    C = NH * hs
    pos = np.asarray([0, 3, 8, 5], np.int64)
    qkv = randn(len(pos), 3 * C)
    cos, sin = BK.rope_tables(T, hs, 10000.0)
    got = qkv.copy()
    BK.rope_rotate(got, cos, sin, pos, NH, np.float32(1.0))
    close(got, rope_ref(qkv, pos, NH, 10000.0))
    assert np.array_equal(got[0], qkv[0])                     # position 0: no turn
    BK.rope_rotate(got, cos, sin, pos, NH, np.float32(-1.0))   # the backward: the inverse
    close(got, qkv)
    # the backward is the transpose: <R x, d> == <x, R^T d>
    d = randn(len(pos), 3 * C)
    rd = d.copy()
    BK.rope_rotate(rd, cos, sin, pos, NH, np.float32(-1.0))
    close((rope_ref(qkv, pos, NH, 10000.0) * d)[:, :2 * C].sum(), (qkv * rd)[:, :2 * C].sum(), 1e-4)


def test_rotary_scores_depend_only_on_the_distance():
    """q.k of vectors turned to positions (m, n) equals that at (m + s, n + s)."""
    NH, hs, T = 1, 8, 16
    C = NH * hs
    cos, sin = BK.rope_tables(T, hs, 10000.0)
    row = randn(1, 3 * C)

    def score(m, n):
        a, b = row.copy(), row.copy()
        a[0, C:2 * C] = row[0, :C]                             # k of b is q of a's source
        BK.rope_rotate(a, cos, sin, np.asarray([m]), NH, np.float32(1.0))
        BK.rope_rotate(b, cos, sin, np.asarray([n]), NH, np.float32(1.0))
        return float(a[0, :C] @ b[0, C:2 * C])

    assert score(5, 2) == pytest.approx(score(12, 9), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


@pytest.mark.parametrize("cap", [1.5, 30.0])
def test_softcap_forward_and_backward(cap):
    x = randn(3, 50, scale=20.0)
    got, th = x.copy(), np.empty_like(x)
    BK.softcap_forward(got, th, cap)
    close(got, cap * np.tanh(x.astype(np.float64) / cap), 2e-5 * cap)
    assert np.abs(got).max() <= cap
    d = randn(3, 50)
    want = d * (1 - np.tanh(x.astype(np.float64) / cap) ** 2)
    BK.softcap_backward(d, th)
    close(d, want, 1e-4)
