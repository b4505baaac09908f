"""Optimizers over the flat parameter layout (AdamW, SGD with momentum, Muon), gradient-norm
clipping, and `lr_at`, the per-cycle cosine of a TrainConfig (the schedules themselves, with
the continuous-training ones, live in engine.schedule).

Every update works on a segment [lo, hi) of the flat arrays so the threaded system can
update disjoint segments in parallel; `step()` is the single-threaded convenience.

Muon (Keller Jordan 2024; scaled as in Moonlight, Liu et al. 2025) takes the hidden
matrices (engine.params.is_linear_weight; the fused qkv as its three (C, C) blocks) and AdamW
the rest (embeddings, head, gains, biases). Its segment phase is elementwise: the momentum
buffer (in `m`) and the Nesterov direction (in a scratch array); its matrix phase
(`finish_step`, after every segment is done) orthogonalises each matrix's direction by five
Newton-Schulz iterations and applies p -= lr (0.2 sqrt(max(rows, cols)) O + wd p), the scale
that gives its updates AdamW's RMS, so both share one learning rate and schedule.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from engine import kernels as K
from engine.config import TrainConfig
from engine.params import ParamLayout, grow_flat, is_linear_weight
from engine.schedule import cosine_lr, learning_rate

# Newton-Schulz quintic coefficients (Keller Jordan's Muon): five iterations take the
# singular values of a normalised matrix into about [0.7, 1.2]
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def newton_schulz(g: np.ndarray, steps: int = NS_STEPS) -> np.ndarray:
    """An approximate U V^T of g = U S V^T (float32): g / |g|_F, then `steps` iterations of
    X <- a X + (b A + c A^2) X with A = X X^T, on the wide orientation."""
    a, b, c = NS_COEFFS
    x = np.asarray(g, np.float32) / np.float32(np.linalg.norm(g) + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    x = np.ascontiguousarray(x)
    for _ in range(steps):
        A = x @ x.T             # symmetric: both products are X X^T, which BLAS does as
        B = A @ A.T             # syrk (numpy's matmul sees the transposed operand), half
        B *= c                  # a general product's FLOPs
        B += b * A
        y = B @ x
        y += a * x
        x = y
    return x if wide else x.T


def muon_blocks(layout: ParamLayout) -> list[tuple[int, int, int, int, int]]:
    """(flat start, rows, width, column offset, columns) of every matrix Muon orthogonalises:
    each linear weight (rows, width) whole, the fused qkv as its q, k and v blocks."""
    out = []
    for i, name in enumerate(layout.names):
        if not is_linear_weight(name):
            continue
        rows, width = layout.shapes[i]
        k = 3 if name.endswith("attn.qkv.w") else 1
        for j in range(k):
            out.append((layout.offsets[i], rows, width, j * width // k, width // k))
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at `step` of cfg's schedule when `step` is the only counter known (the
    default of ThreadedTrainingSystem.train_step, whose step restarts with every system):
    "cosine" warms up and decays to min_lr at cfg.total_steps (held at lr after warmup when
    it is None); "constant" warms up then holds lr; "rsqrt" decays by `step`; "wsd" cools
    down over the end of cfg.total_steps (none without it). A trainer that knows the global
    step passes lr from engine.schedule.learning_rate instead."""
    if cfg.schedule == "cosine":
        return cosine_lr(cfg.lr, cfg.min_lr, cfg.warmup_steps, step, cfg.total_steps)
    scfg = cfg.schedule_config()
    if cfg.total_steps is None and cfg.schedule == "wsd":   # no plan, so no cooldown
        scfg = scfg.replace(kind="constant")
    return learning_rate(scfg, step, step, cfg.total_steps or 1)


def clip_scale(grad_norm: float, clip: Optional[float]) -> float:
    """Factor that brings the global gradient norm down to `clip` (1.0 when already below)."""
    if clip is None or not math.isfinite(grad_norm) or grad_norm <= clip:
        return 1.0
    return clip / (grad_norm + 1e-6)


