"""Crystalline CLLM engine: a GPT-2 style language model in numpy + numba.

Public API: ModelConfig, TrainConfig, presets (tiny, small, base), Model, Optimizer,
lr_at, ScheduleConfig / learning_rate (engine.schedule), EMA (engine.ema),
save_checkpoint / load_checkpoint / LoadedCheckpoint, ThreadedTrainingSystem, Tokenizer.
"""
from engine.config import PRESETS, ModelConfig, TrainConfig, base, preset, small, tiny
from engine.errors import CheckpointError, CllmError, ConfigError
from engine.model import Model, Workspace
from engine.optim import Optimizer, clip_scale, lr_at
from engine.schedule import ScheduleConfig, learning_rate
from engine.ema import EMA
from engine.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint

__all__ = [
    "PRESETS", "ModelConfig", "TrainConfig", "base", "preset", "small", "tiny",
    "CheckpointError", "CllmError", "ConfigError", "Model", "Workspace", "Optimizer",
    "clip_scale", "lr_at", "ScheduleConfig", "learning_rate", "EMA", "LoadedCheckpoint",
    "load_checkpoint", "save_checkpoint",
]
from engine.spheres import (StepResult, ThreadedTrainingSystem, WatchdogTimeout,  # noqa: E402
                            WorkerError, build_hierarchy)

from engine.tokenizer import Tokenizer, TokenizerError  # noqa: E402

__all__ += ["Tokenizer", "TokenizerError", "StepResult", "ThreadedTrainingSystem", "WatchdogTimeout", "WorkerError",
            "build_hierarchy"]
