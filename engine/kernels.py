"""Numba kernels of the GPT engine: paired forward/backward passes, a vectorised exp, the
fused softmax cross-entropy (with the optional crystalline prior term; in the training step
it writes d logits itself), and the optimizer updates.

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

# exp in float32 (Cephes' expf): k = round(x log2 e), r = x - k ln 2 in two parts
# (Cody-Waite), exp(r) by a degree-7 polynomial, 2^k built in the exponent bits
LOG2E = np.float32(1.4426950408889634)
EXP_C1 = np.float32(0.693359375)
EXP_C2 = np.float32(-2.12194440e-4)
EXP_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                      4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
EXP_LO, EXP_HI = np.float32(-87.0), np.float32(88.0)   # 2^k stays a normal float32


# --------------------------------------------------------------------------------- exp

@kernel(fastmath={"nsz", "arcp", "contract", "afn"})     # no reassoc: keeps Cody-Waite exact
def exp_affine(x, shift, scale, bits):
    """x (n,) = exp(scale * (x - shift)) in place, to about 1e-7 relative; arguments are
    clamped to [-87, 88] (below: ~1e-38 instead of 0; above: ~1.6e38, never inf).

    Vectorised: LLVM has no vector exp of its own here (numba's math.exp is a scalar call
    per element), so this is the polynomial above in plain loops, two passes over x, with
    2^k written as int32 exponent bits into `bits` (n,) and read back as float32.
    """
    n = x.shape[0]
    pow2 = bits.view(np.float32)
    p0, p1, p2, p3, p4, p5 = EXP_P
    for j in range(n):
        v = min(max(scale * (x[j] - shift), EXP_LO), EXP_HI)
        k = np.floor(v * LOG2E + F32_HALF)      # float32 (math.floor would be an int64)
        r = v - k * EXP_C1 - k * EXP_C2
        x[j] = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * r * r + r + F32_ONE
        bits[j] = (np.int32(k) + np.int32(127)) << np.int32(23)
    for j in range(n):
        x[j] *= pow2[j]


@kernel
def softmax_inplace(row, scale, bits):
    """row (n,) = softmax(scale * row) in place; bits (n,) int32 scratch of exp_affine."""
    mx = F32_NEG_INF
    for j in range(row.shape[0]):
        if row[j] > mx:
            mx = row[j]
    exp_affine(row, mx, scale, bits)
    s = np.float32(0.0)
    for j in range(row.shape[0]):
        s += row[j]
    inv = F32_ONE / s
    for j in range(row.shape[0]):
        row[j] *= inv


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

    tanh(u) is evaluated as 1 - 2 / (exp(2u) + 1) with the vectorised exp_affine, row by
    row (th holds exp(2u) in between): exact to float32 round-off and saturating at +-1.
    """
    N, D = inp.shape
    bits = np.empty(D, np.int32)
    for i in range(N):
        t = th[i]
        for j in range(D):
            x = inp[i, j]
            t[j] = GELU_SCALE * (x + GELU_CUBIC * x * x * x)
        exp_affine(t, np.float32(0.0), F32_TWO, bits)
        for j in range(D):
            tj = F32_ONE - F32_TWO / (t[j] + F32_ONE)
            t[j] = tj
            out[i, j] = F32_HALF * inp[i, j] * (F32_ONE + tj)


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
    bits = np.empty(T, np.int32)
    for b in range(B):
        for h in range(NH):
            for t in range(T):
                row = att[b, h, t]
                softmax_inplace(row[:t + 1], sc, bits)
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


# ---------------------------------------------------------------- fused cross-entropy

@kernel
def crossentropy_forward(losses, logits, targets, nbr_idx, nbr_q, lam, as_grad=False,
                         grad_scale=1.0):
    """Fused softmax + cross-entropy (+ crystalline prior), IN PLACE on logits (N,V).

    Valid rows (target >= 0) get
        losses[i] = -log p[target] + lam * KL(q(.|target) || p);
    rows with target < 0 are zeroed and get loss 0. Returns the count of valid rows. Valid
    rows become their softmax probabilities p, or with as_grad (the training step) the
    gradient of grad_scale * sum(losses), in the same pass:
        d logits = grad_scale * ((1 + lam sum(q)) p - onehot(target) - lam q(.|target))
    (grad_scale: 1 / the global count of valid targets). One row at a time while it is in
    cache: max, shifted exp (exp_affine), sum, normalise.
    """
    N, V = logits.shape
    K = nbr_idx.shape[1]
    bits = np.empty(V, np.int32)
    n_valid = 0
    for i in range(N):
        t = targets[i]
        row = logits[i]
        if t < 0:
            for j in range(V):
                row[j] = 0.0
            losses[i] = 0.0
            continue
        n_valid += 1
        mx = F32_NEG_INF
        for j in range(V):
            if row[j] > mx:
                mx = row[j]
        shifted_t = row[t] - mx
        kl = 0.0                               # sum_k q_k (log q_k - shifted_k)
        qsum = 0.0
        if lam != 0.0:
            for k in range(K):
                qk = nbr_q[t, k]
                qsum += qk
                if qk > 0.0:
                    kl += qk * (math.log(qk) - (row[nbr_idx[t, k]] - mx))
        exp_affine(row, mx, F32_ONE, bits)
        s = 0.0
        for j in range(V):
            s += row[j]
        lse = math.log(s)                      # log-sum-exp of the shifted row
        loss = lse - shifted_t
        if lam != 0.0:
            loss += lam * (kl + qsum * lse)    # KL(q || p) = sum_k q_k (log q_k - shifted_k + lse)
        losses[i] = loss
        if not as_grad:
            inv = np.float32(1.0 / s)
            for j in range(V):
                row[j] *= inv
            continue
        # d KL(q || p) / d logits = (sum_k q_k) p - q; sum_k q_k is 1 up to rounding, and 0
        # for an empty neighbour table, so the row's actual sum keeps the gradient exact
        a = np.float32(grad_scale * (1.0 + lam * qsum) / s)
        for j in range(V):
            row[j] *= a
        row[t] -= grad_scale
        if lam != 0.0:
            for k in range(K):
                row[nbr_idx[t, k]] -= grad_scale * lam * nbr_q[t, k]
    return n_valid


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
def muon_momentum(grads, m, direction, lo, hi, mu, grad_scale):
    """Muon's elementwise phase on [lo, hi): m = mu m + g, direction = g + mu m (Nesterov);
    the matrix phase (engine.optim.Optimizer.finish_step) orthogonalises the direction."""
    for j in range(lo, hi):
        g = grads[j] * grad_scale
        mj = mu * m[j] + g
        m[j] = mj
        direction[j] = g + mu * mj


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
