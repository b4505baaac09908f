"""Plain-numpy float64 reference of the GPT model (forward and loss only).

Written straight from the math, independent of engine.kernels, so tests can compare the
engine's logits and loss with it and take finite differences of its loss.
"""
from __future__ import annotations

import math

import numpy as np


def layernorm(x, w, b, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def rmsnorm(x, w, eps=1e-6):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w


def rope(x, base):
    """Rotary positions on x (B, NH, T, hs), NeoX halves: channel i turns with i + hs/2 by
    angle t * base^(-2i/hs)."""
    T, hs = x.shape[2], x.shape[3]
    ang = np.arange(T)[:, None] * base ** (-np.arange(0, hs, 2) / hs)[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = x[..., :hs // 2], x[..., hs // 2:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def forward_logits(p: dict, cfg, inputs: np.ndarray) -> np.ndarray:
    """Logits (B, T, V) in float64 from a dict of parameter arrays (with the recipe's
    options of cfg: mlp, qk_norm, pos, tie_head, softcap)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    B, T = inputs.shape
    C, NH = cfg.d_model, cfg.n_heads
    hs = C // NH
    x = p["wte"][inputs] + (p["wpe"][:T][None] if cfg.pos == "learned" else 0.0)
    mask = np.tril(np.ones((T, T), bool))
    for l in range(cfg.n_layers):
        h = f"h.{l}"
        a = layernorm(x, p[f"{h}.ln1.w"], p[f"{h}.ln1.b"])
        qkv = a @ p[f"{h}.attn.qkv.w"] + p[f"{h}.attn.qkv.b"]
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
                   for i in range(3))
        if cfg.qk_norm:
            q, k = rmsnorm(q, p[f"{h}.attn.q_norm.w"]), rmsnorm(k, p[f"{h}.attn.k_norm.w"])
        if cfg.pos == "rope":
            q, k = rope(q, cfg.rope_base), rope(k, cfg.rope_base)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
        s = np.where(mask, s, -np.inf)
        y = softmax(s) @ v
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ p[f"{h}.attn.proj.w"] + p[f"{h}.attn.proj.b"]
        m = layernorm(x, p[f"{h}.ln2.w"], p[f"{h}.ln2.b"])
        f = m @ p[f"{h}.mlp.fc.w"] + p[f"{h}.mlp.fc.b"]
        act = np.maximum(f, 0.0) ** 2 if cfg.mlp == "relu2" else gelu(f)
        x = x + act @ p[f"{h}.mlp.proj.w"] + p[f"{h}.mlp.proj.b"]
    x = layernorm(x, p["lnf.w"], p["lnf.b"])
    logits = x @ (p["wte"] if cfg.tie_head else p["head"]).T
    if cfg.softcap > 0:
        logits = cfg.softcap * np.tanh(logits / cfg.softcap)
    return logits


def token_losses(logits: np.ndarray, targets: np.ndarray, nbr_idx=None, nbr_q=None, lam=0.0
                 ) -> np.ndarray:
    """Per-token loss (N,) of logits (N, V), 0 where target < 0; optional crystalline KL."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    out = np.zeros(len(targets))
    for i, t in enumerate(targets):
        if t < 0:
            continue
        out[i] = -logp[i, t]
        if lam:
            q = nbr_q[t].astype(np.float64)
            nz = q > 0
            out[i] += lam * np.sum(q[nz] * (np.log(q[nz]) - logp[i, nbr_idx[t][nz]]))
    return out


def mean_loss(p: dict, cfg, inputs, targets, nbr_idx=None, nbr_q=None, lam=0.0) -> float:
    logits = forward_logits(p, cfg, inputs).reshape(-1, cfg.vocab_size)
    t = np.asarray(targets).reshape(-1)
    n = max(int((t >= 0).sum()), 1)
    return float(token_losses(logits, t, nbr_idx, nbr_q, lam).sum() / n)
