"""Live snapshots: the running cycle's served weights, published between commits so that
`cllm generate`, `cllm chat` and `cllm serve` are never far behind the training.

In the checkpoints folder (names: model_state.py), each file written atomically, in order:
- `live.tokenizer.json`: the tokenizer the cycle trains with (once per cycle);
- `live.safetensors`: the served model (the EMA weights when there are any; no optimizer
  moments, no EMA tensor), an engine checkpoint whose `cycle` is the running cycle, `step`
  the model's global step, and whose `extra["live"]` holds the step in the cycle and the
  base: the committed checkpoint the cycle started from (row id, SHA-256, cycle);
- `live.json`, the sidecar, last: the same fields and the SHA-256 of live.safetensors.

A snapshot is never the trainer's resume point, never in the store, never in the ledger:
the trainer resumes from committed checkpoints only, a commit deletes the snapshot
(model_state.announce_checkpoint), start-up recovery deletes a leftover one (recovery.py),
retention never sees it. A reader (`load_live_snapshot`) takes it only while it belongs to
the cycle after the store's latest checkpoint: its base is that checkpoint, its cycle is
still running, and its file matches the sidecar's SHA-256; otherwise it is ignored with a
warning and the reader loads the committed checkpoint, as without snapshots.

`SnapshotPublisher` writes them on the trainer's thread between two steps (called from
CycleProgress.step), at most every `--snapshot-seconds` of training, and sooner while the
model is young (every YOUNG_SHARE of its training so far, at least MIN_EVERY_S apart), when
a few seconds of training change it most. Not here: when cycles
commit (agent/continuous_trainer.py), what readers do with a snapshot (agent/generation/).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from agent.training.model_state import (ModelState, RecordedCheckpoint, live_path,
                                        live_sidecar_path, load_model_state,
                                        remove_live_snapshot, tokenizer_path)
from engine.atomic import atomic_write_bytes
from engine.checkpoint import save_checkpoint
from engine.errors import CllmError
from store.checkpoints import latest_checkpoint
from store.cycles import get_cycle
from store.models import CycleStatus

log = logging.getLogger(__name__)
FORMAT = "cllm-live-1"
READ_TRIES = 3      # a reader that lost a race with the next snapshot's write tries again
# A young model changes fastest: in the stdlib race (docs/benchmarks.md), the live snapshots
# 15 s apart at 51 and 66 s scored 1.743 and 1.676 held-out bits per byte (3.9%), at 106 and
# 121 s 1.539 and 1.491 (3.1%). Until --snapshot-seconds is the smaller, a snapshot is
# published every 5% of the model's training time so far (3 s at one minute, 6 s at two), at
# least 2 s apart: a `small` snapshot takes about 20 ms to write, at most 1% of the training.
YOUNG_SHARE = 0.05
MIN_EVERY_S = 2.0


@dataclass(frozen=True)
class LiveSnapshot:
    """What a live snapshot's sidecar says (its file's metadata repeats all but `sha256`)."""
    path: Path             # checkpoints/live.safetensors
    sha256: str            # of that file's bytes
    cycle_id: int          # the running cycle it belongs to
    step: int              # the model's global step
    cycle_step: int        # steps into its cycle
    base_id: int           # the committed checkpoint row the cycle started from
    base_sha256: str
    base_cycle: Optional[int]

    def meta(self) -> dict:
        """The fields the file's metadata holds (extra["live"])."""
        return {k: v for k, v in asdict(self).items() if k not in ("path", "sha256")}

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "file": self.path.name, "sha256": self.sha256,
                           **self.meta()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, folder: Path) -> "LiveSnapshot":
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, not {FORMAT}")
        return cls(folder / str(d["file"]), str(d["sha256"]), int(d["cycle_id"]),
                   int(d["step"]), int(d["cycle_step"]), int(d["base_id"]),
                   str(d["base_sha256"]),
                   None if d["base_cycle"] is None else int(d["base_cycle"]))


# ---------------------------------------------------------------------------- the writer

