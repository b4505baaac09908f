"""Decoding kernels: one numba call per generated token for all layers and all sequences of
a batch, over weight copies laid out for matrix-vector products.

Why a separate path from training's forward: at batch 1 a token is a chain of tiny
matrix-vector products, so the time goes to per-call overhead (about 14 kernel and BLAS
calls per layer) and to streaming the weights. Here one call runs LayerNorm, the fused qkv
product, attention against the KV cache, the projections, GELU and the residuals of every
layer, then the tied head, and the weights stream as int8 (a quarter of float32's bytes)
with one float32 scale per output column, converted to float32 in registers and
accumulated in float32.

`DecodeWeights(model, "int8")` quantises a model's weights (symmetric, per output column:
q = round(w / s), s = max|w| / 127); `"float32"` keeps exact copies and computes what the
training forward computes up to summation order. LayerNorm parameters, biases and the
embedding rows that are looked up (wte, wpe) are always float32.

Shape legend: B sequences, L layers, C channels, NH heads, hs head size, T context,
V vocabulary.
"""
from __future__ import annotations

import math

import numpy as np

from engine._jit import kernel
from engine.block_kernels import (head_rmsnorm_forward, relu2_forward, rope_rotate, rope_tables,
                                  softcap_forward)
from engine.kernels import F32_ONE, gelu_forward, layernorm_forward, softmax_inplace

KINDS = ("int8", "float32")


@kernel
def quantize_columns(q, s, w):
    """q (R,D) int8, s (D,) float32 = per-column symmetric int8 of w (R,D) float32."""
    R, D = w.shape
    mx = np.zeros(D, np.float32)
    for r in range(R):
        for j in range(D):
            a = abs(w[r, j])
            if a > mx[j]:
                mx[j] = a
    for j in range(D):
        s[j] = mx[j] / np.float32(127.0) if mx[j] > 0 else F32_ONE
    for r in range(R):
        for j in range(D):
            q[r, j] = np.int8(round(w[r, j] / s[j]))


@kernel
def fingerprint(x):
    """A 64-bit hash of a float32 array's bits and their positions (stale-copy detection):
    the sum of murmur3's 32-bit finaliser of (bits xor position * golden ratio); 32-bit
    lanes, so it vectorises and runs at the speed of reading the array (5 ms for `base`
    on the 2-core AMD EPYC)."""
    u = x.view(np.uint32)
    acc = np.uint64(0)
    for i in range(u.size):
        z = u[i] ^ (np.uint32(i) * np.uint32(0x9E3779B9))
        z ^= z >> np.uint32(16)
        z *= np.uint32(0x85EBCA6B)
        z ^= z >> np.uint32(13)
        z *= np.uint32(0xC2B2AE35)
        z ^= z >> np.uint32(16)
        acc += np.uint64(z)
    return acc


@kernel
def _matvec(y, x, w, s, bias, scratch):
    """y (B,D) = (x (B,R) @ w (R,D)) * s (D,) + bias (D,); w int8 or float32.

    Four rows of w per pass keep y's traffic low; for B > 1 the four rows are converted once
    into scratch (4,D) float32 and reused by every sequence."""
    B, R = x.shape
    D = w.shape[1]
    for b in range(B):
        for j in range(D):
            y[b, j] = 0.0
    r = 0
    while r + 4 <= R:
        if B == 1:
            x0, x1, x2, x3 = x[0, r], x[0, r + 1], x[0, r + 2], x[0, r + 3]
            for j in range(D):
                y[0, j] += ((x0 * np.float32(w[r, j]) + x1 * np.float32(w[r + 1, j]))
                            + (x2 * np.float32(w[r + 2, j]) + x3 * np.float32(w[r + 3, j])))
        else:
            for k in range(4):
                for j in range(D):
                    scratch[k, j] = np.float32(w[r + k, j])
            b = 0
            while b + 2 <= B:                  # two sequences per pass over the scratch rows
                x0, x1, x2, x3 = x[b, r], x[b, r + 1], x[b, r + 2], x[b, r + 3]
                z0, z1, z2, z3 = x[b + 1, r], x[b + 1, r + 1], x[b + 1, r + 2], x[b + 1, r + 3]
                y0, y1 = y[b], y[b + 1]
                for j in range(D):
                    s0, s1, s2, s3 = scratch[0, j], scratch[1, j], scratch[2, j], scratch[3, j]
                    y0[j] += (x0 * s0 + x1 * s1) + (x2 * s2 + x3 * s3)
                    y1[j] += (z0 * s0 + z1 * s1) + (z2 * s2 + z3 * s3)
                b += 2
            if b < B:
                x0, x1, x2, x3 = x[b, r], x[b, r + 1], x[b, r + 2], x[b, r + 3]
                for j in range(D):
                    y[b, j] += ((x0 * scratch[0, j] + x1 * scratch[1, j])
                                + (x2 * scratch[2, j] + x3 * scratch[3, j]))
        r += 4
    while r < R:
        for b in range(B):
            xr = x[b, r]
            for j in range(D):
                y[b, j] += xr * np.float32(w[r, j])
        r += 1
    for b in range(B):
        for j in range(D):
            y[b, j] = y[b, j] * s[j] + bias[j]


