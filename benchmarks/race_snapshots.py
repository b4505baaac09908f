"""The clock and the weights of a learning race (benchmarks/bench_learn_tree.py): what each
peer's user could have loaded at each mark, kept so it can be scored after the race.

- `RaceClock`: wall seconds since a peer was launched (the launcher's time.time(), so a
  peer's clock includes its interpreter start and imports), its deadline and its marks.
- `CheckpointWatcher`: copies every new or changed weights file of the agent's
  checkpoints/ folder (`ckpt-*.safetensors` today; `live*` snapshots if the agent ever
  writes them) with the tokenizer saved beside it, stamped with the file's mtime in seconds
  since the agent's launch: when those weights existed, however late the copy ran.
- `Snapshot` and `weights_at`: the newest snapshot available at a mark.

Nothing here trains or scores; bench_learn_tree.py scores the copies once the race is over.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

WEIGHTS_PATTERNS = ("ckpt-*.safetensors", "live*.safetensors")   # in checkpoints/
TOKENIZER_SUFFIX = ".tokenizer.json"    # ckpt-NNNNNN.tokenizer.json beside each weights file


class RaceClock:
    """A peer's race clock: seconds since `t0` (time.time() when it was launched), the
    deadline `seconds`, and the marks (seconds) not yet passed."""

    def __init__(self, t0: float, seconds: float, marks: Sequence[float]) -> None:
        self.t0 = float(t0)
        self.seconds = float(seconds)
        self.marks = sorted(float(m) for m in marks if m <= seconds)

    def now(self) -> float:
        return time.time() - self.t0

    def over(self) -> bool:
        return self.now() >= self.seconds

    def passed(self) -> list[float]:
        """The marks passed since the last call (popped)."""
        now, out = self.now(), []
        while self.marks and self.marks[0] <= now:
            out.append(self.marks.pop(0))
        return out


@dataclass(frozen=True)
class Snapshot:
    """Weights a user could load from `at_s` (seconds after launch) on: a copy of a
    checkpoint file (with its tokenizer beside it, when there was one)."""
    path: str
    at_s: float
    source: str = ""          # the file it was copied from

    def asdict(self) -> dict:
        return asdict(self)


def weights_at(snapshots: Sequence[Snapshot], mark: float) -> Optional[Snapshot]:
    """The newest snapshot available at `mark` (None before the first)."""
    done = [s for s in snapshots if s.at_s <= mark]
    return max(done, key=lambda s: s.at_s) if done else None


def tokenizer_beside(weights: Path) -> Path:
    """The tokenizer file saved with a weights file (agent/training/model_state.py's rule)."""
    return weights.with_name(weights.name.replace(".safetensors", TOKENIZER_SUFFIX))


def _key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


class CheckpointWatcher:
    """Copies each new or changed weights file of `folder` (WEIGHTS_PATTERNS) and the
    tokenizer beside it into `dest/<stamp>/`, every `interval` seconds, on its own thread.

    Polls rather than waiting for file events: the folder only appears with the agent's first
    checkpoint, and the stamp is the file's mtime (written atomically: the moment its
    content was complete), so the interval delays the copy, never the stamp. A file replaced
    while it was being copied is copied again at the next scan."""

    def __init__(self, folder: Path, dest: Path, t0: float, interval: float = 0.5) -> None:
        self.folder, self.dest, self.t0, self.interval = Path(folder), Path(dest), t0, interval
        self.snapshots: list[Snapshot] = []
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-watcher",
                                        daemon=True)

    def __enter__(self) -> "CheckpointWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.scan()

    def scan(self) -> int:
        """Copy what changed since the last scan; returns how many weights files."""
        try:
            names = sorted(p.name for p in self.folder.iterdir())
        except FileNotFoundError:
            return 0
        copied = 0
        for name in names:
            if not any(fnmatch.fnmatch(name, pat) for pat in WEIGHTS_PATTERNS):
                continue
            src = self.folder / name
            try:
                key = _key(src.stat())
                if self._seen.get(name) == key:
                    continue
                snap = self._copy(src, key)
            except FileNotFoundError:        # pruned or replaced between listing and copy
                continue
            if snap is not None:
                self._seen[name] = key
                self.snapshots.append(snap)
                copied += 1
        return copied

    def _copy(self, src: Path, key: tuple[int, int, int]) -> Optional[Snapshot]:
        stamp = key[2] / 1e9 - self.t0
        out = self.dest / f"{stamp:010.3f}s"
        out.mkdir(parents=True, exist_ok=True)
        tok = tokenizer_beside(src)
        if tok.exists():
            shutil.copy2(tok, out / tok.name)
        shutil.copy2(src, out / src.name)
        if _key(src.stat()) != key:          # replaced meanwhile: take the new one next time
            shutil.rmtree(out, ignore_errors=True)
            return None
        log.info("copied %s (written at %.1f s)", src.name, stamp)
        return Snapshot(str(out / src.name), round(stamp, 3), str(src))
