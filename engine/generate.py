"""Incremental decoding with a KV cache, and token sampling (temperature, top-k, top-p).

Decoders share the model's parameters (read-only) and keep their own caches, so several
may run at once. With float32 decode weights their logits equal a full recompute of the same
prefix up to summation order; with int8 ones (the default) they are close to it
(tests/engine/test_decode.py bounds the difference).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from engine.block_kernels import head_rmsnorm_forward, relu2_forward, rope_rotate
from engine.decode import DecodeWeights, decode_attend, decode_tokens
from engine.kernels import bias_forward, bias_residual_forward, gelu_forward, layernorm_forward


class BatchDecoder:
    """Decoding state of B sequences at once: per-sequence keys and values of every position
    so far, each sequence at its own position. The prompt is prefilled through the training
    forward, in float32.

    Below BLAS_BATCH sequences a step is one numba call for all layers and sequences
    (engine.decode.decode_tokens) over `weights`: "int8" (the default: decoding is bound by
    streaming the weights, and int8 streams a quarter of float32's bytes; see
    docs/benchmarks.md#decoding for how close its predictions stay) or "float32" (exact up to
    summation order), or a prepared DecodeWeights. From BLAS_BATCH sequences on, a step
    runs each layer's products as BLAS matrix-matrix products over the model's float32
    weights, whatever `weights` says: on the 2-core AMD EPYC the int8 kernel was faster up to
    16 sequences and even at 32 (benchmarks/bench_engine.py's batched rows).

    The decoder reads the model's parameters; it follows a vocabulary growth (or any
    replacement of the parameter array) by re-copying them at the next step.
    """

    BLAS_BATCH = 32

    def __init__(self, model, batch: int = 1, weights="int8") -> None:
        cfg = model.config
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model, self.cfg, self.batch = model, cfg, int(batch)
        self._weights = (weights if isinstance(weights, DecodeWeights)
                         else model.decode_weights(weights))
        L, NH, T, hs, C = cfg.n_layers, cfg.n_heads, cfg.context, cfg.head_size, cfg.d_model
        B = self.batch
        self.k = np.zeros((B, L, NH, T, hs), np.float32)
        self.v = np.zeros((B, L, NH, T, hs), np.float32)
        self.n = np.zeros(B, np.int64)              # positions filled, per sequence
        f = np.float32
        self._x, self._h = np.empty((B, C), f), np.empty((B, C), f)
        self._att, self._tmp = np.empty((B, C), f), np.empty((B, C), f)
        self._qkv = np.empty((B, 3 * C), f)
        self._fc, self._th = np.empty((B, 4 * C), f), np.empty((B, 4 * C), f)
        self._scratch = np.empty((4, 4 * C), f)
        self._mean, self._rstd = np.empty(B, f), np.empty(B, f)
        self._tokens = np.empty(B, np.int64)
        self._logits = np.empty((B, cfg.vocab_size), f)

    def _follow_model(self) -> None:
        """New copies (and a wider logits buffer) after the model's parameters were replaced."""
        m, w = self.model, self._weights
        if m.params is not w._params or m.config.vocab_size != w.vocab_size:
            self._weights = m.decode_weights(w.kind)
        if self._logits.shape[1] != m.config.vocab_size:
            self._logits = np.empty((self.batch, m.config.vocab_size), np.float32)

    def prefill(self, ids: Sequence[int], row: int = 0) -> np.ndarray:
        """Reset sequence `row` to `ids` (1..T tokens); returns its next-position logits (V,)."""
        m, cfg = self.model, self.cfg
        P = len(ids)
        if not 1 <= P <= cfg.context:
            raise ValueError(f"a prefill needs 1..{cfg.context} tokens, got {P}")
        C, NH = cfg.d_model, cfg.n_heads
        ws = m.workspace(1, P)
        m._forward_trunk(ws, np.asarray([ids], dtype=np.int64))
        for l in range(cfg.n_layers):
            qkv = ws.qkv[l]                                   # (P, 3C)
            self.k[row, l, :, :P] = qkv[:, C:2 * C].reshape(P, NH, -1).transpose(1, 0, 2)
            self.v[row, l, :, :P] = qkv[:, 2 * C:].reshape(P, NH, -1).transpose(1, 0, 2)
        self.n[row] = P
        self._follow_model()
        out = self._logits[row]
        m._head_logits(out.reshape(1, -1), ws.lnf[P - 1:P])
        return out

    def step(self, tokens, rows: Optional[int] = None) -> np.ndarray:
        """Append tokens[b] to sequence b at its position, for the first `rows` sequences
        (all by default); returns their next-position logits (rows, V), a buffer reused by
        the next call. Sequences from `rows` on are left as they are."""
        A = self.batch if rows is None else int(rows)
        if not 1 <= A <= self.batch:
            raise ValueError(f"rows must be within 1..{self.batch}, got {rows}")
        self._follow_model()
        self._tokens[:A] = tokens
        if int(self.n[:A].max()) >= self.cfg.context:
            raise ValueError(f"a sequence is at the context length ({self.cfg.context}): "
                             "prefill it again with a shorter window")
        if A >= self.BLAS_BATCH:
            self._step_blas(A)
        else:
            w = self._weights
            decode_tokens(self._logits[:A], self._x[:A], self.k[:A], self.v[:A],
                          self._tokens[:A], self.n[:A], *w.tensors(), self._h[:A],
                          self._qkv[:A], self._att[:A], self._fc[:A], self._th[:A],
                          self._tmp[:A], self._scratch, self._mean[:A], self._rstd[:A])
        self.n[:A] += 1
        return self._logits[:A]

    def move(self, src: int, dst: int) -> None:
        """Sequence `src`'s state becomes sequence `dst`'s (keeping a server's live rows
        packed at the front when one in the middle ends)."""
        self.k[dst], self.v[dst], self.n[dst] = self.k[src], self.v[src], self.n[src]

    def _step_blas(self, A: int) -> None:
        m = self.model
        p, cfg = m._views, m.config
        x, h, tmp, fc, qkv = self._x[:A], self._h[:A], self._tmp[:A], self._fc[:A], self._qkv[:A]
        mean, rstd, n = self._mean[:A], self._rstd[:A], self.n[:A]
        if "wpe" in p:
            np.add(p["wte"][self._tokens[:A]], p["wpe"][n], out=x)
        else:
            np.take(p["wte"], self._tokens[:A], axis=0, out=x)
        if cfg.qk_norm:
            qk_raw = np.empty((A, 2 * cfg.d_model), np.float32)
            qk_rstd = np.empty((A, 2 * cfg.n_heads), np.float32)
        for l in range(self.cfg.n_layers):
            b = f"h.{l}"
            layernorm_forward(h, mean, rstd, x, p[f"{b}.ln1.w"], p[f"{b}.ln1.b"])
            np.matmul(h, p[f"{b}.attn.qkv.w"], out=qkv)
            bias_forward(qkv, p[f"{b}.attn.qkv.b"])
            if cfg.qk_norm:
                head_rmsnorm_forward(qkv, qk_raw, qk_rstd, p[f"{b}.attn.q_norm.w"],
                                     p[f"{b}.attn.k_norm.w"])
            if cfg.pos == "rope":
                cos, sin = m._rope()
                rope_rotate(qkv, cos, sin, n, cfg.n_heads, np.float32(1.0))
            decode_attend(self._att[:A], qkv, self.k[:A], self.v[:A], l, n)
            np.matmul(self._att[:A], p[f"{b}.attn.proj.w"], out=tmp)
            bias_residual_forward(x, p[f"{b}.attn.proj.b"], tmp)
            layernorm_forward(h, mean, rstd, x, p[f"{b}.ln2.w"], p[f"{b}.ln2.b"])
            np.matmul(h, p[f"{b}.mlp.fc.w"], out=fc)
            bias_forward(fc, p[f"{b}.mlp.fc.b"])
            if cfg.mlp == "relu2":
                relu2_forward(fc, fc)
            else:
                gelu_forward(fc, self._th[:A], fc)
            np.matmul(fc, p[f"{b}.mlp.proj.w"], out=tmp)
            bias_residual_forward(x, p[f"{b}.mlp.proj.b"], tmp)
        layernorm_forward(h, mean, rstd, x, p["lnf.w"], p["lnf.b"])
        m._head_logits(self._logits[:A], h)


class KVDecoder:
    """Batch-1 decoding: a BatchDecoder of one sequence with (V,) logits."""

    def __init__(self, model, weights="int8") -> None:
        self._dec = BatchDecoder(model, 1, weights)
        self._token = np.zeros(1, np.int64)

    @property
    def n(self) -> int:
        return int(self._dec.n[0])

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Reset the cache to `ids` (at most T tokens); returns the last position's logits."""
        return self._dec.prefill(ids, 0)

    def step(self, token: int) -> np.ndarray:
        """Append one token at position n; returns the logits for position n + 1."""
        self._token[0] = token
        return self._dec.step(self._token)[0]


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
