"""An exponential moving average of the flat parameter vector, the model to serve when
training holds a constant learning rate (Singh et al. 2025, arXiv 2503.02844).

After every applied optimizer step, `update(params)` does one in-place pass
    shadow += (1 - d_t) * (params - shadow),   d_t = min(decay, (1 + t) / (10 + t))
where t counts the updates made so far. Why a warm-up of the decay rather than Adam-style
bias correction: the shadow starts as a copy of the weights (not zeros), so there is no
zero bias to correct; the warm-up keeps the shadow a convex combination of real iterates at
every step (a valid model to serve, to checkpoint, and to grow), and stops the random init
from dominating the average for the first ~1/(1-decay) steps. It is the rule of TensorFlow's
ExponentialMovingAverage(num_updates=...).

`RunningMean` is the same pass with w = 1 / (t + 1): after t updates its shadow is the plain
mean of the t weights folded in (the first update copies them), what the trainer serves at the
end of a consolidation sweep (agent/training/learn.py).

Vocabulary growth: new wte rows of the shadow copy the model's new rows (their average has
only just begun). Not here: when to update (the trainer, after each applied step),
checkpointing (engine.checkpoint stores `shadow` as the tensor "ema").
"""
from __future__ import annotations

import numpy as np

from engine._jit import kernel
from engine.model import Model
from engine.params import VOCAB_ROWS, ParamLayout, grow_flat


@kernel
def _ema_update(shadow, params, w):
    """shadow (N,) += w * (params (N,) - shadow), in place; w = 1 - decay."""
    for i in range(shadow.shape[0]):
        shadow[i] += w * (params[i] - shadow[i])


def decay_at(decay: float, t: int, warmup: bool = True) -> float:
    """The decay of update number t (0-based): min(decay, (1 + t) / (10 + t)) with warm-up."""
    return min(decay, (1.0 + t) / (10.0 + t)) if warmup else decay


class EMA:
    """The shadow weights (float32, the model's flat layout) and their update counter."""

    def __init__(self, params: np.ndarray, layout: ParamLayout, decay: float = 0.999,
                 warmup: bool = True, t: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if params.dtype != np.float32 or params.shape != (layout.size,):
            raise ValueError(f"params must be float32 of shape ({layout.size},), "
                             f"got {params.dtype} {params.shape}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.t = int(t)                    # updates made so far
        self.layout = layout
        self.shadow = np.array(params, dtype=np.float32, copy=True)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return decay_at(self.decay, self.t, self.warmup)

    def update(self, params: np.ndarray) -> None:
        """Fold the current weights in (call once per applied optimizer step)."""
        if params.shape != self.shadow.shape:
            raise ValueError(f"params have shape {params.shape}, the EMA {self.shadow.shape}: "
                             "grow the EMA with the model (EMA.grow)")
        _ema_update(self.shadow, params, np.float32(1.0 - self.current_decay()))
        self.t += 1

    def grow(self, new_layout: ParamLayout, params: np.ndarray) -> None:
        """Follow a vocabulary growth of the model whose (grown) flat params are `params`:
        the new rows of wte (and of an untied head) start at the model's new rows."""
        old_v = self.layout.shapes[0][0]
        rows = {n: new_layout.view(params, n)[old_v:] for n in VOCAB_ROWS
                if n in new_layout.names}
        self.shadow = grow_flat(self.shadow, self.layout, new_layout, rows)
        self.layout = new_layout

    def model(self, config):
        """A Model holding a copy of the EMA weights (for generation or evaluation)."""
        if config.vocab_size != self.layout.shapes[0][0]:
            raise ValueError(f"config has vocab_size {config.vocab_size}, the EMA "
                             f"{self.layout.shapes[0][0]}")
        return Model(config, params=self.shadow.copy())

    def meta(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "t": self.t}


class RunningMean(EMA):
    """The uniform mean of the weights folded in since it began (shadow is a copy of the
    weights until the first update, which replaces it): update t uses decay t / (t + 1)."""

    def __init__(self, params: np.ndarray, layout: ParamLayout, t: int = 0) -> None:
        super().__init__(params, layout, decay=0.5, warmup=False, t=t)

    def current_decay(self) -> float:
        return self.t / (self.t + 1.0)

    def meta(self) -> dict:
        return {"kind": "mean", "t": self.t}
