"""The GPT-2 style language model: parameters in one flat array, forward/backward through
the paired kernels, loss and gradient, vocabulary growth, and KV-cache generation.

Activations live in a per-caller `Workspace`, never in the model, so worker threads can run
`forward_backward` concurrently on their own buffers and their own gradient rows. What is
not here: optimizers (engine.optim), threading (engine.spheres), files (engine.checkpoint).

Shape legend: B batch, T time, C channels, V vocab, NH heads, hs head size, N = B*T.
"""
from __future__ import annotations

import math
import threading
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from engine import block_kernels as BK
from engine import kernels as K
from engine.config import ModelConfig
from engine.decode import DecodeWeights
from engine.generate import KVDecoder, sample_next
from engine.lattice import lattice_embedding
from engine.neighbours import neighbour_table
from engine.params import ParamLayout, grow_flat

_NO_NEIGHBOURS_IDX = np.zeros((1, 1), np.int32)
_NO_NEIGHBOURS_Q = np.zeros((1, 1), np.float32)


class Workspace:
    """Activation buffers (the forward's cache) and backward scratch for one (B, T, V)."""

    def __init__(self, cfg: ModelConfig, B: int, T: int) -> None:
        C, L, NH, V = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.vocab_size
        N = B * T
        f = np.float32
        self.B, self.T, self.V = B, T, V
        self.resid = np.empty((L + 1, N, C), f)     # input of block l; resid[L] feeds lnf
        self.resid_mid = np.empty((L, N, C), f)     # after the attention residual add
        self.ln1 = np.empty((L, N, C), f)
        self.ln1_mean = np.empty((L, N), f)
        self.ln1_rstd = np.empty((L, N), f)
        self.qkv = np.empty((L, N, 3 * C), f)
        self.att = np.empty((L, B, NH, T, T), f)    # causal softmax probabilities
        self.atty = np.empty((L, N, C), f)          # attention output, heads re-interleaved
        self.ln2 = np.empty((L, N, C), f)
        self.ln2_mean = np.empty((L, N), f)
        self.ln2_rstd = np.empty((L, N), f)
        self.fc = np.empty((L, N, 4 * C), f)        # pre-activation of the MLP
        self.fc_tanh = np.empty((L, N, 4 * C) if cfg.mlp == "gelu" else (L, 0, 0), f)  # GELU's tanh
        self.gelu = np.empty((L, N, 4 * C), f)      # the MLP's activation (GELU or relu^2)
        self.lnf = np.empty((N, C), f)
        self.lnf_mean = np.empty(N, f)
        self.lnf_rstd = np.empty(N, f)
        self.logits = np.empty((N, V), f)           # logits -> probs -> dlogits, in place
        self.losses = np.empty(N, f)
        # the recipe's options: QK-norm's inputs and 1/rms, the soft-cap's tanh, positions
        qk = cfg.qk_norm
        self.qk_raw = np.empty((L, N, 2 * C) if qk else (L, 0, 0), f)
        self.qk_rstd = np.empty((L, N, 2 * NH) if qk else (L, 0, 0), f)
        self.capt = np.empty((N, V) if cfg.softcap > 0 else (0, 0), f)
        self.pos = np.tile(np.arange(T, dtype=np.int64), B)          # position of each row
        # backward scratch
        self.dresid = np.empty((N, C), f)
        self.dC = np.empty((N, C), f)
        self.dqkv = np.empty((N, 3 * C), f)
        self.datt = np.empty((B, NH, T, T), f)
        self.d4a = np.empty((N, 4 * C), f)
        self.d4b = np.empty((N, 4 * C), f)