class SnapshotPublisher:
    """Publishes one cycle's live snapshots, at most every `every_s` seconds of its training
    (counted from its first step, and from the end of the last write). A write that fails is
    a warning, removes the snapshot and ends this cycle's snapshots: never the cycle.

    Cost, on the trainer's thread between two steps (a copy of the EMA weights, serialising,
    two SHA-256 passes, fsync; measured once, a new model's byte vocabulary, 2-core AMD EPYC,
    ext4): `small` 1.8 MB in 0.03 s, `base` 13 MB in 0.16 s. It grows with the file (`base`
    at its full vocabulary: 23 MB of weights), so a write every 15 s costs ~1-2% of training."""

    def __init__(self, data_dir: Path, state: ModelState, cycle_id: int,
                 base: RecordedCheckpoint, every_s: float,
                 listeners: Sequence[Callable[[], None]] = ()) -> None:
        self.data_dir, self.state, self.cycle_id = Path(data_dir), state, cycle_id
        self.base, self.every_s, self.listeners = base, every_s, listeners
        self.published = 0
        self._last: Optional[float] = None    # when the last write ended (or step 1 came)
        self._start: Optional[float] = None   # when step 1 came: the cycle's step rate
        self._tokenizer: Optional[str] = None  # SHA-256 of the tokenizer file written

    def step(self, i: int, now: float) -> None:
        """Called after step `i` of the cycle (CycleProgress.step): publish if it is time."""
        if self._last is None:
            self._last = self._start = now     # the cycle's training starts here
        elif now - self._last >= self.interval(i, now):
            t0 = time.perf_counter()
            self.publish(i)                    # counted from its end: a slow write never
            self._last = now + time.perf_counter() - t0    # runs back to back

    def interval(self, i: int, now: float) -> float:
        """Seconds between snapshots after step `i` of the cycle: `every_s`, or while the
        model is young YOUNG_SHARE of its training time so far (its global step at this
        cycle's step rate), at least MIN_EVERY_S; never again after a failed write."""
        if not math.isfinite(self.every_s) or self._start is None:
            return self.every_s
        age_s = (self.state.step + i) * (now - self._start) / max(i - 1, 1)
        return min(self.every_s, max(MIN_EVERY_S, YOUNG_SHARE * age_s))

    def publish(self, i: int) -> Optional[LiveSnapshot]:
        """Write the served weights after step `i` of the cycle: tokenizer (if new), model,
        then the sidecar naming its SHA-256; then tell the listeners."""
        state, path = self.state, live_path(self.data_dir)
        try:
            tok_sha = state.tokenizer.sha256
            if tok_sha != self._tokenizer:     # the same all cycle (learned before step 1)
                state.tokenizer.save(tokenizer_path(path))
                self._tokenizer = tok_sha
            snap = LiveSnapshot(path, "", self.cycle_id, state.step + i, i, self.base.id,
                                self.base.sha256, self.base.cycle_id)
            sha = save_checkpoint(path, state.serving_model(), step=snap.step,
                                  cycle=self.cycle_id, tokenizer_sha256=tok_sha,
                                  extra={"live": snap.meta()})
            snap = replace(snap, sha256=sha)
            atomic_write_bytes(live_sidecar_path(self.data_dir), snap.to_json().encode())
        except (CllmError, OSError) as e:      # a snapshot is for readers: never fail a cycle
            msg = e.one_line() if isinstance(e, CllmError) else str(e)
            log.warning("cycle %s: no more live snapshots this cycle: %s", self.cycle_id, msg)
            self.every_s = math.inf
            try:
                remove_live_snapshot(self.data_dir)
            except OSError:
                pass
            return None
        self.published += 1
        log.debug("cycle %s: live snapshot at step %s (%s)", self.cycle_id, snap.step, path)
        for fn in self.listeners:
            try:
                fn()
            except Exception:
                log.exception("live snapshot listener failed")
        return snap