@kernel
def decode_attend(att, qkv, kc, vc, l, pos):
    """Attention of layer l for B sequences at their positions: writes each sequence's key
    and value (from qkv (B,3C)) at pos[b] in kc, vc (B,L,NH,T,hs), then
    att (B,C) = softmax(q . k[:pos+1] / sqrt(hs)) @ v[:pos+1], heads side by side."""
    B = qkv.shape[0]
    C = qkv.shape[1] // 3
    NH, T, hs = kc.shape[2], kc.shape[3], kc.shape[4]
    sc = np.float32(1.0 / math.sqrt(hs))
    w = np.empty(T, np.float32)
    bits = np.empty(T, np.int32)
    for b in range(B):
        p = pos[b]
        for hd in range(NH):
            for c in range(hs):
                kc[b, l, hd, p, c] = qkv[b, C + hd * hs + c]
                vc[b, l, hd, p, c] = qkv[b, 2 * C + hd * hs + c]
        for hd in range(NH):
            kk = kc[b, l, hd]
            vv = vc[b, l, hd]
            for j in range(p + 1):
                d = np.float32(0.0)
                for c in range(hs):
                    d += qkv[b, hd * hs + c] * kk[j, c]
                w[j] = d
            softmax_inplace(w[:p + 1], sc, bits)
            for c in range(hs):
                att[b, hd * hs + c] = 0.0
            for j in range(p + 1):
                pj = w[j]
                for c in range(hs):
                    att[b, hd * hs + c] += pj * vv[j, c]


@kernel
def decode_tokens(logits, x, kc, vc, tokens, pos, wte, wpe, ln1_w, ln1_b, qkv_w, qkv_s,
                  qkv_b, proj_w, proj_s, proj_b, ln2_w, ln2_b, fc_w, fc_s, fc_b, mp_w, mp_s,
                  mp_b, lnf_w, lnf_b, head_w, head_s, relu2, qk_norm, q_norm_w, k_norm_w,
                  rope, rope_cos, rope_sin, softcap, h, qkv, att, fc, th, tmp, scratch,
                  mean, rstd):
    """One decoding step of B sequences: sequence b appends tokens[b] at position pos[b]
    (its KV cache kc, vc (B,L,NH,T,hs) holds positions < pos[b]) and gets the logits
    (B,V) of the next position. The recipe's options: relu2 (else GELU), qk_norm with
    gains q_norm_w, k_norm_w (L,hs), rope with tables rope_cos, rope_sin (T,hs/2) (the
    cache holds keys turned to their positions), softcap > 0. x, h, att, tmp (B,C), qkv
    (B,3C), fc, th (B,4C), scratch (4,4C), mean, rstd (B,) are workspace."""
    B, C = x.shape
    L, NH = kc.shape[1], kc.shape[2]
    V = logits.shape[1]
    qk_raw = np.empty((B, 2 * C), np.float32)
    qk_rstd = np.empty((B, 2 * NH), np.float32)
    for b in range(B):
        for c in range(C):
            x[b, c] = wte[tokens[b], c] + wpe[pos[b], c]
    for l in range(L):
        layernorm_forward(h, mean, rstd, x, ln1_w[l], ln1_b[l])
        _matvec(qkv, h, qkv_w[l], qkv_s[l], qkv_b[l], scratch)
        if qk_norm:
            head_rmsnorm_forward(qkv, qk_raw, qk_rstd, q_norm_w[l], k_norm_w[l])
        if rope:
            rope_rotate(qkv, rope_cos, rope_sin, pos, NH, np.float32(1.0))
        decode_attend(att, qkv, kc, vc, l, pos)
        _matvec(tmp, att, proj_w[l], proj_s[l], proj_b[l], scratch)
        for b in range(B):
            for c in range(C):
                x[b, c] += tmp[b, c]
        layernorm_forward(h, mean, rstd, x, ln2_w[l], ln2_b[l])
        _matvec(fc, h, fc_w[l], fc_s[l], fc_b[l], scratch)
        if relu2:
            relu2_forward(fc, fc)
        else:
            gelu_forward(fc, th, fc)
        _matvec(tmp, fc, mp_w[l], mp_s[l], mp_b[l], scratch)
        for b in range(B):
            for c in range(C):
                x[b, c] += tmp[b, c]
    layernorm_forward(h, mean, rstd, x, lnf_w, lnf_b)
    row = scratch[0]
    for v in range(V):
        for c in range(C):
            row[c] = np.float32(head_w[v, c])
        b = 0
        while b + 2 <= B:                      # two sequences per pass over the row
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            for c in range(C):
                a0 += row[c] * h[b, c]
                a1 += row[c] * h[b + 1, c]
            logits[b, v] = a0 * head_s[v]
            logits[b + 1, v] = a1 * head_s[v]
            b += 2
        if b < B:
            acc = np.float32(0.0)
            for c in range(C):
                acc += row[c] * h[b, c]
            logits[b, v] = acc * head_s[v]
    if softcap > 0:
        softcap_forward(logits, np.empty((B, V), np.float32), softcap)


