"""Numba kernels of the recipe's options (engine.config.ModelConfig: `mlp`, `qk_norm`, `pos`,
`softcap`), paired forward/backward like engine.kernels and under its conventions (shape
legend, float32 arrays, float64 reductions in a fixed order, weight gradients accumulate).

    relu2       relu(x)^2, the MLP activation of modded-nanogpt and Primer
    head_rmsnorm  QK-norm: each head's q and k RMS-normalised with a gain per head channel
                (Qwen3's q_norm / k_norm), in place on the fused qkv rows
    rope        rotary positions in the NeoX/Hugging Face layout: channel i of a head turns
                with channel i + hs/2 by angle pos * base^(-2i/hs), in place on q and k
    softcap     logits = cap * tanh(logits / cap) (Gemma 2's final logit soft-capping)

The numpy references are in tests/engine/test_block_kernels.py; the model's use of them is
checked against the float64 reference model (tests/engine/reference.py) and by finite
differences (tests/engine/test_recipe_model.py).
"""
from __future__ import annotations

import math

import numpy as np

from engine._jit import kernel
from engine.kernels import F32_ONE, F32_TWO, exp_affine

RMS_EPS = 1e-6          # QK-norm's epsilon (Qwen3's rms_norm_eps; the GGUF export writes it)


# --------------------------------------------------------------------------- embedding

@kernel
def embed_forward(out, inp, wte):
    """out (B,T,C) = wte[inp]: the embedding without learned positions (rotary ones)."""
    B, T, C = out.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            for c in range(C):
                out[b, t, c] = wte[ix, c]


@kernel
def embed_backward(dwte, dout, inp):
    """Scatter-add dout (B,T,C) into dwte (V,C), in a fixed order."""
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            for c in range(C):
                dwte[ix, c] += dout[b, t, c]


# ------------------------------------------------------------------------------ relu^2

@kernel
def relu2_forward(out, inp):
    """out (N,D) = max(inp, 0)^2 (out may be inp)."""
    N, D = inp.shape
    for i in range(N):
        for j in range(D):
            x = max(inp[i, j], np.float32(0.0))
            out[i, j] = x * x


@kernel
def relu2_backward(dinp, inp, dout):
    """dinp (N,D) = dout * 2 max(inp, 0) (overwritten)."""
    N, D = inp.shape
    for i in range(N):
        for j in range(D):
            dinp[i, j] = dout[i, j] * F32_TWO * max(inp[i, j], np.float32(0.0))


# ------------------------------------------------------------------------------ QK-norm

@kernel
def head_rmsnorm_forward(qkv, raw, rstd, wq, wk):
    """In place on the q and k thirds of qkv (N,3C) with NH = rstd.shape[1] // 2 heads:
    each head's hs channels x -> x / sqrt(mean(x^2) + eps) * w (wq for q, wk for k, (hs,)).
    Saves the input in raw (N,2C) and 1/rms in rstd (N,2NH) for backward."""
    N = qkv.shape[0]
    C = qkv.shape[1] // 3
    NH = rstd.shape[1] // 2
    hs = C // NH
    for i in range(N):
        for part in range(2):
            w = wq if part == 0 else wk
            for h in range(NH):
                o = part * C + h * hs
                ss = 0.0
                for c in range(hs):
                    x = qkv[i, o + c]
                    raw[i, o + c] = x
                    ss += x * x
                r = 1.0 / math.sqrt(ss / hs + RMS_EPS)
                rstd[i, part * NH + h] = r
                for c in range(hs):
                    qkv[i, o + c] = np.float32(qkv[i, o + c] * r) * w[c]


@kernel
def head_rmsnorm_backward(dqkv, dwq, dwk, raw, rstd, wq, wk):
    """In place on the q and k thirds of dqkv (N,3C): d normalised -> d input;
    dwq, dwk (hs,) += sum of d normalised * x / rms (accumulate)."""
    N = dqkv.shape[0]
    C = dqkv.shape[1] // 3
    NH = rstd.shape[1] // 2
    hs = C // NH
    acc = np.zeros((2, hs), np.float64)
    for i in range(N):
        for part in range(2):
            w = wq if part == 0 else wk
            for h in range(NH):
                o = part * C + h * hs
                r = rstd[i, part * NH + h]
                dot = 0.0
                for c in range(hs):
                    xh = raw[i, o + c] * r
                    dy = dqkv[i, o + c]
                    acc[part, c] += dy * xh
                    dot += w[c] * dy * xh
                dot /= hs
                for c in range(hs):
                    xh = raw[i, o + c] * r
                    dqkv[i, o + c] = r * (w[c] * dqkv[i, o + c] - xh * dot)
    for c in range(hs):
        dwq[c] += acc[0, c]
        dwk[c] += acc[1, c]


# ------------------------------------------------------------------------------ rotary

def rope_tables(T: int, hs: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (T, hs/2) float32 of the angles t * base^(-2i/hs), computed in float64."""
    inv = base ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@kernel
def rope_rotate(qkv, cos, sin, pos, n_heads, sign):
    """In place on the q and k thirds of qkv (N,3C): row i's heads turn by the angles of
    position pos[i] (cos, sin (T, hs/2)); channel j pairs with j + hs/2. sign -1 turns back
    (the backward of sign +1: a rotation's transpose is its inverse)."""
    N = qkv.shape[0]
    C = qkv.shape[1] // 3
    hs = C // n_heads
    half = hs // 2
    for i in range(N):
        p = pos[i]
        for part in range(2):
            for h in range(n_heads):
                o = part * C + h * hs
                for j in range(half):
                    c = cos[p, j]
                    s = sign * sin[p, j]
                    x0 = qkv[i, o + j]
                    x1 = qkv[i, o + j + half]
                    qkv[i, o + j] = x0 * c - x1 * s
                    qkv[i, o + j + half] = x0 * s + x1 * c


# ------------------------------------------------------------------------------ soft-cap

@kernel
def softcap_forward(logits, th, cap):
    """In place on logits (N,V): x -> cap * tanh(x / cap); caches th (N,V) = tanh(x / cap).
    tanh(u) = 1 - 2 / (exp(2u) + 1) with the vectorised exp_affine (as gelu_forward)."""
    N, V = logits.shape
    bits = np.empty(V, np.int32)
    inv = np.float32(1.0 / cap)
    capf = np.float32(cap)
    for i in range(N):
        t = th[i]
        for j in range(V):
            t[j] = logits[i, j]
        exp_affine(t, np.float32(0.0), F32_TWO * inv, bits)
        for j in range(V):
            tj = F32_ONE - F32_TWO / (t[j] + F32_ONE)
            t[j] = tj
            logits[i, j] = capf * tj


@kernel
def softcap_backward(dlogits, th):
    """In place on dlogits (N,V): d capped -> d raw = d capped * (1 - th^2)."""
    N, V = dlogits.shape
    for i in range(N):
        for j in range(V):
            t = th[i, j]
            dlogits[i, j] *= F32_ONE - t * t
