"""Learning-rate schedules for a training process that never ends, as pure functions.

A continuous learner trains in cycles of planned length, for ever. Each schedule maps
(global step since the model was created, step within the current cycle, the cycle's
planned steps) to a learning rate; nothing here holds state, so a resumed run only needs the
step counters the checkpoint already keeps.

- "cosine": linear warmup then cosine to min_lr, both re-run every cycle (re-warmed cosine,
  Ibrahim et al. 2024, arXiv 2403.08763). Today's schedule; `engine.optim.lr_at` is this
  with cycle_step = its step argument.
- "wsd": warmup-stable-decay. Warmup once, over the first warmup_steps GLOBAL steps; then the
  peak rate; over the last `cooldown` fraction of every cycle the rate falls to min_lr along
  1 - sqrt(progress) (Hägele et al. 2024, arXiv 2405.18392, find 1-sqrt beats a linear
  cooldown: it drops faster early and lingers near the floor, where most of the gain of
  annealing is made). The next cycle starts at the peak again.
- "constant": warmup once (global steps), then the peak rate for ever; serve an EMA of the
  weights (engine.ema) as the annealed model (Singh et al. 2025, arXiv 2503.02844).
- "rsqrt": warmup once, the peak rate until global step `decay_steps`, then the peak times
  sqrt(decay_steps / step) down to min_lr, held there for ever (the inverse square root
  schedule of Vaswani et al. 2017, with the floor a learner that never stops needs to keep
  learning new text; Zhai et al. 2022 and Hägele et al. 2024 train open-ended runs on it).
  A young model takes large steps, an old one the floor's; the EMA anneals what is served.

Not here: the optimizer (engine.optim), the EMA (engine.ema), and how long a cycle is
(the trainer plans cycle_steps; only "cosine" and "wsd" use it).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

KINDS = ("cosine", "wsd", "constant", "rsqrt")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "constant"      # one of KINDS
    lr: float = 1e-3            # peak learning rate
    min_lr: float = 1e-4        # floor of the cosine decay / the wsd cooldown / rsqrt
    warmup_steps: int = 100     # linear warmup: per cycle for "cosine", once for the others
    cooldown: float = 0.2       # "wsd": fraction of each cycle's planned steps cooling down
    decay_steps: int = 1000     # "rsqrt": global step at which the peak starts to decay

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.lr < 0 or self.min_lr < 0:
            raise ValueError("learning rates must be >= 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps < 1:
            raise ValueError(f"decay_steps must be >= 1, got {self.decay_steps}")
        if not 0.0 <= self.cooldown <= 1.0:
            raise ValueError(f"cooldown is a fraction of a cycle in [0, 1], got {self.cooldown}")

    def replace(self, **changes) -> "ScheduleConfig":
        return dataclasses.replace(self, **changes)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """(step + 1) / warmup_steps during warmup (step 0-based), 1 after."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


def cosine_lr(lr: float, min_lr: float, warmup_steps: int, step: int,
              total_steps: int | None) -> float:
    """Linear warmup over steps [0, warmup) then cosine from lr to min_lr at total_steps
    (held at min_lr after it); with total_steps None the rate stays at lr after warmup."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * warmup_factor(step, warmup_steps)
    if total_steps is None:
        return lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def cooldown_steps(cfg: ScheduleConfig, cycle_steps: int) -> int:
    """Steps at the end of a cycle of cycle_steps spent cooling down ("wsd")."""
    return min(int(cycle_steps), int(math.ceil(cfg.cooldown * cycle_steps)))


def learning_rate(cfg: ScheduleConfig, global_step: int, cycle_step: int,
                  cycle_steps: int) -> float:
    """The rate for the step about to be taken.

    global_step: steps taken since the model was created (0 for its first step);
    cycle_step: steps taken in this cycle (0-based); cycle_steps: the cycle's planned steps.
    A step past the plan (cycle_step >= cycle_steps) gets the rate of the plan's last step.
    """
    if cfg.kind == "cosine":
        return cosine_lr(cfg.lr, cfg.min_lr, cfg.warmup_steps, cycle_step, cycle_steps)
    peak = cfg.lr * warmup_factor(global_step, cfg.warmup_steps)
    if cfg.kind == "constant":
        return peak
    if cfg.kind == "rsqrt":
        if global_step < cfg.decay_steps:
            return peak
        return min(peak, max(cfg.min_lr, cfg.lr * math.sqrt(cfg.decay_steps / (global_step + 1))))
    n = cooldown_steps(cfg, cycle_steps)                      # "wsd"
    k = min(cycle_step, cycle_steps - 1) - (cycle_steps - n)  # steps into the cooldown
    if n == 0 or k < 0:
        return peak
    progress = (k + 1) / n                                    # (0, 1]: min_lr on the last step
    return min(peak, cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - math.sqrt(progress)))
