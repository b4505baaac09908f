"""What CPU the engine runs on: its model name, the vector instruction sets that matter to
the kernels (numba compiles for the host's), and numba's target name. Benchmarks print it
next to every figure, since a kernel fast on AVX2 can be slow on AVX-512 and the reverse.

Read from /proc/cpuinfo (Linux) with platform fallbacks elsewhere; never raises.
"""
from __future__ import annotations

import dataclasses
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
