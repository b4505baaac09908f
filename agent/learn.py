"""One learning run over a set of documents: grow the tokenizer and the model, build
batches, train on the ThreadedTrainingSystem with live progress, evaluate.

The continuous trainer runs one per cycle (`cllm train` is such a cycle); checkpoint files
are agent/model_state.py's, the record of what was learned is the store's.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from agent.model_state import ModelState
from engine import Optimizer, ThreadedTrainingSystem, TrainConfig
from engine.data import WindowSampler, evaluate, pack
from engine.errors import CllmError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Doc:
    uri: str
    source: str
    text: str


@dataclass
class LearnResult:
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


def split_heldout(text: str, fraction: float) -> tuple[str, str]:
    """(training head, held-out tail `fraction` of the characters): the one split of a
    document, the same every cycle, so forgetting compares like with like."""
    cut = int(len(text) * (1.0 - fraction))
    return text[:cut], text[cut:]


def split_validation(docs: Sequence[Doc], fraction: float) -> tuple[list[Doc], dict[str, str]]:
    """Every document's training head, and the held-out tails grouped by source."""
    train: list[Doc] = []
    held: dict[str, list[str]] = {}
    for d in docs:
        head, tail = split_heldout(d.text, fraction)
        train.append(Doc(d.uri, d.source, head))
        held.setdefault(d.source, []).append(tail)
    return train, {src: "\n".join(parts) for src, parts in held.items()}


def learn(state: ModelState, docs: Sequence[Doc], tcfg: TrainConfig, steps: int,
              workers: Optional[int] = None, replay: Sequence[Doc] = (),
              replay_fraction: float = 0.0, max_new_tokens: int = 1000,
              heldout: Optional[dict[str, str]] = None, seed: int = 0,
              progress: Optional[Callable[[int, int, float], None]] = None,
              stop: Optional[Callable[[], bool]] = None) -> LearnResult:
    """Learn vocabulary from `docs`, grow the model, train `steps` steps on `docs` mixed with
    `replay` (a `replay_fraction` share of sequences), and evaluate on `heldout` per source."""
    res = LearnResult()
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
