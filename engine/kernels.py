"""Numba kernels of the GPT engine: paired forward/backward passes, the fused softmax
cross-entropy (with the optional crystalline prior term), and the optimizer updates.

Shape legend (used in every signature below):
    B = batch, T = time (sequence length), C = channels, V = vocabulary,
    NH = heads, hs = head size (C // NH), N = B * T rows.

Conventions (after llm.c):
- forward:  x_forward(out, cache..., inp, weights..., dims)
- backward: x_backward(dinp, dweights..., dout, inp, weights..., cache...)
- Weight gradients (`dw`, `db`, `dwte`, `dwpe`) ACCUMULATE with `+=`; each kernel says
  whether `dinp` accumulates or is overwritten.
- Kernels assume C-contiguous float32 / int32-or-int64 arrays; the model validates at its
  boundary. Matmuls are not here: they go to BLAS through numpy.
- Reductions run in float64 and in a fixed order, so results are deterministic.

What is deliberately not here: parameter layout (engine.params), orchestration of layers
(engine.model), threading (engine.spheres).
"""
from __future__ import annotations

import math

import numpy as np

from engine._jit import kernel

GELU_SCALE = np.float32(math.sqrt(2.0 / math.pi))
GELU_CUBIC = np.float32(0.044715)
LN_EPS = 1e-5
F32_ONE = np.float32(1.0)
F32_HALF = np.float32(0.5)
F32_TWO = np.float32(2.0)
F32_NEG_INF = np.float32(-np.inf)


# ----------------------------------------------------------------------------- encoder

@kernel
def encoder_forward(out, inp, wte, wpe):
    """out (B,T,C) = wte[inp] + wpe[t]; inp (B,T) ints."""
    B, T, C = out.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            for c in range(C):
                out[b, t, c] = wte[ix, c] + wpe[t, c]


@kernel
def encoder_backward(dwte, dwpe, dout, inp):
    """Scatter-add dout (B,T,C) into dwte (V,C) and dwpe (T,C), in a fixed order."""
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            for c in range(C):
                d = dout[b, t, c]
                dwte[ix, c] += d
                dwpe[t, c] += d


# --------------------------------------------------------------------------- layernorm

@kernel
def layernorm_forward(out, mean, rstd, inp, w, b):
    """out (N,C) = (inp - mean) * rstd * w + b; caches mean (N,), rstd (N,) for backward."""
    N, C = inp.shape
    for i in range(N):
        m = 0.0
        for c in range(C):
            m += inp[i, c]
        m /= C
        v = 0.0
        for c in range(C):
            d = inp[i, c] - m
            v += d * d
        v /= C
        s = 1.0 / math.sqrt(v + LN_EPS)
        for c in range(C):
            out[i, c] = (inp[i, c] - m) * s * w[c] + b[c]
        mean[i] = m
        rstd[i] = s


