"""The model a data directory serves: the store's latest checkpoint (or one cycle's), loaded
through its row and SHA-256, and text generation from it with stop strings and usage counts.

One loader (`load_serving_checkpoint`) and one generation loop (`TextStream`) for everything
that generates: `cllm generate`, `cllm chat` and `cllm serve`'s HTTP API.

Which checkpoint is the latest is the store's record; the files only hold what it names.
After a cycle commits its checkpoint the trainer also writes `checkpoints/committed.json`
(`announce_checkpoint`), so a server beside the agent learns of it from a file event instead
of polling the store; the server then confirms with the store.
"""
from __future__ import annotations

import codecs
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from agent.batching import DecodeBatcher
from agent.model_state import (ModelState, RecordedCheckpoint, checkpoint_dir,
                               load_recorded_model_state, recorded_checkpoints)
from engine.atomic import atomic_write_bytes
from engine.errors import CllmError, ConfigError
from engine.warmup import compile_decoding

log = logging.getLogger(__name__)
COMMIT_MARKER = "committed.json"   # in the checkpoints folder: the last committed checkpoint


class ServingCheckpoint:
    """A loaded checkpoint ready to generate: the state, its serving model (EMA weights when
    there are any) and the store row it was loaded through. Read-only once built, so any
    number of generations may share it."""

    def __init__(self, state: ModelState, ref: RecordedCheckpoint,
                 weights: str = "int8") -> None:
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
                            weights: str = "int8") -> Optional[ServingCheckpoint]:
    """The latest recorded checkpoint of a data directory whose file matches its row's
    SHA-256 (a mismatching or missing one is refused with a warning and the previous one is
    tried: agent/model_state.load_recorded_model_state, the agent's rule); None when the
    store has no checkpoint yet. With `cycle`, the checkpoint that cycle committed, or a
    CllmError saying which cycles have one.

    Read-only: unlike the trainer's resume (ContinuousTrainer.load_latest), nothing is rolled
    back when a fallback is used; that is the agent's decision at its next start."""
    rows = recorded_checkpoints(store)
    if cycle is not None and all(r.cycle_id != cycle for r in rows):
        have = sorted({r.cycle_id for r in rows if r.cycle_id is not None})
        raise ConfigError(f"cycle {cycle} has no checkpoint in {data_dir}",
                        "cycles with one: " + (", ".join(map(str, have)) or "none yet"))
    if not rows:
        return None
    state, row = load_recorded_model_state(store, cycle)
    if state is None:
        raise CllmError(f"no recorded checkpoint of {data_dir} could be loaded (each fails "
                        "its SHA-256 check or is missing)",
                        "retrain, or restore the checkpoint files (see cllm history checkpoints)")
    return ServingCheckpoint(state, row, weights)


def announce_checkpoint(data_dir: Path, path: Path, sha256: str, cycle_id: Optional[int]) -> None:
    """Write checkpoints/committed.json (atomically) once a checkpoint's row is committed:
    the file event a server beside the agent waits for (it reads the store, not this file)."""
    body = json.dumps({"path": str(path), "sha256": sha256, "cycle_id": cycle_id})
    try:
        atomic_write_bytes(checkpoint_dir(data_dir) / COMMIT_MARKER, body.encode())
    except OSError as e:    # a signal for servers only: never fail a committed cycle over it
        log.warning("could not write %s: %s", COMMIT_MARKER, e)


# --------------------------------------------------------------------------- generation

@dataclass(frozen=True)
class Sampling:
    """How to draw tokens: temperature 0 is greedy; top_k/top_p None keep everything."""
    max_tokens: int = 120
    temperature: float = 0.8
    top_k: Optional[int] = 40
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()


class TextStream:
    """Generate text from a checkpoint, one decoded piece at a time.

    Iterating yields text: whole UTF-8 characters, never a piece of a stop string (text
    that could still become one is held back until it cannot), stopping at the end-of-text
    token, at a stop string (not included) or after `max_tokens` tokens. With a `batcher`
    (a server's) the tokens come from its batched decoding, shared with other requests.
    After the loop, `finish_reason` is "stop" or "length" (OpenAI's names) and
    `prompt_tokens` / `completion_tokens` count tokens. A set `cancel` event ends it before
    the next token.
    """

    def __init__(self, ckpt: ServingCheckpoint, prompt: str, sampling: Sampling,
                 cancel: Optional[threading.Event] = None,
                 batcher: Optional[DecodeBatcher] = None) -> None:
        tok = ckpt.tokenizer
        self.ckpt, self.sampling, self.cancel, self.batcher = ckpt, sampling, cancel, batcher
        self.ids = list(tok.encode(prompt)) if prompt else []
        self.prompt_tokens = len(self.ids)
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self.text = ""                    # everything produced (including held-back text)

    def __iter__(self) -> Iterator[str]:
        tok, sp = self.ckpt.tokenizer, self.sampling
        stops = [s for s in sp.stop if s]
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sent = 0
        self.finish_reason = "length"
        ids = self.ids or [tok.eod_id]
        source = (self.batcher.stream if self.batcher is not None
                  else self.ckpt.model.generate_stream)
        kw = {} if self.batcher is not None else {"weights": self.ckpt.weights}
        gen = source(ids, sp.max_tokens, temperature=sp.temperature, top_k=sp.top_k,
                     top_p=sp.top_p, seed=sp.seed, **kw)
        try:
            for t in gen:
                if self.cancel is not None and self.cancel.is_set():
                    self.finish_reason = "cancelled"
                    return
                if t == tok.eod_id:
                    self.finish_reason = "stop"
                    break
                self.completion_tokens += 1
                self.text += dec.decode(tok.token_bytes(t))
                hit = _first_stop(self.text, stops, sent)
                if hit is not None:
                    self.text = self.text[:hit]
                    self.finish_reason = "stop"
                    break
                end = len(self.text) - _held_back(self.text, stops)
                if end > sent:
                    yield self.text[sent:end]
                    sent = end
            else:
                self.text += dec.decode(b"", final=True)
                hit = _first_stop(self.text, stops, sent)
                if hit is not None:
                    self.text, self.finish_reason = self.text[:hit], "stop"
        finally:
            gen.close()
        if len(self.text) > sent:
            yield self.text[sent:]

    def run(self) -> str:
        """The whole completion at once."""
        return "".join(self)


CHAT_ROLES = {"system": "System", "developer": "System", "user": "User",
              "assistant": "Assistant"}
CHAT_STOPS = ("\nUser:", "\nSystem:")   # the model going on with the conversation by itself


def chat_prompt(messages: Sequence[tuple[str, str]]) -> str:
    """The plain chat template: one "Role: text" line per (role, text) message, then
    "Assistant:" for the model to continue. Generate with CHAT_STOPS among the stops."""
    return "\n".join(f"{CHAT_ROLES[role]}: {text}" for role, text in messages) + "\nAssistant:"


def _first_stop(text: str, stops: Sequence[str], start: int) -> Optional[int]:
    """Where the earliest stop string begins at or after `start`, if any (text before
    `start` was sent, and what was sent never ends with the start of a stop string)."""
    found = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could be the start of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
