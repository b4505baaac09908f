"""What a background agent may take of the machine, and when it pauses.

- `share_plan`: the workers and duty cycle of a cycle from the CPUs the process may use
  (engine/cpu.py: affinity and the cgroup's cpu.max, not os.cpu_count()) and --cpu-share.
- `power_source`: "battery", "mains" or None (no battery reported), from
  /sys/class/power_supply on Linux (`pmset -g batt` on macOS); `load_average`: the 1-minute
  load average from /proc/loadavg (os.getloadavg() elsewhere). Both read under a root
  folder, so tests point them at fixture files.
- `Pauses`: why training is paused, by reason: "user" (the store's control: the dashboard,
  POST /api/training), "battery" (--pause-on-battery), "load" (--pause-above-load). Its
  event is the trainer's `paused`: a set reason ends the running cycle at a step boundary,
  which commits what it trained, and starts none until every reason is gone.
- `LimitMonitor`: the thread ("agent-limits") that looks at the power supply and the load
  every `limits_interval` seconds (a wait on its stop event: a periodic check, which no
  other thread could signal) and sets or clears the battery and load reasons; joined on
  close.

The battery and load pauses belong to the machine the trainer runs on: they stay in its
process and reach the store as the trainer's phase ("paused", with the reasons), never as the
store's pause row, which another machine's agent would obey. This module starts nothing by
itself and never touches the store.
"""
from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from engine.cpu import default_workers, usable_cpus

log = logging.getLogger(__name__)

USER, BATTERY, LOAD = "user", "battery", "load"
REASONS = (USER, BATTERY, LOAD)        # the order they are shown in
LOAD_RESUME = 0.8       # a load pause ends below this fraction of --pause-above-load
LOAD_TIME_CONSTANT_S = 60.0   # the 1-minute load average's: the agent's own share decays alike
MAINS_TYPES = ("Mains", "USB", "USB_C", "USB_PD", "USB_PD_DRP", "USB_DCP", "USB_CDP", "USB_ACA",
               "Wireless")   # power_supply types that feed the machine


def share_plan(workers: Optional[int], cpu_share: Optional[float],
               cpus: Optional[float] = None) -> tuple[int, float]:
    """(worker spheres, duty cycle in (0, 1]) for a cycle. Without --cpu-share: `workers`, or
    the usable CPUs less one (engine/cpu.py), at a duty of 1. With it, training may use
    share x CPUs: the workers are that, rounded down, at least one (or `workers` when given),
    and the duty cycle is what keeps them within it (below 1 only when the share is less than
    the workers: under one CPU, or fewer CPUs than --workers asked for)."""
    if cpu_share is None:
        return (workers if workers is not None else default_workers()), 1.0
    allowed = cpu_share * (cpus if cpus is not None else usable_cpus())
    n = workers if workers is not None else max(1, math.floor(allowed + 1e-9))
    return n, min(1.0, allowed / n)


# ------------------------------------------------------------------------- the readers

def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def power_source(root: Path = Path("/")) -> Optional[str]:
    """"battery" while the machine runs on its battery, "mains" while it is plugged in, None
    where it reports no battery (a desktop, a server, a container without /sys)."""
    if sys.platform == "darwin" and root == Path("/"):
        return _pmset()
    try:
        supplies = sorted((root / "sys/class/power_supply").iterdir())
    except OSError:
        return None
    batteries, feeds = [], []
    for d in supplies:
        kind = _read(d / "type")
        if kind == "Battery" and _read(d / "scope") != "Device":   # not a mouse's battery
            batteries.append(_read(d / "status"))
        elif kind in MAINS_TYPES:
            feeds.append(_read(d / "online") == "1")
    if not batteries:
        return None
    if feeds:
        return "mains" if any(feeds) else "battery"
    return "battery" if "Discharging" in batteries else "mains"


