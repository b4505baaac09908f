"""Every numba kernel against a plain-numpy reference, with corner cases (T=1, ignored rows)."""
import math

import numpy as np
import pytest

from engine import kernels as K
from tests.engine.reference import gelu, layernorm, softmax, token_losses

RNG = np.random.default_rng(1234)


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("B,T", [(2, 5), (1, 1)])
def test_encoder_forward_backward(B, T):
    V, C, Tm = 7, 4, 6
    wte, wpe = randn(V, C), randn(Tm, C)
    inp = RNG.integers(0, V, (B, T))
    out = np.empty((B, T, C), np.float32)
    K.encoder_forward(out, inp, wte, wpe[:T])
    close(out, wte[inp] + wpe[:T][None])
    dout = randn(B, T, C)
    dwte, dwpe = np.ones((V, C), np.float32), np.ones((Tm, C), np.float32)
    K.encoder_backward(dwte, dwpe[:T], dout, inp)
    ref_wte = np.ones((V, C))
    np.add.at(ref_wte, inp.reshape(-1), dout.reshape(-1, C))
    close(dwte, ref_wte)
    close(dwpe[:T], 1 + dout.sum(0))
    close(dwpe[T:], 1)   # untouched rows


@pytest.mark.parametrize("N,C", [(6, 8), (1, 3)])
def test_layernorm_forward_backward(N, C):
    x, w, b = randn(N, C, scale=3.0), randn(C), randn(C)
    out, mean, rstd = np.empty((N, C), np.float32), np.empty(N, np.float32), np.empty(N, np.float32)
    K.layernorm_forward(out, mean, rstd, x, w, b)
    close(out, layernorm(x.astype(np.float64), w, b), rtol=1e-4, atol=1e-5)
    close(mean, x.mean(1))
    # backward vs central differences of the float64 reference
    dout = randn(N, C)
    dinp, dw, db = np.full((N, C), 0.5, np.float32), np.zeros(C, np.float32), np.zeros(C, np.float32)
    K.layernorm_backward(dinp, dw, db, dout, x, w, mean, rstd)
    x64 = x.astype(np.float64)
    f = lambda xx, ww, bb: float((layernorm(xx, ww, bb) * dout).sum())
    eps = 1e-6
    num_dx = np.zeros_like(x64)
    for i in range(N):
        for c in range(C):
            xp, xm = x64.copy(), x64.copy()
            xp[i, c] += eps
            xm[i, c] -= eps
            num_dx[i, c] = (f(xp, w, b) - f(xm, w, b)) / (2 * eps)
    close(dinp, 0.5 + num_dx, rtol=1e-3, atol=1e-4)   # accumulates onto 0.5
    norm = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    close(dw, (dout * norm).sum(0), rtol=1e-4, atol=1e-4)
    close(db, dout.sum(0))


def test_bias_kernels():
    out, b, r = randn(5, 3), randn(3), randn(5, 3)
    ref = out + b + r
    K.bias_residual_forward(out, b, r)
    close(out, ref)
    o2 = randn(5, 3)
    ref2 = o2 + b
    K.bias_forward(o2, b)
    close(o2, ref2)
    db = np.ones(3, np.float32)
    K.bias_backward(db, r)
    close(db, 1 + r.sum(0))


