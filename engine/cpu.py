"""What CPU the engine runs on: its model name, the vector instruction sets that matter to
the kernels (numba compiles for the host's), and numba's target name. Benchmarks print it
next to every figure, since a kernel fast on AVX2 can be slow on AVX-512 and the reverse.

Read from /proc/cpuinfo (Linux) with platform fallbacks elsewhere; never raises.

`usable_cpus` is how many CPUs this process may use (what the default worker count comes
from): its affinity mask, capped by its cgroup v2 `cpu.max` quota (a container's or a
systemd unit's CPUQuota), never os.cpu_count(), which counts the machine's. Its readers take
a root folder, so tests point them at fixture files.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
from pathlib import Path
from typing import Optional

import llvmlite.binding as llvm

# flags of /proc/cpuinfo that decide which code paths are fast, in the order printed
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    flags: frozenset
    numba_target: str

    @property
    def vector_isa(self) -> list[str]:
        return [f for f in VECTOR_FLAGS if f in self.flags]

    @property
    def widest(self) -> str:
        """The widest float32 vector unit: "AVX-512", "AVX2", "AVX", "NEON" or "scalar"."""
        for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                           ("asimd", "NEON")):
            if flag in self.flags:
                return name
        return "scalar"

    @property
    def has_bf16(self) -> bool:
        """bfloat16 dot products in hardware (AVX512-BF16 or AMX-BF16)."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    def line(self) -> str:
        """One line for a benchmark's header."""
        return (f"CPU: {self.model}, {self.cores} cores, {self.widest} "
                f"({' '.join(self.vector_isa) or 'no vector flags read'}), "
                f"numba target {self.numba_target}")


def describe(cpuinfo: Optional[str] = None) -> CpuInfo:
    """This machine's CpuInfo (or the one a /proc/cpuinfo text describes)."""
    model, flags = "", frozenset()
    text = cpuinfo
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    for ln in text.splitlines():
        key, _, value = ln.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    try:
        target = llvm.get_host_cpu_name()
    except Exception:                          # noqa: BLE001 - informative only
        target = "unknown"
    model = model or platform.processor() or platform.machine() or "unknown"
    return CpuInfo(model, os.cpu_count() or 1, flags, target)


CGROUP_MOUNT = "sys/fs/cgroup"      # where cgroup v2 is mounted, under the root


def cgroup_cpu_limit(root: Path = Path("/")) -> Optional[float]:
    """The CPUs this process's cgroup v2 lets it use: quota / period of `cpu.max` ("max
    100000": no limit; "150000 100000": 1.5 CPUs), the smallest along its cgroup's path up to
    the mount, found from ROOT/proc/self/cgroup ("0::/user.slice/..."); None without a quota
    or without cgroup v2."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rel = next((ln.split(":", 2)[2] for ln in lines
                if ln.startswith("0::") and ln.count(":") >= 2), None)
    if rel is None:
        return None
    mount = root / CGROUP_MOUNT
    parts = [p for p in rel.split("/") if p]
    if ".." in parts:          # outside this namespace's view: only the mount's own file
        parts = []
    limits = [q for q in (_cpu_max(mount.joinpath(*parts[:i], "cpu.max"))
                          for i in range(len(parts), -1, -1)) if q is not None]
    return min(limits) if limits else None


def _cpu_max(path: Path) -> Optional[float]:
    try:
        quota, period = path.read_text().split()[:2]
        q, p = (None if quota == "max" else int(quota)), int(period)
    except (OSError, ValueError):
        return None
    return q / p if q is not None and q > 0 and p > 0 else None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (os.cpu_count() where there is none: macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(root: Path = Path("/")) -> float:
    """The CPUs this process may use: its affinity mask's count, capped by its cgroup's
    quota (which may be a fraction: 1.5)."""
    n = float(affinity_cpus())
    limit = cgroup_cpu_limit(root)
    return min(n, limit) if limit is not None else n


def default_workers(root: Path = Path("/")) -> int:
    """Worker spheres when none are asked for: the usable CPUs (rounded up) less one for
    Node Zero and the rest of the process, at least one."""
    return max(1, math.ceil(usable_cpus(root) - 1e-9) - 1)
