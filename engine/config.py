"""Frozen configuration dataclasses for the model and for training, plus named presets.

Both are saved in every checkpoint (as JSON in the safetensors metadata); on resume the
architecture comes from the checkpoint, not from the command line.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

from engine.schedule import ScheduleConfig


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 512      # V: rows of wte; grows append-only with the tokenizer
    context: int = 32          # T: maximum sequence length (rows of wpe)
    d_model: int = 64          # C: channels
    n_layers: int = 2          # L: transformer blocks
    n_heads: int = 4           # NH: attention heads; C % NH == 0
    init: str = "normal"       # "normal" (N(0, 0.02)) or "lattice" (clock-lattice wte)
    init_std: float = 0.02     # std of the normal init; residual projections get / sqrt(2L)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "d_model", "n_layers", "n_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.init not in ("normal", "lattice"):
            raise ValueError(f"init must be 'normal' or 'lattice', got {self.init!r}")

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adamw"           # "adamw" or "sgd" (with momentum)
    lr: float = 1e-3                   # peak learning rate (best for "constant" + EMA; cosine 2e-3)
    min_lr: float = 1e-4               # floor of the cosine decay / the wsd cooldown
    warmup_steps: int = 100            # linear warmup steps (per cycle for "cosine", else once)
    total_steps: Optional[int] = None  # cosine horizon of lr_at; None keeps lr at peak after warmup
    schedule: str = "constant"         # engine.schedule kind: "cosine", "wsd" or "constant"
    cooldown: float = 0.2              # "wsd": fraction of each cycle spent cooling to min_lr
    ema_decay: Optional[float] = 0.998  # cap of the weights' EMA decay (engine.ema); None: no EMA
    beta1: float = 0.9
    beta2: float = 0.99                # 0.99 beat 0.95 by 1.8% bpb (benchmarks/bench_recipe.py)
    eps: float = 1e-8
    weight_decay: float = 0.1          # decoupled, on matrices only (wte, wpe, *.w of linears)
    momentum: float = 0.9              # SGD momentum (0 = plain SGD)
    grad_clip: Optional[float] = 1.0   # global-norm clip; None disables
    crystalline_weight: float = 0.0    # lambda of the crystalline KL prior term
    batch_size: int = 8                # sequences per global batch

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.lr < 0 or self.min_lr < 0:
            raise ValueError("learning rates must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be > 0 or None")
        if self.crystalline_weight < 0:
            raise ValueError("crystalline_weight must be >= 0")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        self.schedule_config()               # validates schedule, warmup_steps and cooldown

    def schedule_config(self) -> ScheduleConfig:
        """The engine.schedule.ScheduleConfig these fields describe."""
        return ScheduleConfig(kind=self.schedule, lr=self.lr, min_lr=self.min_lr,
                              warmup_steps=self.warmup_steps, cooldown=self.cooldown)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        fields = json.loads(text)
        for name, value in _BEFORE_SCHEDULES.items():   # written before these fields existed
            fields.setdefault(name, value)
        return cls(**fields)


# What a TrainConfig saved before the schedule fields existed was trained with.
_BEFORE_SCHEDULES = {"schedule": "cosine", "ema_decay": None}


PRESETS: dict[str, ModelConfig] = {
    # tiny: for tests; fast to compile, run and gradient-check
    "tiny": ModelConfig(vocab_size=320, context=16, d_model=32, n_layers=2, n_heads=4),
    "small": ModelConfig(vocab_size=4096, context=64, d_model=128, n_layers=2, n_heads=4),
    "base": ModelConfig(vocab_size=10000, context=128, d_model=256, n_layers=4, n_heads=8),
}

tiny = PRESETS["tiny"]
small = PRESETS["small"]
base = PRESETS["base"]


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