def _pmset() -> Optional[str]:
    """macOS: `pmset -g batt` says "Now drawing from 'Battery Power'" (or 'AC Power'), and
    lists an InternalBattery where there is one."""
    try:
        out = subprocess.run(["pmset", "-g", "batt"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if "InternalBattery" not in out:
        return None
    return "battery" if "'Battery Power'" in out else "mains"


def load_average(root: Path = Path("/")) -> Optional[float]:
    """The 1-minute load average (ROOT/proc/loadavg; os.getloadavg() where there is none)."""
    try:
        return float((root / "proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if root != Path("/"):
        return None
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


class OwnLoad:
    """The agent's own share of the load average, estimated as the CPUs its threads used,
    averaged with the load average's own time constant (60 s), so the two decay alike."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.clock, self.cpu = clock, cpu
        self.t, self.c = clock(), cpu()
        self.value = 0.0

    def update(self) -> float:
        t, c = self.clock(), self.cpu()
        dt = t - self.t
        if dt > 0:
            k = math.exp(-dt / LOAD_TIME_CONSTANT_S)
            self.value = self.value * k + (c - self.c) / dt * (1.0 - k)
            self.t, self.c = t, c
        return self.value


# ------------------------------------------------------------------------- pauses

class Pauses:
    """Why training is paused: a sentence per reason (REASONS). `event` is set while any
    reason holds; each change calls the listeners (the agent wakes its trainer)."""

    def __init__(self, event: Optional[threading.Event] = None) -> None:
        self.event = event if event is not None else threading.Event()
        self.listeners: list[Callable[[], None]] = []
        self._why: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, reason: str, why: str) -> bool:
        """Pause for `reason` (its first sentence is kept while it holds). True if new."""
        with self._lock:
            if reason in self._why:
                return False
            self._why[reason] = why
            self.event.set()
        log.info("training paused: %s", why)
        self._changed()
        return True

    def clear(self, reason: str) -> bool:
        """`reason` no longer holds. True if it did."""
        with self._lock:
            why = self._why.pop(reason, None)
            if why is None:
                return False
            if not self._why:
                self.event.clear()
            left = list(self._why.values())
        log.info("training resumes from its pause (%s)%s", reason,
                 f"; still paused: {'; '.join(left)}" if left else "")
        self._changed()
        return True

    def reasons(self) -> dict[str, str]:
        """{reason: sentence} of the pauses that hold, in REASONS order."""
        with self._lock:
            return {r: self._why[r] for r in sorted(self._why, key=_order)}

    def _changed(self) -> None:
        for fn in self.listeners:
            fn()


def _order(reason: str) -> int:
    return REASONS.index(reason) if reason in REASONS else len(REASONS)


class LimitMonitor:
    """Every `interval` seconds (and once at start): on battery -> the "battery" pause (with
    `on_battery`), off it -> resumed; the load others put on the machine above `above_load`
    x the usable CPUs -> the "load" pause, below LOAD_RESUME of that -> resumed."""

    def __init__(self, pauses: Pauses, *, on_battery: bool, above_load: Optional[float],
                 interval: float, root: Path = Path("/"), cpus: Optional[float] = None) -> None:
        self.pauses = pauses
        self.on_battery, self.above_load = on_battery, above_load
        self.interval = interval
        self.root = Path(root)
        self.cpus = cpus if cpus is not None else usable_cpus(self.root)
        self.own = OwnLoad()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failed_once = False

    def start(self) -> "LimitMonitor":
        self._thread = threading.Thread(target=self._run, name="agent-limits")
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception as e:   # noqa: BLE001 - a reader never stops the agent
                if not self._failed_once:
                    log.warning("cannot read the power supply or the load: %r", e)
                    self._failed_once = True
            if self._stop.wait(self.interval):
                return

    def check(self) -> None:
        if self.on_battery:
            if power_source(self.root) == "battery":
                self.pauses.set(BATTERY, "the machine runs on battery (--pause-on-battery; "
                                "it resumes on mains power)")
            else:
                self.pauses.clear(BATTERY)
        if self.above_load is not None:
            load = load_average(self.root)
            own = self.own.update()
            if load is None:
                return
            other, limit = max(0.0, load - own), self.above_load * self.cpus
            if other > limit:
                self.pauses.set(LOAD, f"the machine's other load ({other:.1f}) is above "
                                f"{limit:.1f} (--pause-above-load {self.above_load:g} x "
                                f"{self.cpus:g} CPUs; it resumes below {LOAD_RESUME * limit:.1f})")
            elif other < LOAD_RESUME * limit:
                self.pauses.clear(LOAD)