def _heads(x: np.ndarray, B: int, T: int, NH: int) -> np.ndarray:
    """(N, C)-shaped slice of channels -> (B, NH, T, hs) strided view (no copy)."""
    C = x.shape[-1]
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def _merged_rows(wte: np.ndarray, V: int, new_size: int,
                 merges: Iterable[tuple[int, int, int]], specials: Iterable[int] = ()
                 ) -> np.ndarray:
    """Rows V..new_size-1 of wte for new tokens: row z = (row a + row b) / 2 for the merge
    (a, b, z) that made z, in order of z, reading rows added before it where a or b is one;
    a special token's row (no merge makes it) is the mean of the existing rows."""
    pair: dict[int, tuple[int, int]] = {}
    for a, b, z in merges:
        if V <= z < new_size:
            pair.setdefault(int(z), (int(a), int(b)))
    special = {int(z) for z in specials}
    missing = [z for z in range(V, new_size) if z not in pair and z not in special]
    if missing:
        raise ValueError(f"no merge makes new token {missing[0]} (of {V}..{new_size - 1})")
    rows = np.empty((new_size - V, wte.shape[1]), np.float32)             # (added, C)
    mean = wte.mean(axis=0, dtype=np.float64)
    for z in range(V, new_size):
        if z in special:
            rows[z - V] = mean
            continue
        a, b = pair[z]
        if not (0 <= a < z and 0 <= b < z):
            raise ValueError(f"merge ({a}, {b}) -> {z} uses an id that is not older than {z}")
        ra = wte[a] if a < V else rows[a - V]
        rb = wte[b] if b < V else rows[b - V]
        rows[z - V] = 0.5 * (ra.astype(np.float64) + rb)
    return rows


