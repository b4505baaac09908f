"""A data directory's model: the state a checkpoint holds (model, tokenizer, optimizer, step,
cycle) and where its files live: `checkpoints/ckpt-NNNNNN.safetensors` next to the
tokenizer state it was trained with (`ckpt-NNNNNN.tokenizer.json`, whose SHA-256 the
checkpoint records), and a new model (`new_model_state`: the byte tokens; its first cycle
learns its vocabulary, then `build_at_vocabulary` builds it afresh at that size).

Which checkpoint is the latest, and whether its file is the one committed, is the store's
record: every reader (the agent, `cllm generate`, `cllm neighbours`, the server) loads through
`recorded_checkpoints` and `first_loadable` (together: `load_recorded_model_state`), which
check the file against the SHA-256 its row holds and fall back to the previous one. Training
lives in agent/training/learn.py. Once a cycle's checkpoint row is
committed, `announce_checkpoint` writes `checkpoints/committed.json` for servers beside the
agent (a file event instead of polling the store).

Between commits the trainer may publish its served weights as `checkpoints/live.safetensors`
(+ `live.tokenizer.json`, and `live.json` naming its SHA-256): a live snapshot, never a resume
point, never in the store (agent/training/snapshot.py). Its file names are here, with the
rule that deletes it: `announce_checkpoint` removes it (the committed checkpoint is at least
as new), and so does start-up recovery.
"""
from __future__ import annotations

import errno
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from engine import Model, Optimizer, preset
from engine.atomic import atomic_write_bytes
from engine.ema import EMA, RunningMean
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.errors import CheckpointError, CllmError, ConfigError
from engine.tokenizer import Tokenizer
from store.checkpoints import list_checkpoints

log = logging.getLogger(__name__)
CKPT_RE = re.compile(r"^ckpt-(\d{6})\.safetensors$")
TOKENIZER_RE = re.compile(r"^ckpt-(\d{6})\.tokenizer\.json$")


@dataclass
class ModelState:
    """What a data directory's latest checkpoint holds, ready to train further."""
    model: Model
    tokenizer: Tokenizer
    optimizer: Optional[Optimizer]
    cycle: int
    step: int
    path: Optional[Path] = None
    ema: Optional[EMA] = None        # an EMA of the weights, what generation serves
    seed: int = 0                    # a new model's init seed (it is built again, at its
    #                                  learned vocabulary's size, before its first step)
    sweep: Optional[RunningMean] = None   # the mean of the weights over the consolidation
    #                                  sweep under way (agent/training/learn.py)

    def serving_model(self) -> Model:
        """The model generation and evaluation use: the EMA weights when there are any."""
        return self.ema.model(self.model.config) if self.ema is not None else self.model


def checkpoint_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "checkpoints"


def checkpoint_path(data_dir: Path, cycle: int) -> Path:
    return checkpoint_dir(data_dir) / f"ckpt-{cycle:06d}.safetensors"


def tokenizer_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name.replace(".safetensors", ".tokenizer.json"))


def remove_checkpoint_files(ckpt: Path) -> list[Path]:
    """Delete a checkpoint and the tokenizer file saved with it; returns those that existed."""
    gone = []
    for f in (Path(ckpt), tokenizer_path(Path(ckpt))):
        if f.exists():
            f.unlink()
            gone.append(f)
    return gone


def checkpoint_files(data_dir: Path) -> list[Path]:
    d = checkpoint_dir(data_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if CKPT_RE.match(p.name))


def load_model_state(ckpt: Path, expected_sha256: Optional[str] = None) -> ModelState:
    """Load a checkpoint and the tokenizer saved with it (hash-checked both ways)."""
    ck = load_checkpoint(ckpt, expected_sha256=expected_sha256)
    tpath = tokenizer_path(ckpt)
    if not tpath.exists():
        raise CheckpointError(f"tokenizer file {tpath} for checkpoint {ckpt} is missing",
                              "restore it or train from scratch")
    tok = Tokenizer.load(tpath, expected_sha256=ck.tokenizer_sha256)
    return ModelState(ck.model, tok, ck.optimizer, ck.cycle, ck.step, ckpt, ck.ema,
                      sweep=ck.sweep)


@dataclass(frozen=True)
class RecordedCheckpoint:
    """A checkpoint row of the store: where its file is and the SHA-256 it was committed with."""
    id: int
    path: Path
    sha256: str
    cycle_id: Optional[int]
    is_latest: bool


def recorded_checkpoints(store) -> list[RecordedCheckpoint]:
    """The store's checkpoints whose files retention kept: the latest first, then the
    others newest first (the order a reader falls back in)."""
    with store.session(read_only=True) as s:
        rows = [RecordedCheckpoint(c.id, Path(c.path), c.sha256, c.cycle_id, bool(c.is_latest))
                for c in list_checkpoints(s, newest_first=True, with_pruned=False)]
    return sorted(rows, key=lambda r: not r.is_latest)  # stable: newest first otherwise


def load_recorded_model_state(store, cycle: Optional[int] = None
                              ) -> tuple[Optional[ModelState], Optional[RecordedCheckpoint]]:
    """The latest recorded checkpoint whose file matches its row's SHA-256 (or the one of
    cycle `cycle`, a ConfigError naming the cycles that have one if it has none), with its
    row: `first_loadable` of the store's rows, as the agent resumes. (None, None) when
    nothing recorded loads."""
    rows = recorded_checkpoints(store)
    if cycle is not None:
        have = sorted({r.cycle_id for r in rows if r.cycle_id is not None})
        rows = [r for r in rows if r.cycle_id == cycle]
        if not rows:
            raise ConfigError(f"cycle {cycle} has no checkpoint",
                              "cycles with one: " + (", ".join(map(str, have)) or "none yet"))
    return first_loadable(rows)


