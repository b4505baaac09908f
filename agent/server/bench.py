"""The engine benchmark behind the dashboard's Benchmark tab (`POST /api/bench`), bounded
by the machine and run out of the server's process.

A run is `python -m agent bench --json ...` (agent/benchmark.scaling) in a child process
whose JSON is read back when it ends (the page shows the table at the end, there is no
progress to relay), so a run that exhausts memory or crashes ends the child, not the agent;
the child may use no more than the memory budget below (RLIMIT_DATA, where the kernel has
it) and is killed when the request is cancelled, the server stops or `bench_timeout` passes.

`BenchRunner.run` refuses, each with one line and a hint:
- a worker count above the CPUs this process may use (os.sched_getaffinity): 400;
- a run whose estimated memory (agent/benchmark.scaling_bytes: every count's gradient rows
  and activations, all held at once) is over `bench_memory_fraction` of MemAvailable: 400;
- a run while one runs: 409;
- a run sooner than `bench_interval` seconds after the last one ended: 429 with Retry-After.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import anyio

from agent.benchmark import bench_recipe, scaling_bytes
from agent.server.errors import ApiError
from engine.mpi import LAUNCHER_SIZE_VARS

log = logging.getLogger(__name__)

PRESETS = ("tiny", "small", "base")
BATCH = bench_recipe()[0]        # the global batch of every dashboard run (cllm bench's default)
# the child's own interpreter, JIT, thread stacks and BLAS buffers, on top of the run
HEADROOM, HEADROOM_PER_CPU = 1 << 30, 64 << 20


@dataclass
class BenchRequest:
    preset: str
    workers: list[int]
    rounds: int
    steps: int


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes; None where there is none to read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def parse_bench(body) -> BenchRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    preset = body.get("preset", "tiny")
    if preset not in PRESETS:
        raise ApiError(400, f"'preset' must be one of {', '.join(PRESETS)}")
    workers = body.get("workers", [1, 2])
    if (not isinstance(workers, list) or not workers or len(workers) > 8
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                       for w in workers)):
        raise ApiError(400, "'workers' must be a list of 1 to 8 counts, each at least 1")
    rounds, steps = body.get("rounds", 1), body.get("steps", 2)
    for k, v in (("rounds", rounds), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10:
            raise ApiError(400, f"'{k}' must be an integer within [1, 10]")
    return BenchRequest(preset, workers, rounds, steps)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


class BenchRunner:
    """One benchmark at a time for one server, within the machine's CPUs and memory, no
    sooner than `bench_interval` seconds after the last. Its state is only touched on the
    event loop (no await between a check and its update); kill() may run on any thread."""

    def __init__(self, limits) -> None:
        self.limits = limits
        self.running = False
        self._ended = -math.inf            # time.monotonic() when the last run ended
        self._pid: Optional[int] = None    # the child's, while it runs

    def check_machine(self, req: BenchRequest) -> int:
        """The child's memory limit in bytes, or an ApiError saying why this machine cannot
        take the run."""
        cpus = usable_cpus()
        if max(req.workers) > cpus:
            raise ApiError(400, f"{max(req.workers)} workers is more than the {cpus} CPUs "
                           f"this server may use; ask for at most {cpus} per count")
        need = scaling_bytes(req.preset, BATCH, req.workers)
        avail = available_memory()
        budget = int(self.limits.bench_memory_fraction * avail) if avail is not None else None
        if budget is not None and need > budget:
            raise ApiError(400, f"the {req.preset} benchmark of workers "
                           f"{','.join(map(str, req.workers))} needs about {_mib(need)}, over "
                           f"{self.limits.bench_memory_fraction:.0%} of the {_mib(avail)} "
                           "available; ask for fewer or smaller worker counts, or a smaller "
                           "preset")
        return max(budget or 0, need) + HEADROOM + HEADROOM_PER_CPU * cpus

    async def run(self, req: BenchRequest) -> dict:
        """The benchmark's result (agent/benchmark.scaling's dict, topology left out)."""
        memory_limit = self.check_machine(req)
        if self.running:
            raise ApiError(409, "a benchmark is already running; wait for its result",
                           "conflict_error")
        wait = self._ended + self.limits.bench_interval - time.monotonic()
        if wait > 0:
            raise ApiError(429, f"a benchmark ended {self.limits.bench_interval - wait:.0f} s "
                           f"ago; the next may start {math.ceil(wait)} s from now",
                           "rate_limit_error", {"Retry-After": str(math.ceil(wait))})
        self.running = True
        try:
            return await self._child(req, memory_limit)
        finally:
            self.running = False
            self._ended = time.monotonic()

    async def _child(self, req: BenchRequest, memory_limit: int) -> dict:
        cmd = [sys.executable, "-m", "agent", "bench", "--json", "--no-torch",
               "--preset", req.preset, "--batch-size", str(BATCH),
               "--workers", ",".join(map(str, req.workers)),
               "--rounds", str(req.rounds), "--steps", str(req.steps)]
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_SIZE_VARS}
        proc = await anyio.open_process(cmd, stdin=subprocess.DEVNULL, env=env)
        self._pid = proc.pid
        out, err = bytearray(), bytearray()
        try:
            _limit_memory(proc.pid, memory_limit)

            async def read(stream, buf: bytearray, cap: int) -> None:
                async for chunk in stream:
                    buf += chunk[:max(0, cap - len(buf))]
            with anyio.move_on_after(self.limits.bench_timeout) as late:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read, proc.stdout, out, 1 << 20)
                    tg.start_soon(read, proc.stderr, err, 1 << 16)
                await proc.wait()
        finally:
            self._pid = None
            if proc.returncode is None:
                proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.aclose()
        if late.cancelled_caught:
            raise ApiError(504, f"the benchmark ran over {self.limits.bench_timeout:g} s and "
                           "was stopped; ask for fewer rounds or steps", "server_error")
        if proc.returncode != 0:
            lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
            why = (f"was killed by signal {-proc.returncode} (out of memory?)"
                   if proc.returncode < 0 else f"failed (exit {proc.returncode})")
            log.warning("the benchmark %s: %s", why, " | ".join(lines[-5:]))
            raise ApiError(500, f"the benchmark {why}: "
                           f"{lines[-1] if lines else 'no message'}", "server_error")
        try:
            res = json.loads(out)
        except ValueError:
            raise ApiError(500, "the benchmark printed no result", "server_error") from None
        res.pop("topology", None)
        return res

    def kill(self) -> None:
        """End a run under way (the server stops)."""
        pid = self._pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _limit_memory(pid: int, limit: int) -> None:
    """Cap the child's data segment (heap and private mappings) where the kernel can: an
    estimate that was wrong then ends the child with a MemoryError, not the machine."""
    try:
        import resource
        resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))
    except (ImportError, AttributeError, OSError, ValueError) as e:
        log.debug("cannot limit the benchmark's memory: %s", e)
