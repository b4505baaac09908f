"""Optimizers over the flat parameter layout (AdamW, SGD with momentum), gradient-norm
clipping, and `lr_at`, the per-cycle cosine of a TrainConfig (the schedules themselves, with
the continuous-training ones, live in engine.schedule).

Every update works on a segment [lo, hi) of the flat arrays so the threaded system can
update disjoint segments in parallel; `step()` is the single-threaded convenience.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from engine import kernels as K
from engine.config import TrainConfig
from engine.params import ParamLayout, grow_flat
from engine.schedule import cosine_lr, learning_rate


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at `step` of cfg's schedule when `step` is the only counter known (the
    default of ThreadedTrainingSystem.train_step, whose step restarts with every system):
    "cosine" warms up and decays to min_lr at cfg.total_steps (held at lr after warmup when
    it is None); "constant" warms up then holds lr; "wsd" cools down over the end of
    cfg.total_steps (none without it). A trainer that knows the global step passes lr from
    engine.schedule.learning_rate instead."""
    if cfg.schedule == "cosine":
        return cosine_lr(cfg.lr, cfg.min_lr, cfg.warmup_steps, step, cfg.total_steps)
    scfg = cfg.schedule_config()
    if cfg.total_steps is None:                  # no plan, so no cooldown
        scfg = scfg.replace(kind="constant")
    return learning_rate(scfg, step, step, cfg.total_steps or 1)


def clip_scale(grad_norm: float, clip: Optional[float]) -> float:
    """Factor that brings the global gradient norm down to `clip` (1.0 when already below)."""
    if clip is None or not math.isfinite(grad_norm) or grad_norm <= clip:
        return 1.0
    return clip / (grad_norm + 1e-6)


class Optimizer:
    """AdamW or SGD state (moments in the flat layout) and its segment-wise update."""

    def __init__(self, layout: ParamLayout, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.layout = layout
        self.m = np.zeros(layout.size, np.float32)
        self.v = np.zeros(layout.size if cfg.optimizer == "adamw" else 0, np.float32)
        self.t = 0   # number of applied steps (Adam bias correction)
        self._starts = layout.starts_array()
        self._decay = layout.decay_array()

    def hyper(self, lr: float) -> tuple:
        """Per-step scalars for `update_segment` (the step number is self.t + 1)."""
        c = self.cfg
        t = self.t + 1
        return (lr, 1.0 - c.beta1 ** t, 1.0 - c.beta2 ** t)

    def update_segment(self, params: np.ndarray, grad: np.ndarray, lo: int, hi: int,
                       hyper: tuple, grad_scale: float) -> None:
        c = self.cfg
        lr, bc1, bc2 = hyper
        if c.optimizer == "adamw":
            K.adamw_update(params, grad, self.m, self.v, lo, hi, self._starts, self._decay,
                           lr, c.beta1, c.beta2, c.eps, c.weight_decay, bc1, bc2, grad_scale)
        else:
            K.sgd_update(params, grad, self.m, lo, hi, self._starts, self._decay, lr,
                         c.momentum, c.weight_decay, grad_scale)

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> float:
        """Clip by global norm and apply one update to all of params; returns the norm."""
        norm = math.sqrt(K.sumsq(grad, 0, grad.size))
        self.update_segment(params, grad, 0, params.size, self.hyper(lr),
                            clip_scale(norm, self.cfg.grad_clip))
        self.t += 1
        return norm

    def grow(self, new_layout: ParamLayout) -> None:
        """Follow a vocabulary growth: new wte rows get zero moments."""
        self.m = grow_flat(self.m, self.layout, new_layout, None)
        if self.v.size:
            self.v = grow_flat(self.v, self.layout, new_layout, None)
        self.layout = new_layout
        self._starts = new_layout.starts_array()
        self._decay = new_layout.decay_array()

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
