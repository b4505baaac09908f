"""engine/cpu.py: the CPU line benchmarks print, from /proc/cpuinfo texts of three kinds; the
CPUs this process may use, under an affinity mask and under cgroup quota fixture files."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cpu import (affinity_cpus, cgroup_cpu_limit, default_workers, describe,
                        usable_cpus)

SAPPHIRE = """processor : 0
model name : Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags : fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile
processor : 1
model name : Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
"""
EPYC = "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n"


def test_the_widest_vector_unit_and_bf16_are_read_from_the_flags():
    intel = describe(SAPPHIRE)
    assert intel.model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert intel.widest == "AVX-512" and intel.has_bf16
    assert intel.vector_isa[-3:] == ["avx512_bf16", "amx_tile", "amx_bf16"]
    amd = describe(EPYC)
    assert amd.model == "AMD EPYC" and amd.widest == "AVX2" and not amd.has_bf16
    assert amd.line().startswith("CPU: AMD EPYC, ")
    assert "AVX2 (sse4_2 avx avx2 fma f16c)" in amd.line()
    arm = describe(GRAVITON)
    assert arm.widest == "NEON" and arm.model            # no model name line: a fallback
    assert describe("").widest == "scalar"
    here = describe()                                    # this machine: never raises
    assert here.cores >= 1 and here.line().startswith("CPU: ")


# --- the CPUs this process may use (issue 27): affinity and the cgroup v2 quota ----------

REPO = Path(__file__).resolve().parents[2]


def cgroup_root(tmp_path: Path, own: str, parents: dict[str, str] | None = None,
                cgroup_line: str = "0::/user.slice/user@1000.service/app.slice/cllm.service"
                ) -> Path:
    """A fixture root: proc/self/cgroup naming the process's cgroup, and cpu.max files: the
    process's own (`own`) and its ancestors' (`parents`: relative path -> content)."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup_line + "\n")
    rel = cgroup_line.split(":", 2)[2].strip("/")
    mine = tmp_path / "sys/fs/cgroup" / rel
    mine.mkdir(parents=True)
    (mine / "cpu.max").write_text(own + "\n")
    for path, text in (parents or {}).items():
        (tmp_path / "sys/fs/cgroup" / path / "cpu.max").write_text(text + "\n")
    return tmp_path


def test_a_cgroup_quota_caps_the_usable_cpus_and_the_default_workers(tmp_path):
    root = cgroup_root(tmp_path / "a", "150000 100000")      # 1.5 CPUs
    assert cgroup_cpu_limit(root) == 1.5
    assert usable_cpus(root) == min(1.5, affinity_cpus())
    assert default_workers(root) == 1
    root = cgroup_root(tmp_path / "b", "400000 100000")      # 4 CPUs: 3 workers + Node Zero
    assert usable_cpus(root) == min(4.0, affinity_cpus())
    assert default_workers(root) == max(1, min(4, affinity_cpus()) - 1)


def test_the_smallest_quota_on_the_cgroups_path_wins_and_max_is_no_limit(tmp_path):
    root = cgroup_root(tmp_path / "a", "max 100000",
                       {"user.slice": "50000 100000", "": "max 100000"})
    assert cgroup_cpu_limit(root) == 0.5 and usable_cpus(root) == 0.5
    assert default_workers(root) == 1
    root = cgroup_root(tmp_path / "b", "max 100000", {"user.slice": "max 100000"})
    assert cgroup_cpu_limit(root) is None and usable_cpus(root) == affinity_cpus()


@pytest.mark.parametrize("line", ["12:cpu,cpuacct:/docker/abc", ""])
def test_without_cgroup_v2_there_is_no_quota(tmp_path, line):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(line)
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "nothing-there") is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_an_affinity_mask_sets_the_usable_cpus_not_the_machines_count():
    """In a child process pinned to one CPU: one usable CPU, one worker (not cores - 1),
    and a --cpu-share of it is a duty cycle of one worker."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from engine.cpu import usable_cpus, default_workers; "
            "from agent.limits import share_plan; "
            "print(usable_cpus(), default_workers(), *share_plan(None, 0.25), "
            "*share_plan(None, None), os.cpu_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    usable, workers, share_n, share_duty, plain_n, plain_duty, cores = out.stdout.split()
    assert (float(usable), int(workers)) == (1.0, 1)
    assert (int(share_n), float(share_duty)) == (1, 0.25)
    assert (int(plain_n), float(plain_duty)) == (1, 1.0)
    if int(cores) > 2:                                    # where the machine's count differs
        assert int(workers) != max(1, int(cores) - 1)


def test_default_workers_rounds_a_fractional_quota_up_before_leaving_one_for_node_zero(
        tmp_path):
    for quota, cpus in (("250000 100000", 2.5), ("100000 100000", 1.0), ("30000 100000", 0.3)):
        root = cgroup_root(tmp_path / quota.split()[0], quota)
        usable = min(cpus, affinity_cpus())
        assert usable_cpus(root) == usable
        assert default_workers(root) == max(1, math.ceil(usable) - 1)
