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


MLPS = ("gelu", "relu2")
POSITIONS = ("learned", "rope")
# ModelConfig fields that say what the network computes (not its size): `cllm` options of the
# recipe, the export's architecture check, the PyTorch twin
ARCH_FIELDS = ("mlp", "tie_head", "softcap", "zero_proj", "qk_norm", "pos", "rope_base")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 512      # V: rows of wte; grows append-only with the tokenizer
    context: int = 32          # T: maximum sequence length (rows of wpe)
    d_model: int = 64          # C: channels
    n_layers: int = 2          # L: transformer blocks
    n_heads: int = 4           # NH: attention heads; C % NH == 0
    init: str = "normal"       # "normal" (N(0, 0.02)) or "lattice" (clock-lattice wte)
    init_std: float = 0.02     # std of the normal init; residual projections get / sqrt(2L)
    # The recipe (issue "A modern recipe"); the defaults are GPT-2's, so a checkpoint written
    # before these fields existed loads as the architecture it was trained with.
    mlp: str = "gelu"          # MLP activation: "gelu" (tanh form) or "relu2" (relu(x)^2)
    tie_head: bool = True      # False: the head is its own (V, C) matrix `head`, not wte
    softcap: float = 0.0       # > 0: logits = softcap * tanh(logits / softcap)
    zero_proj: bool = False    # output projections (attn.proj.w, mlp.proj.w) start at zero
    qk_norm: bool = False      # RMS-normalise each head's q and k (gain per head channel)
    pos: str = "learned"       # positions: "learned" (wpe rows) or "rope" (rotary, NeoX halves)
    rope_base: float = 10000.0  # theta of the rotary frequencies

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "d_model", "n_layers", "n_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.init not in ("normal", "lattice"):
            raise ValueError(f"init must be 'normal' or 'lattice', got {self.init!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {', '.join(MLPS)}, got {self.mlp!r}")
        if self.pos not in POSITIONS:
            raise ValueError(f"pos must be one of {', '.join(POSITIONS)}, got {self.pos!r}")
        if not self.softcap >= 0.0:
            raise ValueError(f"softcap must be >= 0 (0: off), got {self.softcap}")
        if self.pos == "rope" and self.head_size % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_size}")
        if not self.rope_base > 1.0:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")

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
    optimizer: str = "adamw"           # "adamw", "sgd" (with momentum) or "muon" (+ AdamW)
    lr: float = 1e-3                   # peak learning rate (best for "constant" + EMA; cosine 2e-3)
    min_lr: float = 1e-4               # floor of the cosine decay / the wsd cooldown / rsqrt
    warmup_steps: int = 100            # linear warmup steps (per cycle for "cosine", else once)
    total_steps: Optional[int] = None  # cosine horizon of lr_at; None keeps lr at peak after warmup
    schedule: str = "constant"         # engine.schedule kind: "cosine", "wsd", "constant", "rsqrt"
    cooldown: float = 0.2              # "wsd": fraction of each cycle spent cooling to min_lr
    decay_steps: int = 1000            # "rsqrt": global step at which the peak starts to decay
    ema_decay: Optional[float] = 0.998  # cap of the weights' EMA decay (engine.ema); None: no EMA
    beta1: float = 0.9
    beta2: float = 0.99                # 0.99 beat 0.95 by 1.8% bpb (benchmarks/bench_recipe.py)
    eps: float = 1e-8
    weight_decay: float = 0.1          # decoupled, on matrices only (wte, wpe, *.w of linears)
    momentum: float = 0.9              # SGD momentum (0 = plain SGD)
    grad_clip: Optional[float] = 1.0   # global-norm clip; None disables
    crystalline_weight: float = 0.0    # lambda of the crystalline KL prior term
    batch_size: int = 8                # sequences per global batch
    muon_momentum: float = 0.95        # "muon": momentum of the hidden matrices' updates
    muon_scale: float = 0.2            # "muon": update RMS relative to AdamW's (Moonlight)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd", "muon"):
            raise ValueError(f"optimizer must be 'adamw', 'sgd' or 'muon', got {self.optimizer!r}")
        if not 0.0 <= self.muon_momentum < 1.0 or not self.muon_scale > 0.0:
            raise ValueError("muon_momentum must be in [0, 1) and muon_scale > 0")
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
                              warmup_steps=self.warmup_steps, cooldown=self.cooldown,
                              decay_steps=self.decay_steps)

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


def parse_arch(text: str) -> dict:
    """The recipe's options from text such as "mlp=relu2,qk_norm,pos=rope,tie_head=false,
    softcap=15": ModelConfig fields of ARCH_FIELDS, a bare name meaning true, "" or "gpt2"
    none (GPT-2's block).
    Raises ValueError naming what is wrong (each value is checked by ModelConfig too)."""
    if text is not None and not isinstance(text, str):
        raise ValueError(f"architecture options are text such as 'mlp=relu2,qk_norm', "
                         f"got {text!r}")
    out: dict = {}
    types = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part or part.lower() == "gpt2":
            continue
        name, _, value = part.partition("=")
        name, value = name.strip().replace("-", "_"), value.strip()
        if name not in ARCH_FIELDS:
            raise ValueError(f"unknown architecture option {name!r}; the options are "
                             f"{', '.join(ARCH_FIELDS)}")
        kind = types[name]
        if kind in (bool, "bool"):
            if value.lower() not in ("", "true", "1", "yes", "on", "false", "0", "no", "off"):
                raise ValueError(f"{name} takes true or false, got {value!r}")
            out[name] = value.lower() in ("", "true", "1", "yes", "on")
        elif kind in (float, "float"):
            try:
                out[name] = float(value)
            except ValueError:
                raise ValueError(f"{name} takes a number, got {value!r}") from None
        else:
            if not value:
                raise ValueError(f"{name} needs a value ({name}=...)")
            out[name] = value
    ModelConfig(**out)               # the field checks (mlp and pos names, softcap >= 0)
    return out


def arch_text(cfg: ModelConfig) -> str:
    """The options of cfg that differ from GPT-2's, as parse_arch reads them ("" for GPT-2)."""
    plain = ModelConfig()
    parts = []
    for name in ARCH_FIELDS:
        v = getattr(cfg, name)
        if v == getattr(plain, name):
            continue
        if isinstance(v, bool):
            parts.append(name if v else f"{name}=false")
        elif isinstance(v, float):
            parts.append(f"{name}={v:g}")
        else:
            parts.append(f"{name}={v}")
    return ",".join(parts)


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
