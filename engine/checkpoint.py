"""Checkpoints: safetensors files (never pickle) with weights, optimizer moments, an optional
EMA of the weights, and metadata, written atomically by engine.atomic.

Tensors: one per parameter (by name), `optim.m` / `optim.v` (flat), `ema` (flat, the
EMA's shadow weights) when the run keeps one, and `sweep_mean` (flat) while a consolidation
sweep is averaging its weights. Metadata holds the model and train configs (JSON), step,
cycle, optimizer step, vocabulary size, tokenizer hash, `ema` (JSON: decay, warmup, t; empty
without an EMA), `sweep_mean` (JSON: t; empty without one) and a SHA-256 of the tensor
payload, so truncation, corruption and mismatches are all refused with a CheckpointError
naming the file and the problem. NaN or Inf in the weights or the EMA is refused on writing
and on reading. A file written before the EMA (or the sweep mean) existed loads with
`ema=None` (`sweep=None`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from engine.atomic import atomic_write_bytes
from engine.config import ModelConfig, TrainConfig
from engine.ema import EMA, RunningMean
from engine.errors import CheckpointError
from engine.model import Model
from engine.numeric import all_finite
from engine.optim import Optimizer
from engine.params import ParamLayout

FORMAT = "cllm-checkpoint-1"


@dataclass
class LoadedCheckpoint:
    """What load_checkpoint read back (named apart from the store's Checkpoint row)."""
    path: Path
    model: Model
    train_config: Optional[TrainConfig]
    optimizer: Optional[Optimizer]
    step: int
    cycle: int
    tokenizer_sha256: Optional[str]
    extra: dict = field(default_factory=dict)
    ema: Optional[EMA] = None
    sweep: Optional[RunningMean] = None    # a consolidation sweep's mean so far (learn.py)

    def serving_model(self) -> Model:
        """The model to generate or evaluate with: the EMA weights when there are any."""
        return self.ema.model(self.model.config) if self.ema is not None else self.model


def _payload_sha256(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def save_checkpoint(path, model: Model, optimizer: Optional[Optimizer] = None,
                    train_config: Optional[TrainConfig] = None, step: int = 0, cycle: int = 0,
                    tokenizer_sha256: Optional[str] = None, extra: Optional[dict] = None,
                    ema: Optional[EMA] = None, sweep: Optional[RunningMean] = None) -> str:
    """Write a checkpoint atomically; returns the SHA-256 of the file's bytes. A model (or
    EMA, or a running mean of a consolidation sweep under way, `sweep`) with NaN or Inf
    parameters is refused: a checkpoint is never the place a corruption lands."""
    if not all_finite(model.params):
        raise CheckpointError(f"refusing to write {path}: the model has NaN or Inf parameters",
                              "the previous checkpoint is intact; lower the learning rate")
    for what, avg in (("EMA", ema), ("sweep's running mean", sweep)):
        if avg is None:
            continue
        if avg.shadow.shape != model.params.shape:
            raise CheckpointError(f"refusing to write {path}: the {what} has {avg.shadow.size} "
                                  f"weights, the model {model.params.size}",
                                  "grow the EMA with the model (EMA.grow)")
        if not all_finite(avg.shadow):
            raise CheckpointError(f"refusing to write {path}: the {what} has NaN or Inf "
                                  "weights", "the previous checkpoint is intact; lower the "
                                  "learning rate")

    tensors: dict[str, np.ndarray] = {n: np.ascontiguousarray(model.param(n))
                                      for n in model.param_names()}
    if optimizer is not None:
        for k, arr in optimizer.state().items():
            tensors[f"optim.{k}"] = arr
    if ema is not None:
        tensors["ema"] = ema.shadow
    if sweep is not None:
        tensors["sweep_mean"] = sweep.shadow
    meta = {
        "format": FORMAT,
        "model_config": model.config.to_json(),
        "train_config": (train_config or (optimizer.cfg if optimizer else None)).to_json()
        if (train_config or optimizer) else "",
        "step": str(int(step)),
        "cycle": str(int(cycle)),
        "optimizer_t": str(optimizer.t if optimizer else 0),
        "vocab_size": str(model.config.vocab_size),
        "tokenizer_sha256": tokenizer_sha256 or "",
        "payload_sha256": _payload_sha256(tensors),
        "extra": json.dumps(extra or {}, sort_keys=True),
        "ema": json.dumps(ema.meta(), sort_keys=True) if ema is not None else "",
        "sweep_mean": json.dumps(sweep.meta(), sort_keys=True) if sweep is not None else "",
    }
    data = save(tensors, metadata=meta)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path, expected_tokenizer_sha256: Optional[str] = None,
                    expected_sha256: Optional[str] = None) -> LoadedCheckpoint:
    """Load and verify a checkpoint; raises CheckpointError naming the file and the problem."""
    path = Path(path)
    hint = "use an earlier checkpoint or retrain; the file cannot be trusted"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist",
                              "check the path, or train first") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}",
                              "check its permissions") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CheckpointError(f"checkpoint {path} fails its SHA-256 check", hint)
    try:
        tensors = load(data)
        meta = _read_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({e})", hint
                              ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a Crystalline CLLM checkpoint "
                              f"(format {meta.get('format')!r})", hint)
    if _payload_sha256(tensors) != meta.get("payload_sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted (payload hash mismatch)", hint)
    try:
        cfg = ModelConfig.from_json(meta["model_config"])
        tcfg = TrainConfig.from_json(meta["train_config"]) if meta.get("train_config") else None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable configs ({e})", hint) from None
    tok = meta.get("tokenizer_sha256") or None
    if expected_tokenizer_sha256 is not None and tok != expected_tokenizer_sha256:
        raise CheckpointError(
            f"checkpoint {path} was made with another tokenizer ({tok} != "
            f"{expected_tokenizer_sha256})", "load the tokenizer saved with this checkpoint")
    layout = ParamLayout.from_config(cfg)
    flat = np.empty(layout.size, np.float32)
    views = layout.views(flat)
    for name, view in views.items():
        arr = tensors.get(name)
        if arr is None or arr.shape != view.shape or arr.dtype != np.float32:
            raise CheckpointError(f"checkpoint {path}: tensor {name!r} is missing or does not "
                                  f"match the config", hint)
        view[...] = arr
    if not all_finite(flat):
        raise CheckpointError(f"checkpoint {path} holds NaN or Inf parameters", hint)
    model = Model(cfg, params=flat)
    optimizer = None
    if tcfg is not None and "optim.m" in tensors:
        optimizer = Optimizer(layout, tcfg)
        state = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
        try:
            optimizer.load_state(state, int(meta.get("optimizer_t", "0")))
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: {e}", hint) from None
    try:   # the payload hash covers the tensors, not these fields: check them too
        step, cycle = int(meta.get("step", 0)), int(meta.get("cycle", 0))
        extra = json.loads(meta.get("extra") or "{}")
        ema_meta = json.loads(meta.get("ema") or "{}")
        sweep_meta = json.loads(meta.get("sweep_mean") or "{}")
    except ValueError as e:               # JSONDecodeError is a ValueError
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({e})", hint) from None
    ema = _load_ema(path, tensors.get("ema"), ema_meta, flat, layout, hint)
    sweep = _load_ema(path, tensors.get("sweep_mean"), sweep_meta, flat, layout, hint,
                      mean=True)
    return LoadedCheckpoint(path=path, model=model, train_config=tcfg, optimizer=optimizer,
                            step=step, cycle=cycle, tokenizer_sha256=tok, extra=extra, ema=ema,
                            sweep=sweep)