class Optimizer:
    """AdamW, SGD or Muon state (moments in the flat layout) and its segment-wise update
    (then, for Muon, `finish_step`'s matrix phase)."""

    def __init__(self, layout: ParamLayout, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.layout = layout
        self.m = np.zeros(layout.size, np.float32)
        self.v = np.zeros(layout.size if cfg.optimizer in ("adamw", "muon") else 0, np.float32)
        self.t = 0   # number of applied steps (Adam bias correction)
        self._follow_layout(layout)

    def _follow_layout(self, layout: ParamLayout) -> None:
        self._starts = layout.starts_array()
        self._decay = layout.decay_array()
        self.muon = self.cfg.optimizer == "muon"
        # Muon's tensors as flat runs, the rest (AdamW's) between them
        self._muon_runs = ([(layout.offsets[i], layout.offsets[i + 1])
                            for i, n in enumerate(layout.names) if is_linear_weight(n)]
                           if self.muon else [])
        self._blocks = muon_blocks(layout) if self.muon else []
        self.direction = np.zeros(layout.size if self.muon else 0, np.float32)  # scratch

    @property
    def has_matrix_phase(self) -> bool:
        return self.muon

    def hyper(self, lr: float) -> tuple:
        """Per-step scalars for `update_segment` (the step number is self.t + 1)."""
        c = self.cfg
        t = self.t + 1
        return (lr, 1.0 - c.beta1 ** t, 1.0 - c.beta2 ** t)

    def update_segment(self, params: np.ndarray, grad: np.ndarray, lo: int, hi: int,
                       hyper: tuple, grad_scale: float) -> None:
        c = self.cfg
        lr, bc1, bc2 = hyper
        if self.muon:                    # AdamW between Muon's runs, momentum on them
            for a, b, is_muon in self._runs(lo, hi):
                if is_muon:
                    K.muon_momentum(grad, self.m, self.direction, a, b, c.muon_momentum,
                                    grad_scale)
                else:
                    K.adamw_update(params, grad, self.m, self.v, a, b, self._starts,
                                   self._decay, lr, c.beta1, c.beta2, c.eps, c.weight_decay,
                                   bc1, bc2, grad_scale)
        elif c.optimizer == "adamw":
            K.adamw_update(params, grad, self.m, self.v, lo, hi, self._starts, self._decay,
                           lr, c.beta1, c.beta2, c.eps, c.weight_decay, bc1, bc2, grad_scale)
        else:
            K.sgd_update(params, grad, self.m, lo, hi, self._starts, self._decay, lr,
                         c.momentum, c.weight_decay, grad_scale)

    def _runs(self, lo: int, hi: int) -> list[tuple[int, int, bool]]:
        """[lo, hi) cut into (start, stop, is Muon's) runs."""
        out, i = [], lo
        for a, b in self._muon_runs:
            if b <= i or a >= hi:
                continue
            if a > i:
                out.append((i, a, False))
            out.append((max(a, i), min(b, hi), True))
            i = min(b, hi)
        if i < hi:
            out.append((i, hi, False))
        return out

    def block_shares(self, n: int) -> list[list[int]]:
        """Muon's blocks dealt to n workers so that their Newton-Schulz work is even: largest
        first, each to the least loaded worker (a (m, k) block with m <= k costs its three
        products per iteration, m^2 k + m^3 + m^2 k). The blocks are disjoint parts of the
        parameters, so the shares can be finished in parallel, in any order."""
        loads, shares = [0] * n, [[] for _ in range(n)]
        cost = []
        for _, rows, _, _, cols in self._blocks:
            m, k = min(rows, cols), max(rows, cols)
            cost.append(2 * m * m * k + m ** 3)
        for i in sorted(range(len(cost)), key=lambda i: (-cost[i], i)):
            w = loads.index(min(loads))
            shares[w].append(i)
            loads[w] += cost[i]
        return shares

    def finish_step(self, params: np.ndarray, hyper: tuple,
                    blocks: Optional[Sequence[int]] = None) -> None:
        """Muon's matrix phase, once every segment is updated: each block's direction
        orthogonalised and applied with decoupled weight decay (`blocks`: only those, by
        index, e.g. one worker's share of `block_shares`). Nothing for AdamW or SGD."""
        if not self.muon:
            return
        lr = hyper[0]
        c = self.cfg
        decay = np.float32(1.0 - lr * c.weight_decay)
        chosen = self._blocks if blocks is None else [self._blocks[i] for i in blocks]
        for start, rows, width, col0, cols in chosen:
            whole = slice(start, start + rows * width)
            p = params[whole].reshape(rows, width)[:, col0:col0 + cols]
            o = newton_schulz(self.direction[whole].reshape(rows, width)[:, col0:col0 + cols])
            p *= decay
            p -= np.float32(lr * c.muon_scale * math.sqrt(max(rows, cols))) * o

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> float:
        """Clip by global norm and apply one update to all of params; returns the norm."""
        norm = math.sqrt(K.sumsq(grad, 0, grad.size))
        hyper = self.hyper(lr)
        self.update_segment(params, grad, 0, params.size, hyper,
                            clip_scale(norm, self.cfg.grad_clip))
        self.finish_step(params, hyper)
        self.t += 1
        return norm

    def grow(self, new_layout: ParamLayout) -> None:
        """Follow a vocabulary growth: new wte rows get zero moments."""
        self.m = grow_flat(self.m, self.layout, new_layout, None)
        if self.v.size:
            self.v = grow_flat(self.v, self.layout, new_layout, None)
        self.layout = new_layout
        self._follow_layout(new_layout)

    def state(self) -> dict[str, np.ndarray]:
        out = {"m": self.m}
        if self.v.size:
            out["v"] = self.v
        return out

    def load_state(self, state: dict[str, np.ndarray], t: int) -> None:
        for name, arr in self.state().items():
            if name not in state or state[name].shape != arr.shape:
                raise ValueError(f"optimizer state {name!r} missing or of the wrong shape")
            arr[...] = state[name]
        self.t = int(t)
