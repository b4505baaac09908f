"""Incremental decoding with a KV cache, and token sampling (temperature, top-k, top-p).

The decoder shares the model's parameters (read-only) and keeps its own cache, so several
decoders may run at once. Its logits equal a full recompute of the same prefix.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from engine import kernels as K


class KVDecoder:
    """Batch-1 decoding state: per-layer keys and values of every position so far."""

    def __init__(self, model) -> None:
        cfg = model.config
        self.model = model
        self.cfg = cfg
        L, NH, T, hs, C = cfg.n_layers, cfg.n_heads, cfg.context, cfg.head_size, cfg.d_model
        self.k = np.zeros((L, NH, T, hs), np.float32)   # (L, NH, T, hs)
        self.v = np.zeros((L, NH, T, hs), np.float32)
        self.n = 0
        self._x = np.empty((1, C), np.float32)
        self._h = np.empty((1, C), np.float32)
        self._mean = np.empty(1, np.float32)
        self._rstd = np.empty(1, np.float32)
        self._qkv = np.empty((1, 3 * C), np.float32)
        self._att = np.empty((NH, hs), np.float32)
        self._fc = np.empty((1, 4 * C), np.float32)
        self._th = np.empty((1, 4 * C), np.float32)
        self._gelu = np.empty((1, 4 * C), np.float32)
        self._tmp = np.empty((1, C), np.float32)
        self._logits = np.empty(cfg.vocab_size, np.float32)

    def _logits_buffer(self) -> np.ndarray:
        """The logits buffer, resized if the model's vocabulary grew since the last call."""
        V = self.model.config.vocab_size
        if self._logits.shape[0] != V:
            self._logits = np.empty(V, np.float32)
        return self._logits

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Reset the cache to `ids` (at most T tokens); returns the last position's logits."""
        m, cfg = self.model, self.cfg
        P = len(ids)
        C, NH = cfg.d_model, cfg.n_heads
        inputs = np.asarray([ids], dtype=np.int64)
        ws = m.workspace(1, P)
        m._forward_trunk(ws, inputs)
        for l in range(cfg.n_layers):
            qkv = ws.qkv[l]                                   # (P, 3C)
            self.k[l, :, :P] = qkv[:, C:2 * C].reshape(P, NH, -1).transpose(1, 0, 2)
            self.v[l, :, :P] = qkv[:, 2 * C:].reshape(P, NH, -1).transpose(1, 0, 2)
        self.n = P
        np.matmul(m.param("wte"), ws.lnf[P - 1], out=self._logits_buffer())
        return self._logits

    def step(self, token: int) -> np.ndarray:
        """Append one token at position n; returns the logits for position n + 1."""
        m, cfg = self.model, self.cfg
        p = m._views
        C, NH, pos = cfg.d_model, cfg.n_heads, self.n
        scale = 1.0 / math.sqrt(cfg.head_size)
        x, h, qkv, att = self._x, self._h, self._qkv, self._att
        np.add(p["wte"][token], p["wpe"][pos], out=x[0])
        for l in range(cfg.n_layers):
            b = f"h.{l}"
            K.layernorm_forward(h, self._mean, self._rstd, x, p[f"{b}.ln1.w"], p[f"{b}.ln1.b"])
            np.matmul(h, p[f"{b}.attn.qkv.w"], out=qkv)
            K.bias_forward(qkv, p[f"{b}.attn.qkv.b"])
            self.k[l, :, pos] = qkv[0, C:2 * C].reshape(NH, -1)
            self.v[l, :, pos] = qkv[0, 2 * C:].reshape(NH, -1)
            K.attention_decode(att, qkv[0, :C].reshape(NH, -1), self.k[l], self.v[l], pos + 1,
                               scale)
            np.matmul(att.reshape(1, C), p[f"{b}.attn.proj.w"], out=self._tmp)
            K.bias_residual_forward(x, p[f"{b}.attn.proj.b"], self._tmp)
            K.layernorm_forward(h, self._mean, self._rstd, x, p[f"{b}.ln2.w"], p[f"{b}.ln2.b"])
            np.matmul(h, p[f"{b}.mlp.fc.w"], out=self._fc)
            K.bias_forward(self._fc, p[f"{b}.mlp.fc.b"])
            K.gelu_forward(self._gelu, self._th, self._fc)
            np.matmul(self._gelu, p[f"{b}.mlp.proj.w"], out=self._tmp)
            K.bias_residual_forward(x, p[f"{b}.mlp.proj.b"], self._tmp)
        K.layernorm_forward(h, self._mean, self._rstd, x, p["lnf.w"], p["lnf.b"])
        np.matmul(p["wte"], h[0], out=self._logits_buffer())
        self.n = pos + 1
        return self._logits


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                top_k: Optional[int] = None, top_p: Optional[float] = None) -> int:
    """Draw one id from logits (V,): greedy at temperature 0, else softmax(logits / T)
    restricted to the top_k largest and to the smallest set with mass >= top_p (top_p 0
    keeps only the most likely token). Non-finite logits are refused: sampling from them
    would silently return an arbitrary id."""
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be within [0, 1], got {top_p}")
    if not np.isfinite(logits).all():
        raise ValueError("logits hold NaN or Inf: the model's parameters are not finite")
    if temperature == 0 or top_p == 0 or top_k == 1:
        return int(np.argmax(logits))
    with np.errstate(over="ignore"):
        z = logits.astype(np.float64) / temperature
    if not np.isfinite(z).all():          # a temperature so small that z overflows: greedy
        return int(np.argmax(logits))
    idx = np.arange(z.size)
    if top_k is not None and top_k < z.size:
        idx = np.argpartition(-z, top_k - 1)[:top_k]
        z = z[idx]
    z -= z.max()
    prob = np.exp(z)
    prob /= prob.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-prob, kind="stable")
        cum = np.cumsum(prob[order])
        keep = order[:int(np.searchsorted(cum, top_p)) + 1]
        idx, prob = idx[keep], prob[keep] / prob[keep].sum()
    cdf = np.cumsum(prob)
    j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(idx[min(j, idx.size - 1)])
