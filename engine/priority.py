"""The scheduling priority of one thread: what a background agent's training threads run at.

PRIORITIES:
- "low" (the agent's default): the thread runs 10 nice steps below its process (nice 10 in a
  process at 0, at most 19) and its I/O in the best-effort class at the lowest level (7);
- "idle": nice 19 under SCHED_IDLE (the CPU only when nothing else wants it) and I/O in the
  idle class (the disk only when nobody else uses it);
- "normal": the thread is left as it is.
Scheduling only: what runs on the thread computes the same results at every priority.

Linux sets them per thread: setpriority(PRIO_PROCESS, tid) and sched_setscheduler(tid) act on
a thread id, and ioprio_set, a system call without a libc wrapper, is called through ctypes
(its number is known here for x86_64 and aarch64; on other architectures the I/O priority is
left alone, noted once at INFO). macOS has no per-thread nice and no ioprio: its equivalent is
the calling thread's background band (setpriority(PRIO_DARWIN_THREAD, 0, PRIO_DARWIN_BG):
lower CPU priority and throttled I/O), used for "low" and "idle" alike. Other systems: nothing.

`lower_this_thread` never raises over the system: what it could not do (a container may
refuse a call) is logged once per process and returned. Without privileges a thread can lower
its priority but never raise it back, so call it only on threads that train (the spheres, the
agent's trainer thread), never on one that serves; threads a lowered thread starts inherit
its priority. The process as a whole is never touched: the server and the file watcher stay
at the process's priority.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys
import threading
from typing import Optional

log = logging.getLogger(__name__)

PRIORITIES = ("low", "idle", "normal")
LOW_NICE_STEPS = 10          # "low": this many nice steps below the process
MAX_NICE = 19                # "idle", and the most "low" goes to

IOPRIO_CLASS_SHIFT = 13      # linux/ioprio.h: ioprio = class << 13 | level
IOPRIO_CLASS_NONE, IOPRIO_CLASS_RT, IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE = 0, 1, 2, 3
IOPRIO_LOWEST_BE = 7         # best-effort levels run 0 (first) to 7 (last)
IOPRIO_WHO_PROCESS = 1       # `who` is a thread id
IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31)}   # (ioprio_set, ioprio_get)

PRIO_DARWIN_THREAD, PRIO_DARWIN_BG = 3, 0x1000    # macOS <sys/resource.h>

_noted: set[str] = set()
_noted_lock = threading.Lock()


def lower_this_thread(priority: str) -> list[str]:
    """Run the calling thread at `priority` (PRIORITIES) from now on. Returns what could not be
    done, each logged once per process; [] when all of it was (or for "normal")."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    if priority == "normal":
        return []
    if sys.platform.startswith("linux"):
        problems = _lower_linux(priority, threading.get_native_id())
    elif sys.platform == "darwin":
        problems = []
        try:
            os.setpriority(PRIO_DARWIN_THREAD, 0, PRIO_DARWIN_BG)
        except OSError as e:
            problems.append(f"cannot put the training thread in the background band: "
                            f"{e.strerror}")
    else:
        problems = [f"thread priorities are not set on {sys.platform}: training runs at the "
                    "process's priority"]
    for p in problems:
        _note_once(p, logging.INFO if "not set on" in p or "no ioprio" in p else logging.WARNING)
    return problems


def _lower_linux(priority: str, tid: int) -> list[str]:
    problems = []
    try:
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())   # the main thread's nice
    except OSError:
        base = 0
    nice = MAX_NICE if priority == "idle" else min(MAX_NICE, base + LOW_NICE_STEPS)
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:       # never raise a lower one
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as e:
        problems.append(f"cannot set the training threads' nice to {nice}: {e.strerror}")
    if priority == "idle":
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except OSError as e:
            problems.append(f"cannot run the training threads under SCHED_IDLE: {e.strerror}")
    io = (IOPRIO_CLASS_IDLE, 0) if priority == "idle" else (IOPRIO_CLASS_BE, IOPRIO_LOWEST_BE)
    if priority == "low" and (io_priority(tid) or (None,))[0] == IOPRIO_CLASS_IDLE:
        return problems                                        # idle I/O already: lower
    problem = set_io_priority(tid, *io)
    if problem:
        problems.append(problem)
    return problems


@functools.lru_cache(maxsize=1)
def _syscall():
    """(libc's syscall function, (ioprio_set, ioprio_get) numbers) or None on an architecture
    whose numbers are not known here."""
    nums = IOPRIO_SYSCALLS.get(platform.machine())
    if nums is None:
        return None
    fn = ctypes.CDLL(None, use_errno=True).syscall
    fn.restype = ctypes.c_long
    return fn, nums


def set_io_priority(tid: int, io_class: int, level: int) -> Optional[str]:
    """ioprio_set of thread `tid` (Linux); None when done, else what stopped it."""
    sc = _syscall()
    if sc is None:
        return f"no ioprio system call known on {platform.machine()}: I/O priority not set"
    fn, (set_nr, _) = sc
    value = io_class << IOPRIO_CLASS_SHIFT | level
    if fn(ctypes.c_long(set_nr), ctypes.c_int(IOPRIO_WHO_PROCESS), ctypes.c_int(tid),
          ctypes.c_int(value)) != 0:
        err = ctypes.get_errno()
        return f"cannot set the training threads' I/O priority: {os.strerror(err)}"
    return None


def io_priority(tid: int) -> Optional[tuple[int, int]]:
    """(I/O class, level) of thread `tid` by ioprio_get (Linux), or None where unknown."""
    sc = _syscall()
    if sc is None:
        return None
    fn, (_, get_nr) = sc
    value = fn(ctypes.c_long(get_nr), ctypes.c_int(IOPRIO_WHO_PROCESS), ctypes.c_int(tid))
    if value < 0:
        return None
    return value >> IOPRIO_CLASS_SHIFT, value & ((1 << IOPRIO_CLASS_SHIFT) - 1)


def _note_once(message: str, level: int) -> None:
    with _noted_lock:
        if message in _noted:
            return
        _noted.add(message)
    log.log(level, "%s", message)
