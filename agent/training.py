"""One training run over a set of documents: grow the tokenizer and the model, build
batches, train on the ThreadedTrainingSystem with live progress, evaluate, checkpoint.

`cllm train` is one such run; the continuous trainer runs one per cycle. The data
directory holds `checkpoints/ckpt-NNNNNN.safetensors` next to the tokenizer state it was
trained with (`ckpt-NNNNNN.tokenizer.json`, whose SHA-256 the checkpoint records).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from engine import Model, Optimizer, ThreadedTrainingSystem, TrainConfig, preset
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.data import WindowSampler, evaluate, pack
from engine.errors import CheckpointError, CllmError
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)
CKPT_RE = re.compile(r"^ckpt-(\d{6})\.safetensors$")
TOKENIZER_RE = re.compile(r"^ckpt-(\d{6})\.tokenizer\.json$")


@dataclass(frozen=True)
class Doc:
    uri: str
    source: str
    text: str


@dataclass
class RunResult:
    steps: int = 0
    skipped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    loss_start: Optional[float] = None
    loss_end: Optional[float] = None
    val_loss: dict[str, float] = field(default_factory=dict)
    new_token_ids: list[int] = field(default_factory=list)
    checkpoint_path: Optional[Path] = None
    checkpoint_sha256: Optional[str] = None
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class State:
    """What a data directory's latest checkpoint holds, ready to train further."""
    model: Model
    tokenizer: Tokenizer
    optimizer: Optional[Optimizer]
    cycle: int
    step: int
    path: Optional[Path] = None


def checkpoint_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "checkpoints"


def checkpoint_path(data_dir: Path, cycle: int) -> Path:
    return checkpoint_dir(data_dir) / f"ckpt-{cycle:06d}.safetensors"


def tokenizer_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name.replace(".safetensors", ".tokenizer.json"))


def list_checkpoints(data_dir: Path) -> list[Path]:
    d = checkpoint_dir(data_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if CKPT_RE.match(p.name))


def load_state(ckpt: Path, expected_sha256: Optional[str] = None) -> State:
    """Load a checkpoint and the tokenizer saved with it (hash-checked both ways)."""
    ck = load_checkpoint(ckpt, expected_sha256=expected_sha256)
    tpath = tokenizer_path(ckpt)
    if not tpath.exists():
        raise CheckpointError(f"tokenizer file {tpath} for checkpoint {ckpt} is missing",
                              "restore it or train from scratch")
    tok = Tokenizer.load(tpath, expected_sha256=ck.tokenizer_sha256)
    return State(ck.model, tok, ck.optimizer, ck.cycle, ck.step, ckpt)


def latest_state(data_dir: Path) -> Optional[State]:
    """The newest loadable checkpoint of a data directory (files only, no store)."""
    for ckpt in reversed(list_checkpoints(data_dir)):
        try:
            return load_state(ckpt)
        except CllmError as e:
            log.warning("skipping checkpoint: %s", e.one_line())
    return None


def new_state(preset_name: str, seed: int = 0, init: Optional[str] = None) -> State:
    cfg = preset(preset_name)
    tok = Tokenizer(max_vocab=cfg.vocab_size)
    mcfg = cfg.replace(vocab_size=len(tok), **({"init": init} if init else {}))
    return State(Model(mcfg, seed=seed), tok, None, 0, 0)


def split_validation(docs: Sequence[Doc], fraction: float) -> tuple[list[Doc], dict[str, str]]:
    """Hold out the tail `fraction` of every document; held-out text is grouped by source."""
    train: list[Doc] = []
    held: dict[str, list[str]] = {}
    for d in docs:
        cut = int(len(d.text) * (1.0 - fraction))
        train.append(Doc(d.uri, d.source, d.text[:cut]))
        held.setdefault(d.source, []).append(d.text[cut:])
    return train, {src: "\n".join(parts) for src, parts in held.items()}


def train_run(state: State, docs: Sequence[Doc], tcfg: TrainConfig, steps: int,
              workers: Optional[int] = None, replay: Sequence[Doc] = (),
              replay_fraction: float = 0.0, max_new_tokens: int = 1000,
              heldout: Optional[dict[str, str]] = None, seed: int = 0,
              progress: Optional[Callable[[int, int, float], None]] = None,
              stop: Optional[Callable[[], bool]] = None) -> RunResult:
    """Learn vocabulary from `docs`, grow the model, train `steps` steps on `docs` mixed with
    `replay` (a `replay_fraction` share of sequences), and evaluate on `heldout` per source."""
    res = RunResult()
    model, tok = state.model, state.tokenizer
    texts = [d.text for d in docs]
    if max_new_tokens > 0 and texts:
        res.new_token_ids = tok.learn(texts, max_new_tokens=max_new_tokens)
    if len(tok) > model.config.vocab_size:
        model.grow_vocab(len(tok))
        if state.optimizer is not None:
            state.optimizer.grow(model.layout)
    if state.optimizer is None or state.optimizer.cfg != tcfg:
        old = state.optimizer
        state.optimizer = Optimizer(model.layout, tcfg)
        if old is not None and old.cfg.optimizer == tcfg.optimizer:
            for k, arr in old.state().items():
                state.optimizer.state()[k][...] = arr
            state.optimizer.t = old.t
    new_stream = pack((tok.encode(t) for t in texts), tok.eod_id)
    streams, weights = [new_stream], [1.0 - replay_fraction if replay else 1.0]
    if replay and replay_fraction > 0:
        streams.append(pack((tok.encode(d.text) for d in replay), tok.eod_id))
        weights.append(replay_fraction)
    if len(new_stream) < 2:
        raise CllmError("the documents hold no trainable text", "add text files with content")
    sampler = WindowSampler(streams, model.config.context, tcfg.batch_size, weights, seed)
    tcfg = tcfg.replace(total_steps=steps) if tcfg.total_steps is None else tcfg
    t0 = time.perf_counter()
    with ThreadedTrainingSystem(model, tcfg, n_workers=workers,
                                optimizer=state.optimizer) as system:
        for i in range(steps):
            if stop is not None and stop():
                break
            r = system.train_step(*sampler.batch())
            res.steps += 1
            res.skipped += int(r.skipped)
            res.tokens += r.tokens
            if not r.skipped:
                res.losses.append(r.loss)
            if progress is not None:
                progress(i + 1, steps, r.loss)
    res.seconds = time.perf_counter() - t0
    state.step += res.steps
    if res.losses:
        k = max(1, min(10, len(res.losses) // 5))
        res.loss_start = float(np.mean(res.losses[:k]))
        res.loss_end = float(np.mean(res.losses[-k:]))
    for source, text in (heldout or {}).items():
        v = evaluate(model, pack([tok.encode(text)], tok.eod_id))
        if v is not None:
            res.val_loss[source] = v
    return res


def save_state(state: State, data_dir: Path, cycle: int, extra: Optional[dict] = None
               ) -> tuple[Path, str]:
    """Write tokenizer then checkpoint (both atomic); returns (path, file SHA-256)."""
    path = checkpoint_path(Path(data_dir).resolve(), cycle)   # recorded as an absolute path
    path.parent.mkdir(parents=True, exist_ok=True)
    state.tokenizer.save(tokenizer_path(path))
    sha = save_checkpoint(path, state.model, state.optimizer,
                          state.optimizer.cfg if state.optimizer else None, step=state.step,
                          cycle=cycle, tokenizer_sha256=state.tokenizer.sha256, extra=extra)
    state.cycle, state.path = cycle, path
    return path, sha
