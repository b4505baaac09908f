"""The checkpoint a data directory serves: the store's latest (or one cycle's), loaded through
its row and SHA-256, with its decoding copies made and its batcher of generations.

One loader (`load_serving_checkpoint`) for everything that generates: `cllm generate`,
`cllm chat` and `cllm serve`'s HTTP API. Which checkpoint is the latest is the store's
record; the files only hold what it names. A server beside the agent learns of a new one
from the trainer's `checkpoints/committed.json` (agent/training/model_state.py,
`announce_checkpoint`), then confirms with the store (agent/server/reload.py).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from agent.generation.batcher import DecodeBatcher
from agent.training.model_state import (ModelState, RecordedCheckpoint,
                                        load_recorded_model_state, recorded_checkpoints)
from engine.errors import CllmError
from engine.warmup import compile_decoding

# The copies decoding reads unless told (one of engine.decode.KINDS): int8 is several times
# faster, and its held-out perplexity stays within 0.01% of float32's (docs/benchmarks.md).
# The default of `cllm generate`, `cllm chat` and `cllm serve` (--decode-weights).
DECODE_WEIGHTS = "int8"


class ServingCheckpoint:
    """A loaded checkpoint ready to generate: the state, its serving model (EMA weights when
    there are any) and the store row it was loaded through. Read-only once built, so any
    number of generations may share it."""

    def __init__(self, state: ModelState, ref: RecordedCheckpoint,
                 weights: str = DECODE_WEIGHTS) -> None:
        self.state, self.ref, self.weights = state, ref, weights
        self.model = state.serving_model()
        self.tokenizer = state.tokenizer
        compile_decoding()                  # first run only: before the first request
        self.model.decode_weights(weights)  # the decode copies, made once per checkpoint
        self._batcher: Optional[DecodeBatcher] = None
        self._lock = threading.Lock()

    def batcher(self, rows: int) -> DecodeBatcher:
        """The continuous batcher of this checkpoint's generations (made on first use)."""
        with self._lock:
            if self._batcher is None:
                self._batcher = DecodeBatcher(self.model, rows, self.weights)
            return self._batcher

    def close(self) -> None:
        """End the batched generations of this checkpoint and join their thread."""
        with self._lock:
            batcher = self._batcher
        if batcher is not None:
            batcher.close()

    @property
    def cycle(self) -> Optional[int]:
        return self.ref.cycle_id

    @property
    def step(self) -> int:
        return self.state.step


def latest_ref(store) -> Optional[RecordedCheckpoint]:
    """The store's latest checkpoint row (None before the first one)."""
    rows = recorded_checkpoints(store)
    return rows[0] if rows and rows[0].is_latest else None


def load_serving_checkpoint(store, data_dir: Path, cycle: Optional[int] = None,
                            weights: str = DECODE_WEIGHTS) -> Optional[ServingCheckpoint]:
    """The latest recorded checkpoint of a data directory whose file matches its row's
    SHA-256 (a mismatching or missing one is refused with a warning and the previous one is
    tried: agent/training/model_state.load_recorded_model_state, the agent's rule); None
    when the store has no checkpoint yet. With `cycle`, the checkpoint that cycle committed,
    or a ConfigError saying which cycles have one.

    Read-only: unlike the trainer's resume (ContinuousTrainer.load_latest), nothing is rolled
    back when a fallback is used; that is the agent's decision at its next start."""
    if cycle is None and not recorded_checkpoints(store):
        return None
    state, row = load_recorded_model_state(store, cycle)   # names the cycles that have one
    if state is None:
        raise CllmError(f"no recorded checkpoint of {data_dir} could be loaded (each fails "
                        "its SHA-256 check or is missing)",
                        "retrain, or restore the checkpoint files (see cllm history checkpoints)")
    return ServingCheckpoint(state, row, weights)