def snapshot_publisher(store, data_dir: Path, state: ModelState, cycle_id: int,
                       every_s: float, listeners: Sequence[Callable[[], None]] = ()
                       ) -> Optional[SnapshotPublisher]:
    """The publisher of cycle `cycle_id`, which starts from `state`; None when snapshots are
    off (`every_s` 0) or `state` is not the store's latest committed checkpoint (a new model:
    a snapshot needs a committed base, which readers check it against)."""
    if not every_s or state.path is None:
        return None
    try:
        with store.session(read_only=True) as s:
            c = latest_checkpoint(s)
            base = None if c is None else RecordedCheckpoint(c.id, Path(c.path), c.sha256,
                                                             c.cycle_id, True)
    except Exception as e:   # snapshots are for readers: never fail a cycle over them
        log.warning("cycle %s: no live snapshots: %s", cycle_id, e)
        return None
    if base is None or base.path.resolve() != Path(state.path).resolve():
        return None
    return SnapshotPublisher(data_dir, state, cycle_id, base, every_s, listeners)


# ---------------------------------------------------------------------------- the readers

def read_sidecar(data_dir: Path) -> Optional[LiveSnapshot]:
    """The live snapshot the sidecar names; None if there is none (or it is unreadable:
    a warning)."""
    path = live_sidecar_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("ignoring the live snapshot: cannot read %s: %s", path, e)
        return None
    try:
        return LiveSnapshot.from_json(text, path.parent)
    except (ValueError, KeyError, TypeError) as e:      # JSONDecodeError is a ValueError
        log.warning("ignoring the live snapshot: %s is unreadable (%s)", path, e)
        return None


def stale_reason(session, snap: LiveSnapshot
                 ) -> tuple[Optional[str], Optional[RecordedCheckpoint]]:
    """(why `snap` is not the cycle after the store's latest checkpoint, or None if it is;
    that checkpoint's row)."""
    c = latest_checkpoint(session)
    cycle = get_cycle(session, snap.cycle_id)
    status = None if cycle is None else cycle.status
    latest = None if c is None else RecordedCheckpoint(c.id, Path(c.path), c.sha256,
                                                       c.cycle_id, True)
    if latest is None or (latest.id, latest.sha256) != (snap.base_id, snap.base_sha256):
        now = "none" if latest is None else f"cycle {latest.cycle_id}'s"
        return (f"its base, cycle {snap.base_cycle}'s checkpoint, is no longer the latest "
                f"({now} is)"), latest
    if status != CycleStatus.RUNNING:
        return f"cycle {snap.cycle_id} is not running ({status or 'no such cycle'})", latest
    return None, latest


def current_snapshot(session, data_dir: Path) -> Optional[LiveSnapshot]:
    """The live snapshot a reader would take now, its file unchecked (None if none): for
    `cllm status` and a server's reload check, without reading the weights."""
    snap = read_sidecar(data_dir)
    return None if snap is None or stale_reason(session, snap)[0] else snap


def live_sha256(store, data_dir: Path) -> Optional[str]:
    """The SHA-256 of `current_snapshot`, what a server compares with the one it holds."""
    with store.session(read_only=True) as s:
        snap = current_snapshot(s, data_dir)
    return None if snap is None else snap.sha256


def load_live_snapshot(store, data_dir: Path
                       ) -> Optional[tuple[ModelState, LiveSnapshot, RecordedCheckpoint]]:
    """(state, snapshot, its base's row) of the live snapshot of the cycle after the store's
    latest checkpoint, its file checked against the sidecar's SHA-256 (and its tokenizer
    against the file's); None when there is none, or it is stale or fails a check (a
    warning)."""
    for _ in range(READ_TRIES):
        snap = read_sidecar(data_dir)
        if snap is None:
            return None
        with store.session(read_only=True) as s:
            why, base = stale_reason(s, snap)
        if why is not None:
            log.warning("ignoring the live snapshot of cycle %s: %s", snap.cycle_id, why)
            return None
        try:
            return load_model_state(snap.path, expected_sha256=snap.sha256), snap, base
        except CllmError as e:
            if read_sidecar(data_dir) != snap:
                continue                      # the next snapshot was published meanwhile
            log.warning("ignoring the live snapshot of cycle %s: %s", snap.cycle_id,
                        e.one_line())
            return None
    return None
