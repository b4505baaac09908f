"""The checkpoint a data directory serves: the store's latest (or one cycle's), loaded through
its row and SHA-256, with its decoding copies made and its batcher of generations; or, while a
cycle trains, that cycle's live snapshot.

One loader (`load_serving_checkpoint`) for everything that generates: `cllm generate`,
`cllm chat` and `cllm serve`'s HTTP API. Which checkpoint is the latest is the store's
record; the files only hold what it names. The live snapshot the trainer publishes between
commits (agent/training/snapshot.py) is taken instead while it belongs to the cycle after
that checkpoint and passes its SHA-256 check; `committed=True` (or a `cycle`) never takes it.
A server beside the agent learns of a new checkpoint from the trainer's
`checkpoints/committed.json` (agent/training/model_state.py, `announce_checkpoint`), and of a
new snapshot from its sidecar `checkpoints/live.json`, then confirms with the store
(agent/server/reload.py).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional

from agent.generation.batcher import DecodeBatcher
from agent.training.model_state import (ModelState, RecordedCheckpoint,
                                        load_recorded_model_state, recorded_checkpoints)
from agent.training.snapshot import LiveSnapshot, live_sha256, load_live_snapshot
from engine.errors import CllmError
from engine.config import arch_text
from engine.warmup import compile_decoding

log = logging.getLogger(__name__)

# The copies decoding reads unless told (one of engine.decode.KINDS): int8 is several times
# faster, and its held-out perplexity stays within 0.01% of float32's (docs/benchmarks.md).
# The default of `cllm generate`, `cllm chat` and `cllm serve` (--decode-weights).
DECODE_WEIGHTS = "int8"


class ServingCheckpoint:
    """A loaded checkpoint ready to generate: the state, its serving model (EMA weights when
    there are any) and the store row it was loaded through (`ref`), or a live snapshot
    (`live`; `ref` is then the committed checkpoint its cycle started from). Read-only once
    built, so any number of generations may share it."""

    def __init__(self, state: ModelState, ref: RecordedCheckpoint,
                 weights: str = DECODE_WEIGHTS, live: Optional[LiveSnapshot] = None) -> None:
        self.state, self.ref, self.weights, self.live = state, ref, weights, live
        self.model = state.serving_model()
        self.tokenizer = state.tokenizer
        compile_decoding(arch=arch_text(self.model.config))   # first run only: before a request
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
        """The cycle whose training the weights hold (a live snapshot's: still running)."""
        return self.live.cycle_id if self.live is not None else self.ref.cycle_id

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def path(self) -> Path:
        """The file the weights came from."""
        return self.live.path if self.live is not None else self.ref.path

    @property
    def sha256(self) -> str:
        return self.live.sha256 if self.live is not None else self.ref.sha256

    @property
    def key(self) -> tuple[int, Optional[str]]:
        """What a server compares to know whether to reload (`serving_key`)."""
        return self.ref.id, self.live.sha256 if self.live is not None else None

    def describe(self) -> dict:
        """What was loaded, as `cllm generate --json`, /v1/models and /api/status show it:
        `live` says whether it is a live snapshot (then `cycle_step`, its step in the
        running cycle, and `base_cycle`, the committed checkpoint's cycle it started from)."""
        out = {"cycle": self.cycle, "step": self.step, "checkpoint_path": str(self.path),
               "checkpoint_sha256": self.sha256, "live": self.live is not None}
        if self.live is not None:
            out.update(cycle_step=self.live.cycle_step, base_cycle=self.ref.cycle_id)
        return out


def latest_ref(store) -> Optional[RecordedCheckpoint]:
    """The store's latest checkpoint row (None before the first one)."""
    rows = recorded_checkpoints(store)
    return rows[0] if rows and rows[0].is_latest else None


def serving_key(store, data_dir: Path, committed: bool = False
                ) -> Optional[tuple[int, Optional[str]]]:
    """The `key` of what `load_serving_checkpoint` would load now (None: nothing), read from
    the store and the live sidecar without loading any weights."""
    ref = latest_ref(store)
    if ref is None:
        return None
    return ref.id, None if committed else live_sha256(store, data_dir)


def load_serving_checkpoint(store, data_dir: Path, cycle: Optional[int] = None,
                            weights: str = DECODE_WEIGHTS, committed: bool = False
                            ) -> Optional[ServingCheckpoint]:
    """The live snapshot of the cycle after the store's latest checkpoint, if there is one
    that passes its checks (agent/training/snapshot.load_live_snapshot: a stale or
    mismatching one is ignored with a warning); else the latest recorded checkpoint of a
    data directory whose file matches its row's SHA-256 (a mismatching or missing one is
    refused with a warning and the previous one is tried:
    agent/training/model_state.load_recorded_model_state, the agent's rule); None when the
    store has no checkpoint yet. With `committed`, never the live snapshot. With `cycle`,
    the checkpoint that cycle committed, or a ConfigError saying which cycles have one.

    Read-only: unlike the trainer's resume (ContinuousTrainer.load_latest), nothing is rolled
    back when a fallback is used; that is the agent's decision at its next start."""
    if cycle is None and not recorded_checkpoints(store):
        return None
    if cycle is None and not committed:
        live = load_live_snapshot(store, data_dir)
        if live is not None:
            state, snap, base = live
            log.info("loaded the live snapshot of cycle %s (step %s, %s steps into the cycle; "
                     "it started from cycle %s's checkpoint)", snap.cycle_id, snap.step,
                     snap.cycle_step, base.cycle_id)
            return ServingCheckpoint(state, base, weights, live=snap)
    state, row = load_recorded_model_state(store, cycle)   # names the cycles that have one
    if state is None:
        raise CllmError(f"no recorded checkpoint of {data_dir} could be loaded (each fails "
                        "its SHA-256 check or is missing)",
                        "retrain, or restore the checkpoint files (see cllm history checkpoints)")
    log.info("loaded checkpoint %s (cycle %s, step %s)", row.path, row.cycle_id, state.step)
    return ServingCheckpoint(state, row, weights)