def first_loadable(rows: Sequence[RecordedCheckpoint]
                   ) -> tuple[Optional[ModelState], Optional[RecordedCheckpoint]]:
    """The first of `rows` (recorded_checkpoints' order) whose file matches its row's
    SHA-256, with its row; a file that does not (edited in place, an older file copied over
    it, truncated, missing) is refused with a warning and the next one is tried. (None,
    None) when none loads. The one fallback rule of every reader, the trainer included."""
    for row in rows:
        try:
            return load_model_state(row.path, expected_sha256=row.sha256), row
        except CllmError as e:
            log.warning("refusing checkpoint %s: %s", row.path, e.one_line())
    return None, None


def new_model_state(preset_name: str, seed: int = 0, init: Optional[str] = None,
                    arch: Optional[dict] = None) -> ModelState:
    """A new model: the byte tokens, up to the preset's vocabulary size to learn, with the
    recipe's options `arch` (engine.config.parse_arch). Its first cycle learns the
    vocabulary and builds it again at that size (build_at_vocabulary)."""
    cfg = preset(preset_name)
    tok = Tokenizer(max_vocab=cfg.vocab_size)
    mcfg = cfg.replace(vocab_size=len(tok), **({"init": init} if init else {}), **(arch or {}))
    return ModelState(Model(mcfg, seed=seed), tok, None, 0, 0, seed=seed)


def is_untrained(state: ModelState) -> bool:
    """A new model: no checkpoint, no step taken, no token learned (only the byte tokens and
    the specials). Every checkpoint holds at least one step, so a model resumed from one is
    never untrained, whatever its vocabulary."""
    return state.path is None and state.step == 0 and not state.tokenizer.merges


def build_at_vocabulary(state: ModelState) -> None:
    """Build an untrained model again, from scratch, at its tokenizer's size: every row a
    fresh init with its seed, as if its preset had that vocabulary (not grown: no row is
    derived from another). Its optimizer and EMA, if any, go with the old model."""
    if state.step or state.path is not None:
        raise ValueError("only a model no step has trained is built again at its vocabulary's "
                         f"size (this one is at step {state.step}, from {state.path})")
    cfg = state.model.config.replace(vocab_size=len(state.tokenizer))
    state.model = Model(cfg, seed=state.seed)
    state.optimizer = state.ema = state.sweep = None


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (the disk is full, a quota is reached, an I/O
    error): nothing of it is left, nothing of its cycle counts, and the agent's trainer
    retries after a back-off (agent/training/loop.py's TrainerLoop)."""


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def save_model_state(state: ModelState, data_dir: Path, cycle: int,
                     extra: Optional[dict] = None) -> tuple[Path, str]:
    """Write tokenizer then checkpoint (both atomic); returns (path, file SHA-256). An
    OSError on the way (ENOSPC, EDQUOT, EIO, ...) removes what was written and raises
    CheckpointWriteError, whose hint names the folder."""
    path = checkpoint_path(Path(data_dir).resolve(), cycle)   # recorded as an absolute path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state.tokenizer.save(tokenizer_path(path))
        sha = save_checkpoint(path, state.model, state.optimizer,
                              state.optimizer.cfg if state.optimizer else None, step=state.step,
                              cycle=cycle, tokenizer_sha256=state.tokenizer.sha256, extra=extra,
                              ema=state.ema, sweep=state.sweep)
    except OSError as e:
        try:
            remove_checkpoint_files(path)   # the tokenizer file written before it, if any
        except OSError:
            pass                            # recovery removes it at the next start
        hint = (f"free disk space in {path.parent}" if e.errno in _NO_SPACE
                else f"check the disk holding {path.parent}")
        raise CheckpointWriteError(f"cannot write checkpoint {path.name}: {e.strerror or e}",
                                   hint) from e
    state.cycle, state.path = cycle, path
    return path, sha


COMMIT_MARKER = "committed.json"   # in the checkpoints folder: the last committed checkpoint
LIVE_CHECKPOINT = "live.safetensors"   # the running cycle's served weights (snapshot.py)
LIVE_SIDECAR = "live.json"       # written after it: its SHA-256, cycle, step and base


def live_path(data_dir: Path) -> Path:
    return checkpoint_dir(data_dir) / LIVE_CHECKPOINT


def live_sidecar_path(data_dir: Path) -> Path:
    return checkpoint_dir(data_dir) / LIVE_SIDECAR


def remove_live_snapshot(data_dir: Path) -> list[Path]:
    """Delete the live snapshot, its sidecar first (without it no reader takes the files);
    returns the files that existed."""
    gone = []
    live = live_path(data_dir)
    for f in (live_sidecar_path(data_dir), live, tokenizer_path(live)):
        try:
            f.unlink()
            gone.append(f)
        except FileNotFoundError:
            pass
    return gone


def announce_checkpoint(data_dir: Path, path: Path, sha256: str, cycle_id: Optional[int]) -> None:
    """Once a checkpoint's row is committed: delete the live snapshot of its cycle (the
    committed checkpoint is at least as new; readers already ignore the snapshot, its base
    being no longer the latest), then write checkpoints/committed.json (atomically), the file
    event a server beside the agent waits for (it reads the store, not this file)."""
    try:
        remove_live_snapshot(data_dir)
    except OSError as e:    # readers ignore a snapshot whose base is not the latest anyway
        log.warning("could not delete the live snapshot: %s", e)
    body = json.dumps({"path": str(path), "sha256": sha256, "cycle_id": cycle_id})
    try:
        atomic_write_bytes(checkpoint_dir(data_dir) / COMMIT_MARKER, body.encode())
    except OSError as e:    # a signal for servers only: never fail a committed cycle over it
        log.warning("could not write %s: %s", COMMIT_MARKER, e)