class Model:
    """GPT-2: wte, wpe, L pre-LN blocks (fused-qkv causal attention, GELU MLP), lnf, tied head;
    or with the recipe's options (engine.config.ModelConfig): relu^2 MLP, QK-norm, rotary
    positions instead of wpe, an untied head, soft-capped logits, zero-initialised output
    projections."""

    def __init__(self, config: ModelConfig, seed: int = 0, params: Optional[np.ndarray] = None
                 ) -> None:
        self.config = config
        self.layout = ParamLayout.from_config(config)
        if params is None:
            params = self._init_params(seed)
        elif params.dtype != np.float32 or params.shape != (self.layout.size,):
            raise ValueError(f"params must be float32 of shape ({self.layout.size},), "
                             f"got {params.dtype} {params.shape}")
        self.params = params
        self._views = self.layout.views(self.params)
        self._zero_ranges = self.layout.accumulated_ranges()
        self._tls = threading.local()
        self._neighbours: Optional[tuple[int, np.ndarray, np.ndarray]] = None
        self._decode_weights: dict = {}

    # ------------------------------------------------------------------ parameters
    def _init_params(self, seed: int) -> np.ndarray:
        cfg = self.config
        rng = np.random.default_rng(seed)
        flat = np.empty(self.layout.size, np.float32)
        views = self.layout.views(flat)
        std = cfg.init_std
        for name, v in views.items():
            if name.endswith(".b"):
                v[...] = 0.0
            elif ".ln" in name or name.startswith("lnf") or name.endswith("_norm.w"):
                v[...] = 1.0                                # norm gains (QK-norm's too)
            elif name.endswith("attn.proj.w") or name.endswith("mlp.proj.w"):
                v[...] = (0.0 if cfg.zero_proj else
                          rng.normal(0.0, std / math.sqrt(2 * cfg.n_layers), v.shape))
            else:
                v[...] = rng.normal(0.0, std, v.shape)
        if cfg.init == "lattice":
            views["wte"][...] = lattice_embedding(cfg.vocab_size, cfg.d_model, std=std, seed=seed)
        return flat

    def param_names(self) -> list[str]:
        return list(self.layout.names)

    def param(self, name: str) -> np.ndarray:
        return self._views[name] if name in self._views else self.layout.view(self.params, name)

    @property
    def num_params(self) -> int:
        return self.layout.size

    def set_params(self, flat: np.ndarray) -> None:
        """Copy values into the existing flat array (views stay valid)."""
        self.params[...] = flat

    def grow_vocab(self, new_size: int,
                   merges: Optional[Iterable[tuple[int, int, int]]] = None,
                   specials: Iterable[int] = ()) -> int:
        """Append wte rows up to new_size; returns rows added.

        With `merges` (the tokenizer's (a, b, z) triples; only those that made the new ids
        are read), new token z starts at the mean of rows a and b, taken in id order (merge
        order) so a token built on a token just added uses that token's new row; the ids in
        `specials` (special tokens: no merge makes them) start at the mean of the existing
        rows. Without merges, every new row starts at the mean of the existing rows. There is no logit bias, so
        these rows (of wte, and of the head when it is untied, made the same way from its
        own rows) are the only per-vocabulary parameters.
        Logits of existing tokens are unchanged for the same input (the new rows only add
        new logit columns). Optimizers grow their moments with `Optimizer.grow` (zeros), the
        EMA with `EMA.grow` (the model's new rows).
        """
        cfg = self.config
        V, added = cfg.vocab_size, int(new_size) - cfg.vocab_size
        if added < 0:
            raise ValueError(f"vocabulary cannot shrink ({V} -> {new_size})")
        if added == 0:
            return 0
        new_rows = {}
        merges = None if merges is None else list(merges)
        for name in [n for n in ("wte", "head") if n in self._views]:
            w = self._views[name]
            if merges is None:
                new_rows[name] = np.broadcast_to(
                    w.mean(axis=0, dtype=np.float64).astype(np.float32), (added, cfg.d_model))
            else:
                new_rows[name] = _merged_rows(w, V, int(new_size), merges, specials)
        new_cfg = cfg.replace(vocab_size=int(new_size))
        new_layout = ParamLayout.from_config(new_cfg)
        self.params = grow_flat(self.params, self.layout, new_layout, new_rows)
        self.config, self.layout = new_cfg, new_layout
        self._views = self.layout.views(self.params)
        self._zero_ranges = self.layout.accumulated_ranges()
        self._tls = threading.local()   # workspaces are sized by V
        return added

    # ------------------------------------------------------------------ workspaces
    def workspace(self, B: int, T: int) -> Workspace:
        """This thread's workspace for (B, T) at the current vocabulary size."""
        cache = getattr(self._tls, "ws", None)
        if cache is None:
            cache = self._tls.ws = {}
        key = (B, T, self.config.vocab_size)
        ws = cache.get(key)
        if ws is None:
            if len(cache) >= 4:
                cache.clear()
            ws = cache[key] = Workspace(self.config, B, T)
        return ws

    def _check_inputs(self, inputs, targets=None) -> tuple[np.ndarray, Optional[np.ndarray]]:
        cfg = self.config
        inputs = np.asarray(inputs)
        if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
            raise ValueError(f"inputs must be an int array (B, T), got {inputs.dtype} "
                             f"{inputs.shape}")
        B, T = inputs.shape
        if B < 1 or T < 1 or T > cfg.context:
            raise ValueError(f"inputs shape {inputs.shape}: need B >= 1 and 1 <= T <= "
                             f"context ({cfg.context})")
        if inputs.min() < 0 or inputs.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {cfg.vocab_size}); got "
                             f"[{inputs.min()}, {inputs.max()}] (grow_vocab first?)")
        inputs = np.ascontiguousarray(inputs, dtype=np.int64)
        if targets is not None:
            targets = np.asarray(targets)
            if targets.shape != inputs.shape or not np.issubdtype(targets.dtype, np.integer):
                raise ValueError(f"targets must be an int array of shape {inputs.shape}")
            if targets.size and (targets.min() < -1 or targets.max() >= cfg.vocab_size):
                raise ValueError(f"targets must be in [-1, {cfg.vocab_size}) (-1 = ignore)")
            targets = np.ascontiguousarray(targets, dtype=np.int64)
        return inputs, targets

    # ------------------------------------------------------------------ forward
    def _rope(self) -> tuple[np.ndarray, np.ndarray]:
        """The rotary cos, sin tables (T, hs/2) of this model (made once, for the context)."""
        cfg = self.config
        tables = getattr(self, "_rope_tables", None)
        if tables is None or tables[0].shape[0] < cfg.context:
            tables = self._rope_tables = BK.rope_tables(cfg.context, cfg.head_size,
                                                        cfg.rope_base)
        return tables

    def _embed(self, out: np.ndarray, inputs: np.ndarray) -> None:
        """out (B,T,C) = wte[inputs] (+ wpe[t] with learned positions)."""
        p = self._views
        if "wpe" in p:
            K.encoder_forward(out, inputs, p["wte"], p["wpe"][:inputs.shape[1]])
        else:
            BK.embed_forward(out, inputs, p["wte"])

    def _qk_forward(self, ws: Workspace, l: int, qkv: np.ndarray, pos: np.ndarray) -> None:
        """QK-norm, then rotary positions, in place on the q and k of qkv (N, 3C)."""
        cfg, p = self.config, self._views
        if cfg.qk_norm:
            BK.head_rmsnorm_forward(qkv, ws.qk_raw[l], ws.qk_rstd[l],
                                    p[f"h.{l}.attn.q_norm.w"], p[f"h.{l}.attn.k_norm.w"])
        if cfg.pos == "rope":
            cos, sin = self._rope()
            BK.rope_rotate(qkv, cos, sin, pos, cfg.n_heads, np.float32(1.0))

    def _activation(self, ws: Workspace, l: int) -> None:
        if self.config.mlp == "relu2":
            BK.relu2_forward(ws.gelu[l], ws.fc[l])
        else:
            K.gelu_forward(ws.gelu[l], ws.fc_tanh[l], ws.fc[l])

    def head_weight(self) -> np.ndarray:
        """(V, C): the head's rows, wte's when tied."""
        return self._views["head" if "head" in self._views else "wte"]

    def _head_logits(self, out: np.ndarray, x: np.ndarray, capt: Optional[np.ndarray] = None
                     ) -> np.ndarray:
        """out (N, V) = the logits of x (N, C): x @ head.T, soft-capped when configured
        (capt (N, V) keeps the tanh for backward; a scratch one is made when None)."""
        np.matmul(x, self.head_weight().T, out=out)
        cap = self.config.softcap
        if cap > 0:
            BK.softcap_forward(out, capt if capt is not None else np.empty_like(out), cap)
        return out

    def _forward_trunk(self, ws: Workspace, inputs: np.ndarray) -> None:
        """Embeddings, the L blocks and the final LayerNorm, into ws.lnf (N, C)."""
        cfg, p = self.config, self._views
        B, T = inputs.shape
        N, C, NH = B * T, cfg.d_model, cfg.n_heads
        scale = 1.0 / math.sqrt(cfg.head_size)
        self._embed(ws.resid[0].reshape(B, T, C), inputs)
        for l in range(cfg.n_layers):
            h = f"h.{l}"
            x = ws.resid[l]
            K.layernorm_forward(ws.ln1[l], ws.ln1_mean[l], ws.ln1_rstd[l], x,
                                p[f"{h}.ln1.w"], p[f"{h}.ln1.b"])
            qkv = ws.qkv[l]
            np.matmul(ws.ln1[l], p[f"{h}.attn.qkv.w"], out=qkv)           # (N, 3C)
            K.bias_forward(qkv, p[f"{h}.attn.qkv.b"])
            self._qk_forward(ws, l, qkv, ws.pos)
            q = _heads(qkv[:, :C], B, T, NH)                                # (B, NH, T, hs)
            k = _heads(qkv[:, C:2 * C], B, T, NH)
            v = _heads(qkv[:, 2 * C:], B, T, NH)
            att = ws.att[l]
            np.matmul(q, k.transpose(0, 1, 3, 2), out=att)                  # (B, NH, T, T)
            K.attention_softmax_forward(att, scale)
            np.matmul(att, v, out=_heads(ws.atty[l], B, T, NH))             # (B, NH, T, hs)
            mid = ws.resid_mid[l]
            np.matmul(ws.atty[l], p[f"{h}.attn.proj.w"], out=mid)           # (N, C)
            K.bias_residual_forward(mid, p[f"{h}.attn.proj.b"], x)
            K.layernorm_forward(ws.ln2[l], ws.ln2_mean[l], ws.ln2_rstd[l], mid,
                                p[f"{h}.ln2.w"], p[f"{h}.ln2.b"])
            np.matmul(ws.ln2[l], p[f"{h}.mlp.fc.w"], out=ws.fc[l])         # (N, 4C)
            K.bias_forward(ws.fc[l], p[f"{h}.mlp.fc.b"])
            self._activation(ws, l)
            out = ws.resid[l + 1]
            np.matmul(ws.gelu[l], p[f"{h}.mlp.proj.w"], out=out)           # (N, C)
            K.bias_residual_forward(out, p[f"{h}.mlp.proj.b"], mid)
        K.layernorm_forward(ws.lnf, ws.lnf_mean, ws.lnf_rstd, ws.resid[cfg.n_layers],
                            p["lnf.w"], p["lnf.b"])

    def _neighbour_tables(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        if lam == 0.0:
            return _NO_NEIGHBOURS_IDX, _NO_NEIGHBOURS_Q
        V = self.config.vocab_size
        if self._neighbours is None or self._neighbours[0] != V:
            idx, q = neighbour_table(V)
            self._neighbours = (V, np.ascontiguousarray(idx, np.int32),
                                np.ascontiguousarray(q, np.float32))
        return self._neighbours[1], self._neighbours[2]

    def forward_backward(self, ws: Workspace, inputs: np.ndarray, targets: np.ndarray,
                         grad: np.ndarray, scale: Optional[float] = None,
                         crystalline_weight: float = 0.0) -> tuple[float, int]:
        """Loss and gradient into `grad` (overwritten, flat layout) for validated inputs.

        Returns (sum of per-token losses, number of valid targets). The gradient is of
        scale * sum(losses); scale defaults to 1 / valid count (the mean). Workers pass
        1 / (global valid count) so their rows sum to the global-batch gradient.
        """
        cfg, p = self.config, self._views
        B, T = inputs.shape
        N, C, NH = B * T, cfg.d_model, cfg.n_heads
        att_scale = 1.0 / math.sqrt(cfg.head_size)
        tflat = targets.reshape(N)
        nbr_idx, nbr_q = self._neighbour_tables(crystalline_weight)
        lam = float(crystalline_weight)

        # ---- forward; the loss's softmax turns the logits into d logits in the same pass
        if scale is None:
            scale = 1.0 / max(int(np.count_nonzero(tflat >= 0)), 1)
        self._forward_trunk(ws, inputs)
        self._head_logits(ws.logits, ws.lnf, ws.capt)                         # (N, V)
        n_valid = K.crossentropy_forward(ws.losses, ws.logits, tflat, nbr_idx, nbr_q, lam,
                                         True, float(scale))
        loss_sum = float(ws.losses.sum(dtype=np.float64))

        # ---- backward, layers in exact reverse order. wte and the linear weights are written
        # whole by their matmuls (out=); only the accumulated tensors need zeroing first.
        for lo, hi in self._zero_ranges:
            grad[lo:hi] = 0.0
        g = self.layout.views(grad)
        dlogits = ws.logits
        if cfg.softcap > 0:
            BK.softcap_backward(dlogits, ws.capt)                             # d raw logits
        head = "head" if "head" in p else "wte"
        np.matmul(dlogits.T, ws.lnf, out=g[head])                             # (V, C)
        if head != "wte":
            g["wte"][...] = 0.0                     # the embedding's rows: scatter-added below
        np.matmul(dlogits, p[head], out=ws.dC)                                # (N, C) d lnf
        dresid = ws.dresid
        dresid[...] = 0.0
        K.layernorm_backward(dresid, g["lnf.w"], g["lnf.b"], ws.dC, ws.resid[cfg.n_layers],
                             p["lnf.w"], ws.lnf_mean, ws.lnf_rstd)
        for l in reversed(range(cfg.n_layers)):
            h = f"h.{l}"
            # MLP: out = gelu @ Wm + bm + mid
            np.matmul(ws.gelu[l].T, dresid, out=g[f"{h}.mlp.proj.w"])         # (4C, C)
            K.bias_backward(g[f"{h}.mlp.proj.b"], dresid)
            np.matmul(dresid, p[f"{h}.mlp.proj.w"].T, out=ws.d4a)             # (N, 4C)
            if cfg.mlp == "relu2":
                BK.relu2_backward(ws.d4b, ws.fc[l], ws.d4a)
            else:
                K.gelu_backward(ws.d4b, ws.fc[l], ws.fc_tanh[l], ws.d4a)
            np.matmul(ws.ln2[l].T, ws.d4b, out=g[f"{h}.mlp.fc.w"])            # (C, 4C)
            K.bias_backward(g[f"{h}.mlp.fc.b"], ws.d4b)
            np.matmul(ws.d4b, p[f"{h}.mlp.fc.w"].T, out=ws.dC)                # (N, C)
            K.layernorm_backward(dresid, g[f"{h}.ln2.w"], g[f"{h}.ln2.b"], ws.dC,
                                 ws.resid_mid[l], p[f"{h}.ln2.w"], ws.ln2_mean[l],
                                 ws.ln2_rstd[l])
            # attention: mid = atty @ Wp + bp + x
            np.matmul(ws.atty[l].T, dresid, out=g[f"{h}.attn.proj.w"])        # (C, C)
            K.bias_backward(g[f"{h}.attn.proj.b"], dresid)
            np.matmul(dresid, p[f"{h}.attn.proj.w"].T, out=ws.dC)             # (N, C) d atty
            qkv, dqkv, att = ws.qkv[l], ws.dqkv, ws.att[l]
            q = _heads(qkv[:, :C], B, T, NH)
            k = _heads(qkv[:, C:2 * C], B, T, NH)
            v = _heads(qkv[:, 2 * C:], B, T, NH)
            dy = _heads(ws.dC, B, T, NH)                                      # (B, NH, T, hs)
            np.matmul(dy, v.transpose(0, 1, 3, 2), out=ws.datt)               # d probs
            np.matmul(att.transpose(0, 1, 3, 2), dy, out=_heads(dqkv[:, 2 * C:], B, T, NH))
            K.attention_softmax_backward(ws.datt, att, att_scale)             # d scores
            np.matmul(ws.datt, k, out=_heads(dqkv[:, :C], B, T, NH))
            np.matmul(ws.datt.transpose(0, 1, 3, 2), q,
                      out=_heads(dqkv[:, C:2 * C], B, T, NH))
            if cfg.pos == "rope":                   # d rotated q, k -> d q, k before the turn
                cos, sin = self._rope()
                BK.rope_rotate(dqkv, cos, sin, ws.pos, NH, np.float32(-1.0))
            if cfg.qk_norm:
                BK.head_rmsnorm_backward(dqkv, g[f"{h}.attn.q_norm.w"], g[f"{h}.attn.k_norm.w"],
                                         ws.qk_raw[l], ws.qk_rstd[l], p[f"{h}.attn.q_norm.w"],
                                         p[f"{h}.attn.k_norm.w"])
            np.matmul(ws.ln1[l].T, dqkv, out=g[f"{h}.attn.qkv.w"])           # (C, 3C)
            K.bias_backward(g[f"{h}.attn.qkv.b"], dqkv)
            np.matmul(dqkv, p[f"{h}.attn.qkv.w"].T, out=ws.dC)               # (N, C)
            K.layernorm_backward(dresid, g[f"{h}.ln1.w"], g[f"{h}.ln1.b"], ws.dC,
                                 ws.resid[l], p[f"{h}.ln1.w"], ws.ln1_mean[l], ws.ln1_rstd[l])
        if "wpe" in g:
            K.encoder_backward(g["wte"], g["wpe"][:T], dresid.reshape(B, T, C), inputs)
        else:
            BK.embed_backward(g["wte"], dresid.reshape(B, T, C), inputs)
        return loss_sum, int(n_valid)

    # ------------------------------------------------------------------ public API
    def loss_and_grad(self, inputs, targets, crystalline_weight: float = 0.0
                      ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy over valid targets (-1 = ignore) and its flat gradient."""
        inputs, targets = self._check_inputs(inputs, targets)
        ws = self.workspace(*inputs.shape)
        grad = np.empty(self.layout.size, np.float32)
        loss_sum, n = self.forward_backward(ws, inputs, targets, grad,
                                            crystalline_weight=crystalline_weight)
        return (loss_sum / n if n else 0.0), grad

    def loss(self, inputs, targets, crystalline_weight: float = 0.0) -> tuple[float, int]:
        """(sum of per-token losses, valid count), forward only."""
        inputs, targets = self._check_inputs(inputs, targets)
        ws = self.workspace(*inputs.shape)
        self._forward_trunk(ws, inputs)
        self._head_logits(ws.logits, ws.lnf, ws.capt)
        nbr_idx, nbr_q = self._neighbour_tables(crystalline_weight)
        n = K.crossentropy_forward(ws.losses, ws.logits, targets.reshape(-1), nbr_idx, nbr_q,
                                   float(crystalline_weight))
        return float(ws.losses.sum(dtype=np.float64)), int(n)

    def logits(self, inputs) -> np.ndarray:
        """Logits (B, T, V) of a forward pass (a fresh array)."""
        inputs, _ = self._check_inputs(inputs)
        B, T = inputs.shape
        ws = self.workspace(B, T)
        self._forward_trunk(ws, inputs)
        out = np.empty((B * T, self.config.vocab_size), np.float32)
        self._head_logits(out, ws.lnf, ws.capt)
        return out.reshape(B, T, -1)

    def hidden_states(self, inputs) -> np.ndarray:
        """The final hidden states (B, T, C) of a forward pass, after the last LayerNorm:
        what the head reads (a fresh array)."""
        inputs, _ = self._check_inputs(inputs)
        B, T = inputs.shape
        ws = self.workspace(B, T)
        self._forward_trunk(ws, inputs)
        return ws.lnf.reshape(B, T, -1).copy()

    # ------------------------------------------------------------------ generation
    def decode_weights(self, kind: str = "int8"):
        """The weights laid out for decoding (engine.decode.DecodeWeights), copied once per
        set of parameter values: reused while the parameters are unchanged (checked by a
        fingerprint of their bits), made again after any update."""
        w = self._decode_weights.get(kind)
        if w is None or not w.matches(self):
            w = self._decode_weights[kind] = DecodeWeights(self, kind)
        return w

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 seed: Optional[int] = None, stop: Sequence[Sequence[int]] = (),
                 weights: str = "int8") -> np.ndarray:
        """Sample up to max_new_tokens after prompt_ids; returns the new ids (int32)."""
        return np.fromiter(self.generate_stream(prompt_ids, max_new_tokens, temperature, top_k,
                                                top_p, seed, stop, weights), dtype=np.int32)

    def generate_stream(self, prompt_ids: Sequence[int], max_new_tokens: int,
                        temperature: float = 1.0, top_k: Optional[int] = None,
                        top_p: Optional[float] = None, seed: Optional[int] = None,
                        stop: Sequence[Sequence[int]] = (), weights: str = "int8"
                        ) -> Iterator[int]:
        """Yield sampled token ids one at a time, decoding incrementally with a KV cache
        over `weights` ("int8" or "float32": engine.generate.BatchDecoder).

        temperature 0 is greedy. When the context fills up, the cache is rebuilt from the
        last T/2 tokens (a sliding window). Generation stops early when the produced ids end
        with one of the `stop` sequences (the stop ids are yielded).
        """
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("generation needs a prompt of at least one token")
        _, _ = self._check_inputs(np.asarray([ids[-self.config.context:]]))
        rng = np.random.default_rng(seed)
        dec = KVDecoder(self, weights)
        logits = dec.prefill(ids[-self.config.context:])
        produced: list[int] = []
        stops = [list(s) for s in stop if len(s)]
        for _ in range(int(max_new_tokens)):
            nxt = sample_next(logits, rng, temperature, top_k, top_p)
            produced.append(nxt)
            yield nxt
            if any(produced[-len(s):] == s for s in stops):
                return
            ids.append(nxt)
            if dec.n >= self.config.context:
                logits = dec.prefill(ids[-(self.config.context // 2 or 1):])
            else:
                logits = dec.step(nxt)