@kernel
def layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd):
    """dinp (N,C) += ...; dw (C,) += ...; db (C,) += ... (all accumulate)."""
    N, C = inp.shape
    dw64 = np.zeros(C, np.float64)
    db64 = np.zeros(C, np.float64)
    for i in range(N):
        m = mean[i]
        s = rstd[i]
        dnorm_mean = 0.0
        dnorm_norm_mean = 0.0
        for c in range(C):
            norm = (inp[i, c] - m) * s
            dnorm = w[c] * dout[i, c]
            dnorm_mean += dnorm
            dnorm_norm_mean += dnorm * norm
            db64[c] += dout[i, c]
            dw64[c] += norm * dout[i, c]
        dnorm_mean /= C
        dnorm_norm_mean /= C
        for c in range(C):
            norm = (inp[i, c] - m) * s
            dnorm = w[c] * dout[i, c]
            dinp[i, c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s
    for c in range(C):
        dw[c] += dw64[c]
        db[c] += db64[c]


# ------------------------------------------------------------------------------ linear

@kernel
def bias_residual_forward(out, b, residual):
    """out (N,D) += b (D,) + residual (N,D): the epilogue of `x @ W + b + x_skip`."""
    N, D = out.shape
    for i in range(N):
        for j in range(D):
            out[i, j] += b[j] + residual[i, j]


@kernel
def bias_forward(out, b):
    """out (N,D) += b (D,)."""
    N, D = out.shape
    for i in range(N):
        for j in range(D):
            out[i, j] += b[j]


@kernel
def bias_backward(db, dout):
    """db (D,) += column sums of dout (N,D), accumulated in float64."""
    N, D = dout.shape
    acc = np.zeros(D, np.float64)
    for i in range(N):
        for j in range(D):
            acc[j] += dout[i, j]
    for j in range(D):
        db[j] += acc[j]


# -------------------------------------------------------------------------------- gelu

@kernel
def gelu_forward(out, th, inp):
    """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); caches th = tanh(.) for backward.

    tanh(u) is evaluated as 1 - 2 / (exp(2u) + 1) (LLVM's exp), which is exact to float32
    round-off, saturates correctly at +-1 and is several times faster than scalar tanh.
    """
    N, D = inp.shape
    for i in range(N):
        for j in range(D):
            x = inp[i, j]
            u = GELU_SCALE * (x + GELU_CUBIC * x * x * x)
            t = F32_ONE - F32_TWO / (math.exp(F32_TWO * u) + F32_ONE)
            th[i, j] = t
            out[i, j] = F32_HALF * x * (F32_ONE + t)


@kernel
def gelu_backward(dinp, inp, th, dout):
    """dinp (N,D) = dout * gelu'(inp) (overwritten), using the cached tanh th."""
    N, D = inp.shape
    for i in range(N):
        for j in range(D):
            x = inp[i, j]
            t = th[i, j]
            sech2 = F32_ONE - t * t
            du = GELU_SCALE * (F32_ONE + np.float32(3.0) * GELU_CUBIC * x * x)
            dinp[i, j] = dout[i, j] * (F32_HALF * (F32_ONE + t) + F32_HALF * x * sech2 * du)


# ---------------------------------------------------------------------------- attention

@kernel
def attention_softmax_forward(att, scale):
    """In place on att (B,NH,T,T): raw scores q.k -> causal softmax of scale * scores.

    Row t keeps columns 0..t; columns > t are set to 0. The result is the cache for backward.
    """
    B, NH, T, _ = att.shape
    sc = np.float32(scale)
    for b in range(B):
        for h in range(NH):
            for t in range(T):
                row = att[b, h, t]
                mx = F32_NEG_INF
                for j in range(t + 1):
                    if row[j] > mx:
                        mx = row[j]
                s = np.float32(0.0)
                for j in range(t + 1):
                    e = math.exp(sc * (row[j] - mx))
                    row[j] = e
                    s += e
                inv = F32_ONE / s
                for j in range(t + 1):
                    row[j] *= inv
                for j in range(t + 1, T):
                    row[j] = 0.0


@kernel
def attention_softmax_backward(datt, att, scale):
    """In place on datt (B,NH,T,T): d(probs) -> d(raw scores), given probs att (the cache)."""
    B, NH, T, _ = att.shape
    for b in range(B):
        for h in range(NH):
            for t in range(T):
                p = att[b, h, t]
                dp = datt[b, h, t]
                dot = np.float32(0.0)
                for j in range(t + 1):
                    dot += p[j] * dp[j]
                sc = np.float32(scale)
                for j in range(t + 1):
                    dp[j] = sc * p[j] * (dp[j] - dot)
                for j in range(t + 1, T):
                    dp[j] = 0.0


@kernel
def attention_decode(out, q, kcache, vcache, n, scale):
    """One decoding position against a KV cache.

    out (NH,hs) = softmax(scale * q . k[:n]) @ v[:n]; q (NH,hs); kcache, vcache (NH,Tmax,hs).
    """
    NH, hs = q.shape
    w = np.empty(n, np.float32)
    for h in range(NH):
        mx = F32_NEG_INF
        for j in range(n):
            d = np.float32(0.0)
            for c in range(hs):
                d += q[h, c] * kcache[h, j, c]
            d *= np.float32(scale)
            w[j] = d
            if d > mx:
                mx = d
        s = np.float32(0.0)
        for j in range(n):
            e = math.exp(w[j] - mx)
            w[j] = e
            s += e
        inv = F32_ONE / s
        for c in range(hs):
            out[h, c] = 0.0
        for j in range(n):
            p = w[j] * inv
            for c in range(hs):
                out[h, c] += p * vcache[h, j, c]


# ---------------------------------------------------------------- fused cross-entropy

@kernel
def crossentropy_prepare(stats, logits, targets, nbr_idx, nbr_q, lam):
    """First pass of the fused softmax cross-entropy, IN PLACE on logits (N,V).

    Valid rows (target >= 0) are shifted by their max; rows with target < 0 are zeroed
    (they carry no loss or gradient). stats (N,3) records, per row, [max, shifted target
    logit, sum_k q_k (log q_k - shifted logit_k)] (the crystalline part is 0 when lam == 0).
    The caller then exponentiates the whole buffer (numpy's SIMD exp) and calls
    crossentropy_finish. Returns the number of valid rows.
    """
    N, V = logits.shape
    K = nbr_idx.shape[1]
    n_valid = 0
    for i in range(N):
        t = targets[i]
        row = logits[i]
        if t < 0:
            for j in range(V):
                row[j] = 0.0
            stats[i, 0] = 0.0
            stats[i, 1] = 0.0
            stats[i, 2] = 0.0
            continue
        n_valid += 1
        mx = F32_NEG_INF
        for j in range(V):
            if row[j] > mx:
                mx = row[j]
        for j in range(V):
            row[j] -= mx
        stats[i, 0] = mx
        stats[i, 1] = row[t]
        acc = 0.0
        if lam != 0.0:
            for k in range(K):
                qk = nbr_q[t, k]
                if qk > 0.0:
                    acc += qk * (math.log(qk) - row[nbr_idx[t, k]])
        stats[i, 2] = acc
    return n_valid


@kernel
def crossentropy_finish(losses, probs, stats, targets, nbr_q, lam):
    """Last pass: probs (N,V) holds exp(shifted logits); normalise IN PLACE to softmax
    probabilities (the cache for backward: no second V-wide copy exists) and write
        losses[i] = -log p[target] + lam * KL(q(.|target) || p)      (0 for target < 0).
    """
    N, V = probs.shape
    K = nbr_q.shape[1]
    for i in range(N):
        t = targets[i]
        if t < 0:
            losses[i] = 0.0
            continue
        row = probs[i]
        s = 0.0
        for j in range(V):
            s += row[j]
        lse = math.log(s)                      # log-sum-exp of the shifted row
        loss = lse - stats[i, 1]
        if lam != 0.0:
            qsum = 0.0
            for k in range(K):
                qsum += nbr_q[t, k]
            # KL(q || p) = sum_k q_k (log q_k - shifted_k + lse)
            loss += lam * (stats[i, 2] + qsum * lse)
        losses[i] = loss
        inv = np.float32(1.0 / s)
        for j in range(V):
            row[j] *= inv


def crossentropy_forward(losses, logits, targets, nbr_idx, nbr_q, lam):
    """Fused softmax + cross-entropy (+ crystalline prior), IN PLACE on logits (N,V).

    Valid rows of logits become softmax probabilities; rows with target < 0 get loss 0
    (their buffer contents are unspecified and backward zeroes them). Returns the count of
    valid rows. Three passes: numba shift, numpy SIMD exp (GIL released), numba normalise.
    """
    stats = np.empty((logits.shape[0], 3), np.float64)
    n = crossentropy_prepare(stats, logits, targets, nbr_idx, nbr_q, lam)
    np.exp(logits, out=logits)
    crossentropy_finish(losses, logits, stats, targets, nbr_q, lam)
    return n


@kernel
def crossentropy_backward(probs, targets, nbr_idx, nbr_q, lam, scale):
    """IN PLACE on probs (N,V) -> dlogits (overwritten).

    dlogits = scale * ((1 + lam sum(q)) p - onehot(target) - lam * q(.|target)) for valid rows,
    0 for rows with target < 0. `scale` is 1 / (global count of valid targets).
    """
    N, V = probs.shape
    K = nbr_idx.shape[1]
    for i in range(N):
        t = targets[i]
        row = probs[i]
        if t < 0:
            for j in range(V):
                row[j] = 0.0
            continue
        # d KL(q || p) / d logits = (sum_k q_k) p - q; sum_k q_k is 1 up to rounding, and
        # 0 for an empty neighbour table, so use the row's actual sum (exact gradient)
        qsum = 0.0
        if lam != 0.0:
            for k in range(K):
                qsum += nbr_q[t, k]
        a = np.float32(scale * (1.0 + lam * qsum))
        for j in range(V):
            row[j] *= a
        row[t] -= scale
        if lam != 0.0:
            for k in range(K):
                row[nbr_idx[t, k]] -= scale * lam * nbr_q[t, k]


# --------------------------------------------------------------------------- optimizer

@kernel
def sumsq(x, lo, hi):
    """Sum of squares of x[lo:hi] in float64 (a segment's share of the global grad norm)."""
    acc = 0.0
    for i in range(lo, hi):
        v = np.float64(x[i])
        acc += v * v
    return acc


@kernel
def sum_rows_indexed(out, rows, which, lo, hi):
    """out[lo:hi] = sum of rows[r, lo:hi] for r in `which`, added in that order
    (deterministic); out[lo:hi] = 0 when `which` is empty."""
    if which.size == 0:
        for i in range(lo, hi):
            out[i] = 0.0
        return
    r0 = which[0]
    for i in range(lo, hi):
        out[i] = rows[r0, i]
    for k in range(1, which.size):
        r = which[k]
        for i in range(lo, hi):
            out[i] += rows[r, i]


@kernel
def adamw_update(params, grads, m, v, lo, hi, starts, decay, lr, beta1, beta2, eps,
                 weight_decay, bc1, bc2, grad_scale):
    """AdamW on the flat segment [lo, hi).

    starts (P+1,) are tensor offsets in the flat layout and decay (P,) says which tensors
    get decoupled weight decay. grad_scale folds in gradient clipping; bc1, bc2 are the
    bias corrections 1 - beta^step.
    """
    ti = np.searchsorted(starts, lo, side="right") - 1
    i = lo
    while i < hi:
        end = min(hi, starts[ti + 1])
        wd = weight_decay if decay[ti] else 0.0
        for j in range(i, end):
            g = grads[j] * grad_scale
            mj = beta1 * m[j] + (1.0 - beta1) * g
            vj = beta2 * v[j] + (1.0 - beta2) * g * g
            m[j] = mj
            v[j] = vj
            mhat = mj / bc1
            vhat = vj / bc2
            params[j] -= lr * (mhat / (math.sqrt(vhat) + eps) + wd * params[j])
        i = end
        ti += 1


@kernel
def sgd_update(params, grads, mom, lo, hi, starts, decay, lr, momentum, weight_decay,
               grad_scale):
    """SGD with momentum (mom = momentum * mom + g; p -= lr * (mom + wd * p)) on [lo, hi)."""
    ti = np.searchsorted(starts, lo, side="right") - 1
    i = lo
    while i < hi:
        end = min(hi, starts[ti + 1])
        wd = weight_decay if decay[ti] else 0.0
        for j in range(i, end):
            g = grads[j] * grad_scale
            if momentum != 0.0:
                g = momentum * mom[j] + g
                mom[j] = g
            params[j] -= lr * (g + wd * params[j])
        i = end
        ti += 1