def test_gelu_forward_backward():
    x = np.concatenate([randn(1, 50, scale=3.0),
                        np.array([[0.0, -20.0, 20.0, 1e-4, -1e-4, 60.0, -60.0]], np.float32)
                        ], axis=1)
    out, th = np.empty_like(x), np.empty_like(x)
    K.gelu_forward(out, th, x)
    close(out, gelu(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert np.isfinite(out).all()
    dout = randn(*x.shape)
    dinp = np.empty_like(x)
    K.gelu_backward(dinp, x, th, dout)
    x64, eps = x.astype(np.float64), 1e-6
    num = (gelu(x64 + eps) - gelu(x64 - eps)) / (2 * eps) * dout
    close(dinp, num, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", [1, 2, 7])
def test_attention_softmax_forward_backward(T):
    B, NH, scale = 2, 3, 0.37
    s = randn(B, NH, T, T, scale=2.0)
    att = s.copy()
    K.attention_softmax_forward(att, scale)
    mask = np.tril(np.ones((T, T), bool))
    ref = softmax(np.where(mask, scale * s.astype(np.float64), -np.inf))
    close(att, ref, rtol=1e-5, atol=1e-7)
    assert (att[..., ~mask] == 0).all()
    dp = randn(B, NH, T, T)
    dscores = dp.copy()
    K.attention_softmax_backward(dscores, att, scale)
    ref_ds = scale * ref * (dp - (ref * dp).sum(-1, keepdims=True))
    close(dscores, np.where(mask, ref_ds, 0.0), rtol=1e-4, atol=1e-6)


def _nbr(V, Kn, normalised=True):
    idx = np.stack([RNG.permutation(V)[:Kn] for _ in range(V)]).astype(np.int32)
    q = RNG.random((V, Kn)).astype(np.float32)
    if normalised:
        q /= q.sum(1, keepdims=True)
    return idx, q


@pytest.mark.parametrize("normalised", [True, False])
@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("targets", [[3, -1, 0, 5, 5], [-1, -1, -1, -1, -1], [2]])
def test_crossentropy_forward_backward(lam, targets, normalised):
    """Exact gradient even when q does not sum to 1 (rounding, or an empty table)."""
    V = 6
    t = np.asarray(targets)
    N = len(t)
    logits = randn(N, V, scale=3.0)
    idx, q = _nbr(V, 3, normalised)
    buf = logits.copy()
    losses = np.empty(N, np.float32)
    n = K.crossentropy_forward(losses, buf, t, idx, q, lam)
    assert n == (t >= 0).sum()
    close(losses, token_losses(logits.astype(np.float64), t, idx, q, lam), rtol=1e-5, atol=1e-6)
    valid = t >= 0
    close(buf[valid], softmax(logits[valid].astype(np.float64)), rtol=1e-5, atol=1e-7)
    scale = 1.0 / max(n, 1)
    fused, fused_losses = logits.copy(), np.empty(N, np.float32)   # the training step's form
    assert K.crossentropy_forward(fused_losses, fused, t, idx, q, lam, True, scale) == n
    np.testing.assert_array_equal(fused_losses, losses)
    # numeric gradient of scale * sum(losses) w.r.t. logits
    l64, eps = logits.astype(np.float64), 1e-6
    num = np.zeros_like(l64)
    for i in range(N):
        for j in range(V):
            lp, lm = l64.copy(), l64.copy()
            lp[i, j] += eps
            lm[i, j] -= eps
            num[i, j] = scale * (token_losses(lp, t, idx, q, lam).sum()
                                 - token_losses(lm, t, idx, q, lam).sum()) / (2 * eps)
    close(fused, num, rtol=1e-3, atol=1e-5)


def test_exp_affine_against_float64():
    x = np.concatenate([np.linspace(-90, 90, 20001), RNG.standard_normal(5000) * 30,
                        [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    for shift, scale in ((0.0, 1.0), (3.5, 0.25), (-2.0, 2.0)):
        got = x.copy()
        K.exp_affine(got, np.float32(shift), np.float32(scale), np.empty(x.size, np.int32))
        v = np.clip(scale * (x.astype(np.float64) - shift), -87.0, 88.0)
        # about 2 ulp, plus the float32 rounding of the argument itself (|v| ulp)
        rel = np.abs(got / np.exp(v) - 1)
        assert (rel <= 2.5e-7 + np.abs(v) * 1.2e-7 * (scale != 1.0 or shift != 0.0)).all()
        assert np.isfinite(got).all()
    nan = np.array([1.0, np.nan, 2.0], np.float32)
    K.exp_affine(nan, np.float32(0.0), np.float32(1.0), np.empty(3, np.int32))
    assert np.isnan(nan[1]) and np.isfinite(nan[[0, 2]]).all()    # NaN is kept, not hidden


def test_crossentropy_lambda_zero_is_plain_ce_bitwise():
    V, N = 9, 4
    logits, t = randn(N, V), np.array([1, 8, -1, 0])
    idx, q = _nbr(V, 4)
    a, b = logits.copy(), logits.copy()
    la, lb = np.empty(N, np.float32), np.empty(N, np.float32)
    K.crossentropy_forward(la, a, t, idx, q, 0.0)
    K.crossentropy_forward(lb, b, t, np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float32), 0.0)
    assert la.tobytes() == lb.tobytes() and a.tobytes() == b.tobytes()


def test_sumsq_and_sum_rows_indexed():
    x = randn(1000)
    assert math.isclose(K.sumsq(x, 10, 900), float((x[10:900].astype(np.float64) ** 2).sum()),
                        rel_tol=1e-12)
    rows = randn(5, 100)
    out = np.full(100, 7.0, np.float32)
    K.sum_rows_indexed(out, rows, np.array([0, 2, 3]), 20, 80)
    close(out[20:80], rows[[0, 2, 3], 20:80].sum(0))
    assert (out[:20] == 7).all() and (out[80:] == 7).all()
    K.sum_rows_indexed(out, rows, np.array([], np.int64), 0, 10)
    assert not out[:10].any()


def _segments():
    starts = np.array([0, 6, 10, 16], np.int64)
    decay = np.array([True, False, True])
    return starts, decay


@pytest.mark.parametrize("lo,hi", [(0, 16), (3, 12), (6, 10)])
def test_adamw_update_matches_reference(lo, hi):
    starts, decay = _segments()
    p, g, m, v = randn(16), randn(16), randn(16, scale=0.1), np.abs(randn(16, scale=0.1))
    lr, b1, b2, eps, wd, bc1, bc2, gs = 1e-2, 0.9, 0.95, 1e-8, 0.1, 1 - 0.9 ** 3, 1 - 0.95 ** 3, 0.5
    rp, rm, rv = p.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    gg = g.astype(np.float64) * gs
    rm2 = b1 * rm + (1 - b1) * gg
    rv2 = b2 * rv + (1 - b2) * gg * gg
    wdv = np.where(np.repeat(decay, np.diff(starts)), wd, 0.0)
    rp2 = rp - lr * ((rm2 / bc1) / (np.sqrt(rv2 / bc2) + eps) + wdv * rp)
    P, M, Vv = p.copy(), m.copy(), v.copy()
    K.adamw_update(P, g, M, Vv, lo, hi, starts, decay, lr, b1, b2, eps, wd, bc1, bc2, gs)
    sl = slice(lo, hi)
    close(P[sl], rp2[sl], rtol=1e-5, atol=1e-6)
    close(M[sl], rm2[sl])
    close(Vv[sl], rv2[sl])
    outside = np.r_[0:lo, hi:16]
    assert (P[outside] == p[outside]).all() and (M[outside] == m[outside]).all()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update_matches_reference(momentum):
    starts, decay = _segments()
    p, g, mom = randn(16), randn(16), randn(16)
    lr, wd, gs = 0.1, 0.01, 0.7
    wdv = np.where(np.repeat(decay, np.diff(starts)), wd, 0.0)
    gg = g.astype(np.float64) * gs
    if momentum:
        gg = momentum * mom + gg
    ref = p - lr * (gg + wdv * p)
    P, M = p.copy(), mom.copy()
    K.sgd_update(P, g, M, 0, 16, starts, decay, lr, momentum, wd, gs)
    close(P, ref, rtol=1e-5, atol=1e-6)
    if momentum:
        close(M, gg)