def _load_ema(path: Path, shadow: Optional[np.ndarray], meta: dict, flat: np.ndarray,
              layout: ParamLayout, hint: str, mean: bool = False) -> Optional[EMA]:
    """The EMA (or with `mean`, the sweep's RunningMean) a checkpoint holds, or None."""
    what = "sweep mean" if mean else "EMA"
    if shadow is None and not meta:
        return None                        # written without one (or before it existed)
    if shadow is None or shadow.shape != flat.shape or shadow.dtype != np.float32:
        raise CheckpointError(f"checkpoint {path}: the {what} tensor is missing or does not "
                              "match the config", hint)
    if not all_finite(shadow):
        raise CheckpointError(f"checkpoint {path} holds NaN or Inf {what} weights", hint)
    try:
        ema = (RunningMean(flat, layout, t=int(meta["t"])) if mean else
               EMA(flat, layout, decay=float(meta["decay"]), warmup=bool(meta["warmup"]),
                   t=int(meta["t"])))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable {what} metadata ({e})", hint
                              ) from None
    ema.shadow[...] = shadow
    return ema


def read_model_config(path) -> ModelConfig:
    """The model config a checkpoint was saved with, from its header alone (no tensors read,
    nothing verified: for messages, not for loading)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            meta = _read_metadata(head + f.read(n)) if 0 < n < (1 << 26) else {}
        return ModelConfig.from_json(meta["model_config"])
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot read the header of checkpoint {path} ({e})",
                              "use an earlier checkpoint or retrain") from None


def _read_metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise ValueError("file shorter than the safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("header length out of range")
    header = json.loads(data[8:8 + n])
    return header.get("__metadata__", {}) or {}