class DecodeWeights:
    """A model's weights laid out for `decode_tokens`: per-layer tensors stacked along a
    leading L axis, matrices as int8 + per-column scales ("int8") or float32 ("float32").
    Built once per set of weights (about 30 ms for `base`); read-only, shared by decoders.
    `matches(model)` says whether the model's parameters are still the ones copied."""

    def __init__(self, model, kind: str = "int8") -> None:
        if kind not in KINDS:
            raise ValueError(f"decode weights must be one of {KINDS}, got {kind!r}")
        cfg = model.config
        self.kind, self.vocab_size = kind, cfg.vocab_size
        self._params = model.params
        self._fingerprint = int(fingerprint(model.params))
        p = model.param
        L = cfg.n_layers

        def stack(name):
            return np.ascontiguousarray(np.stack([p(f"h.{l}.{name}") for l in range(L)]))

        def matrices(name):
            w = stack(name)
            if kind == "float32":
                return w, np.ones(w.shape[::2], np.float32)
            q = np.empty(w.shape, np.int8)
            s = np.empty(w.shape[::2], np.float32)
            for l in range(L):
                quantize_columns(q[l], s[l], w[l])
            return q, s

        self.wte = p("wte")                 # float32 rows looked up by token (a view)
        names = model.layout.names
        self.wpe = (p("wpe") if "wpe" in names      # rotary positions: nothing to add
                    else np.zeros((cfg.context, cfg.d_model), np.float32))
        hs = cfg.head_size
        self.relu2, self.qk_norm, self.rope = cfg.mlp == "relu2", cfg.qk_norm, cfg.pos == "rope"
        self.softcap = np.float32(cfg.softcap)
        self.q_norm_w = stack("attn.q_norm.w") if cfg.qk_norm else np.ones((L, hs), np.float32)
        self.k_norm_w = stack("attn.k_norm.w") if cfg.qk_norm else np.ones((L, hs), np.float32)
        self.rope_cos, self.rope_sin = (rope_tables(cfg.context, hs, cfg.rope_base) if self.rope
                                        else (np.ones((1, 1), np.float32),
                                              np.zeros((1, 1), np.float32)))
        self.ln1_w, self.ln1_b = stack("ln1.w"), stack("ln1.b")
        self.ln2_w, self.ln2_b = stack("ln2.w"), stack("ln2.b")
        self.qkv_w, self.qkv_s = matrices("attn.qkv.w")
        self.proj_w, self.proj_s = matrices("attn.proj.w")
        self.fc_w, self.fc_s = matrices("mlp.fc.w")
        self.mp_w, self.mp_s = matrices("mlp.proj.w")
        self.qkv_b, self.proj_b = stack("attn.qkv.b"), stack("attn.proj.b")
        self.fc_b, self.mp_b = stack("mlp.fc.b"), stack("mlp.proj.b")
        self.lnf_w, self.lnf_b = p("lnf.w"), p("lnf.b")
        head = model.head_weight()          # wte when tied
        if kind == "float32":
            self.head_w, self.head_s = head, np.ones(cfg.vocab_size, np.float32)
        else:   # per-row scales of the head (V,C): its rows are the logits' columns
            qt = np.empty(head.shape[::-1], np.int8)
            st = np.empty(head.shape[0], np.float32)
            quantize_columns(qt, st, np.ascontiguousarray(head.T))
            self.head_w, self.head_s = np.ascontiguousarray(qt.T), st

    def matches(self, model) -> bool:
        """True while `model` still has the parameters these copies were made from."""
        return (model.params is self._params and model.config.vocab_size == self.vocab_size
                and int(fingerprint(model.params)) == self._fingerprint)

    def tensors(self) -> tuple:
        """The weight and option arguments of decode_tokens, in its order."""
        return (self.wte, self.wpe, self.ln1_w, self.ln1_b, self.qkv_w, self.qkv_s,
                self.qkv_b, self.proj_w, self.proj_s, self.proj_b, self.ln2_w, self.ln2_b,
                self.fc_w, self.fc_s, self.fc_b, self.mp_w, self.mp_s, self.mp_b,
                self.lnf_w, self.lnf_b, self.head_w, self.head_s, self.relu2, self.qk_norm,
                self.q_norm_w, self.k_norm_w, self.rope, self.rope_cos, self.rope_sin,
                self.softcap)
