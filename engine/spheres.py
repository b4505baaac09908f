"""ThreadedTrainingSystem: Node Zero and the 12-fold worker spheres.

Node Zero (the caller's thread) never processes batches. Per `train_step` it cuts the global
batch into micro-batches, releases the workers (Point A), waits for their gradient rows
(Point B), lets each worker reduce one segment of the flat range across all rows in a fixed
order (Point C: Node Zero combines the per-segment norms and finite flags, then decides to
clip, apply or skip), and waits for the segment-wise optimizer update (Point E) and, for
Muon, for every worker's share of its matrix phase (Point F: Optimizer.block_shares).

- Thread-local contexts: each worker owns its activations (a model Workspace created in its
  thread) and its own gradient row `grads[w]`; nothing mutable is shared during
  forward/backward, so no lock is taken in the hot path.
- Determinism: rows are reduced in worker order; for a given worker count the results are
  bit-identical across runs, and they equal the single-worker result to float32 round-off
  (the loss is normalised by the global count of valid targets).
- Threads block on `threading.Barrier`s only: no sleep-polling, no busy-waiting. A worker
  exception aborts every barrier and is raised from `train_step` with the worker's
  traceback (the model is unchanged: updates happen only after Point C), and so is one in
  Node Zero's step decision, whichever thread ran it (recorded before the barrier breaks,
  so it is never mistaken for a timeout; the first failure of a step wins); a stuck worker trips
  the watchdog timeout; a non-finite loss or gradient skips the step (counted) without
  touching parameters or optimizer state. `close()` joins every thread it started.
- The hierarchy is real bookkeeping: worker i sits at symmetry position i mod 12, level 1
  holds the first 12 spheres (children of Node Zero), level 2 the next 144 (12 children per
  level-1 sphere), and so on; `topology()` reports it with per-sphere statistics.
- Across MPI ranks (`group`), worker w combines its segment with worker w of every other
  rank through engine.mpi's SegmentCombiner; which batches the ranks train, and when, is
  the cycle protocol of engine.distributed, above this module.
- `priority` (engine.priority: "low", "idle", "normal"): each worker lowers its own thread's
  CPU and I/O priority as it starts; the caller's thread and the process are left alone.
  Scheduling only: the results are the same at every priority.
"""
from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from threadpoolctl import threadpool_limits

from engine import kernels as K
from engine.config import TrainConfig
from engine.cpu import default_workers
from engine.errors import CllmError
from engine.mpi import RankGroup, SegmentCombiner
from engine.optim import Optimizer, clip_scale, lr_at
from engine.priority import PRIORITIES, lower_this_thread

SYMMETRY = 12


class WorkerError(CllmError):
    """A worker sphere raised; the message carries the worker's traceback."""


class WatchdogTimeout(CllmError):
    """A worker did not reach a barrier within the watchdog timeout."""


@dataclass
class StepResult:
    loss: float            # mean loss over the global batch's valid targets
    grad_norm: float       # global gradient norm before clipping (nan when non-finite)
    skipped: bool          # True when the update was not applied
    tokens: int            # valid targets in the global batch
    lr: float
    step: int              # schedule step this result belongs to
    reason: str = ""       # why a step was skipped


@dataclass
class SphereStats:
    batches: int = 0
    sequences: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0


@dataclass
class Sphere:
    """One worker's place in the 1 + 12 + 144 + ... hierarchy."""
    id: int
    level: int
    position: int              # symmetry position, id mod 12
    parent: Optional[int]      # parent sphere id; None means Node Zero
    children: list[int] = field(default_factory=list)
    stats: SphereStats = field(default_factory=SphereStats)


def build_hierarchy(n: int) -> list[Sphere]:
    """Spheres for n workers: level 1 = ids 0..11 under Node Zero; each deeper sphere k of
    level L (counting from the level's first id) is the child of sphere k // 12 of level L-1."""
    spheres: list[Sphere] = []
    level, start, size, prev_start = 1, 0, SYMMETRY, None
    while start < n:
        for i in range(start, min(n, start + size)):
            parent = None if prev_start is None else prev_start + (i - start) // SYMMETRY
            spheres.append(Sphere(i, level, i % SYMMETRY, parent))
            if parent is not None:
                spheres[parent].children.append(i)
        prev_start, start, size, level = start, start + size, size * SYMMETRY, level + 1
    return spheres


class ThreadedTrainingSystem:
    """Data-parallel training of `model` on worker threads; use as a context manager."""

    def __init__(self, model, train_config: TrainConfig, n_workers: Optional[int] = None,
                 optimizer: Optional[Optimizer] = None, watchdog_timeout: float = 300.0,
                 limit_blas_threads: bool = True, group: Optional[RankGroup] = None,
                 priority: str = "normal") -> None:
        """`group` (engine.mpi.RankGroup): train across MPI ranks; every rank calls
        train_step with the same global batch and trains its shard of rows. `priority`: what
        the worker threads run at (engine.priority; "normal" leaves them as started)."""
        self.model = model
        self.cfg = train_config
        self.n = int(n_workers) if n_workers is not None else default_workers()
        if self.n < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        self.priority = priority
        self.optimizer = optimizer or Optimizer(model.layout, train_config)
        if self.optimizer.layout.size != model.layout.size:
            raise ValueError("optimizer state does not match the model's layout (grow it first)")
        self.watchdog_timeout = float(watchdog_timeout)
        self.step = 0            # schedule step within this system's cycle
        self.skipped = 0         # steps skipped for non-finite values
        P = model.layout.size
        self.grads = np.zeros((self.n, P), np.float32)   # one row per worker sphere
        self.grad = np.zeros(P, np.float32)              # the reduced global gradient
        self.segments = model.layout.segments(self.n)
        self.spheres = build_hierarchy(self.n)
        self.node_zero = SphereStats()

        # per-step shared state: written by Node Zero before Point A, or by a worker into its
        # own slot only; read after the barrier that publishes it
        self._task: Optional[tuple] = None
        self._losses = np.zeros(self.n, np.float64)
        self._counts = np.zeros(self.n, np.int64)
        self._seg_sumsq = np.zeros(self.n, np.float64)
        self._active = np.zeros(0, np.int64)
        self._decision: tuple[bool, float, float, str] = (True, 1.0, math.nan, "")
        self._hyper: tuple = ()
        self._failure: Optional[tuple[str, BaseException, str]] = None  # (who, error, traceback)
        self._failure_lock = threading.Lock()   # the first failure wins (taken on failure only)
        self._phase = ["idle"] * self.n
        # undo log of the update phase: each worker saves its own segment of the parameters
        # and optimizer moments before updating it, so a failure after Point C can restore
        # the model (and optimizer) exactly as they were before the step
        self._undo = [np.empty(P, np.float32) for _ in self._undo_targets()]
        self._saved = np.zeros(self.n, np.bool_)

        parties = self.n + 1
        self._released = threading.Barrier(parties)
        self._grads_ready = threading.Barrier(parties)
        self._reduced = threading.Barrier(parties, action=self._decide_at_point_c)
        self._updated = threading.Barrier(parties)
        self._finished = threading.Barrier(parties)       # Muon's matrix phase done (Point F)
        self._barriers = (self._released, self._grads_ready, self._reduced, self._updated,
                          self._finished)
        # Muon's blocks, dealt once: worker w orthogonalises _shares[w] (the layout's hidden
        # matrices never change shape, vocabulary growth only adds embedding rows)
        self._shares = (self.optimizer.block_shares(self.n)
                        if self.optimizer.has_matrix_phase else [[] for _ in range(self.n)])
        self._closed = False
        self._broken = False
        # across ranks: one communicator per worker segment, and the step's global
        # [loss sum, valid targets] that worker 0 sums over the ranks
        self._group = group
        self._combiner = None
        if group is not None:   # Muon's matrix phase needs whole directions on every rank
            self._combiner = SegmentCombiner(group, self.segments,
                                             "allreduce" if self.optimizer.muon else None)
        self._update_range = list(self.segments)   # what each worker updates (its shard)
        self._global = np.zeros(2, np.float64)

        self._limiter = None
        if limit_blas_threads:
            self._limiter = threadpool_limits(limits=1)
        self._threads = [threading.Thread(target=self._worker, args=(w,),
                                          name=f"cllm-sphere-{w}", daemon=True)
                         for w in range(self.n)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ThreadedTrainingSystem":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop and join every worker thread."""
        if self._closed:
            return
        self._closed = True
        if not self._broken:
            self._task = None
            try:
                self._released.wait(timeout=timeout)
            except threading.BrokenBarrierError:
                pass
        for b in self._barriers:
            b.abort()
        for t in self._threads:
            t.join(timeout)
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise WatchdogTimeout(f"worker threads did not stop: {', '.join(alive)}",
                                  "a worker is stuck inside a kernel; the process must exit")

    def _undo_targets(self) -> list[np.ndarray]:
        """The flat arrays a step's update writes: parameters and optimizer moments."""
        opt = self.optimizer
        return [self.model.params, opt.m] + ([opt.v] if opt.v.size else [])

    def _save_segment(self, w: int, lo: int, hi: int) -> None:
        for src, dst in zip(self._undo_targets(), self._undo):
            dst[lo:hi] = src[lo:hi]
        self._saved[w] = True

    def _roll_back(self) -> bool:
        """After a failed step: join the workers (the aborted barriers release them), then
        restore every segment saved before its update. False if a worker is still running
        (stuck), in which case nothing can be restored safely."""
        for t in self._threads:
            t.join(self.watchdog_timeout)
        if any(t.is_alive() for t in self._threads):
            return False
        self._restore_saved()
        return True

    def _restore_saved(self) -> None:
        """Put back every segment a worker saved before updating it."""
        for w in np.flatnonzero(self._saved):
            lo, hi = self._update_range[w]      # the part it saved (its shard across ranks)
            for dst, src in zip(self._undo_targets(), self._undo):
                dst[lo:hi] = src[lo:hi]
        self._saved[:] = False

    def gather_state(self) -> None:
        """Across ranks with sharded combining, each rank's AdamW moments are current only
        in its shards during a cycle: make them whole on every rank (collective: every rank
        calls it, at the end of a cycle)."""
        if self._combiner is not None:
            self._combiner.gather_all(list(self.optimizer.state().values()))

    def threads_alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    # ------------------------------------------------------------------ Node Zero
    def split(self, B: int) -> list[tuple[int, int]]:
        """Micro-batch [start, stop) of the global batch for each worker (may be empty)."""
        return [(w * B // self.n, (w + 1) * B // self.n) for w in range(self.n)]

    def train_step(self, inputs, targets, lr: Optional[float] = None) -> StepResult:
        """One optimizer step on a global batch (B, T); returns its StepResult."""
        if self._closed or self._broken:
            raise WorkerError("the training system is closed or broken",
                              "create a new ThreadedTrainingSystem")
        inputs, targets = self.model._check_inputs(inputs, targets)
        n_valid = int((targets >= 0).sum())       # of the global batch: the loss's normaliser
        if self._group is not None:               # this rank's contiguous shard of rows
            a, b = self._group.shard(inputs.shape[0])
            inputs, targets = inputs[a:b], targets[a:b]
        B, T = inputs.shape
        lr = lr_at(self.step, self.cfg) if lr is None else float(lr)
        lam = float(self.cfg.crystalline_weight)
        self.model._neighbour_tables(lam)          # build shared read-only tables once, here
        parts = self.split(B)
        self._active = np.asarray([w for w, (a, b) in enumerate(parts) if b > a], np.int64)
        self._hyper = self.optimizer.hyper(lr)
        self._task = (inputs, targets, parts, 1.0 / max(n_valid, 1), lam)
        self._saved[:] = False
        t0 = time.perf_counter()
        try:
            self._wait(self._released)     # Point A: release the workers
            self._wait(self._grads_ready)  # Point B: every gradient row is ready
            self._wait(self._reduced)      # Point C: segments reduced; _node_zero_decide has run
            self._wait(self._updated)      # Point E: segments updated (or left alone)
            if self._decision[0] and self.optimizer.has_matrix_phase:
                self._wait(self._finished)  # Point F: Muon's blocks, each worker its share
        except BaseException:        # an interrupt between two waits, too: free the workers
            if not self._broken:
                self._break()
            raise
        self.node_zero.idle_s += time.perf_counter() - t0
        self.node_zero.batches += 1
        self.node_zero.tokens += n_valid
        apply, _, norm, reason = self._decision
        loss_sum = float(self._global[0] if self._group is not None else self._losses.sum())
        loss = loss_sum / n_valid if n_valid else 0.0
        result = StepResult(loss=loss, grad_norm=norm, skipped=not apply, tokens=n_valid,
                            lr=lr, step=self.step, reason=reason)
        if apply:
            self.optimizer.t += 1
        elif reason != "no valid targets":
            self.skipped += 1
        self.step += 1
        return result

    def _decide_at_point_c(self) -> None:
        """The Point C barrier action, on whichever thread arrives last. An error is recorded
        before it leaves: the Barrier breaks when its action raises, and every thread it
        wakes must find the error, not mistake the broken barrier for a watchdog timeout."""
        try:
            self._node_zero_decide()
        except BaseException as exc:
            self._record_failure("Node Zero's step decision (Point C)", exc)
            raise

    def _record_failure(self, who: str, exc: BaseException) -> None:
        """Keep the first failure of a step with its formatted traceback (call from the
        except block that caught it)."""
        with self._failure_lock:
            if self._failure is None:
                self._failure = (who, exc, traceback.format_exc())

    def _node_zero_decide(self) -> None:
        """Barrier action at Point C (runs once, before anyone passes): finite checks,
        global norm from the per-segment partial sums, clip factor, apply or skip."""
        active = self._active
        losses = self._losses[active]
        count = int(self._counts[active].sum())
        if self._group is not None:               # every rank decides on the global values
            losses, count = self._global[:1], int(self._global[1])
        sumsq = float(self._seg_sumsq.sum())
        norm = math.sqrt(sumsq) if math.isfinite(sumsq) else math.nan
        if self._task is not None and count == 0:
            self._decision = (False, 1.0, 0.0, "no valid targets")
        elif not np.isfinite(losses).all():
            self._decision = (False, 1.0, norm, "non-finite loss")
        elif not math.isfinite(norm):
            self._decision = (False, 1.0, norm, "non-finite gradient")
        else:
            self._decision = (True, clip_scale(norm, self.cfg.grad_clip), norm, "")

    def _wait(self, barrier: threading.Barrier) -> None:
        try:
            barrier.wait(timeout=self.watchdog_timeout)
        except threading.BrokenBarrierError:
            self._break()
            self._raise_failure()
            stuck = [f"{w} ({p})" for w, p in enumerate(self._phase) if p != "waiting"]
            if self._group is not None:   # a rank died or hangs: stop the whole job
                self._group.abort(f"rank {self._group.rank}: step {self.step} did not complete "
                                  f"within {self.watchdog_timeout:.0f} s (workers "
                                  f"{', '.join(stuck) or 'unknown'}): another rank died or "
                                  f"hangs; stopping every rank (hint: restart the job; it "
                                  f"resumes from the latest checkpoint)")
            raise WatchdogTimeout(
                f"workers did not reach the barrier within {self.watchdog_timeout:.1f}s: "
                f"{', '.join(stuck) or 'unknown'}",
                "raise watchdog_timeout for very large batches") from None
        except Exception:   # the Point C action raised on this thread (recorded); an
            self._break()       # interrupt propagates as itself (train_step frees the workers)
            self._raise_failure()
            raise

    def _raise_failure(self) -> None:
        """Raise the recorded failure as a WorkerError (after rolling the step back), if any."""
        if self._failure is None:
            return
        who, exc, tb = self._failure
        restored = self._roll_back()
        raise WorkerError(f"{who} failed: {exc!r}\n{tb}",
                          "see the traceback above" if restored else
                          "a worker is still running: reload the model from its last checkpoint"
                          ) from exc

    def _break(self) -> None:
        self._broken = True
        for b in self._barriers:
            b.abort()

    # ------------------------------------------------------------------ worker spheres
    def _worker(self, w: int) -> None:
        lower_this_thread(self.priority)      # its own thread only; never raises
        stats = self.spheres[w].stats
        lo, hi = self.segments[w]
        row = self.grads[w]
        try:
            while True:
                t_idle = time.perf_counter()
                self._phase[w] = "waiting"
                self._released.wait()
                if self._task is None:
                    return
                t_busy = time.perf_counter()
                stats.idle_s += t_busy - t_idle
                inputs, targets, parts, scale, lam = self._task
                a, b = parts[w]
                self._phase[w] = "forward/backward"
                if b > a:
                    x, y = inputs[a:b], targets[a:b]
                    ws = self.model.workspace(b - a, x.shape[1])
                    loss_sum, n = self.model.forward_backward(ws, x, y, row, scale, lam)
                    self._losses[w], self._counts[w] = loss_sum, n
                    stats.batches += 1
                    stats.sequences += b - a
                    stats.tokens += n
                else:
                    self._losses[w], self._counts[w] = 0.0, 0
                t_wait = time.perf_counter()
                stats.busy_s += t_wait - t_busy
                self._phase[w] = "waiting"
                self._grads_ready.wait()
                t_red = time.perf_counter()
                self._phase[w] = "reduce"
                active = self._active
                comb = self._combiner
                if comb is not None and w == 0:
                    self._global[0] = self._losses[active].sum()
                    self._global[1] = self._counts[active].sum()
                    comb.combine_stats(self._global)
                if hi > lo:
                    K.sum_rows_indexed(self.grad, self.grads, active, lo, hi)
                    if comb is not None:           # segment w of every rank combined
                        t_mpi = time.perf_counter()
                        ulo, uhi, self._seg_sumsq[w] = comb.reduce(w, self.grad, lo, hi)
                        self._update_range[w] = (ulo, uhi)
                        if w == 0:                 # worker 0's view of the collectives
                            self._group.collective_s += time.perf_counter() - t_mpi
                    else:
                        self._seg_sumsq[w] = K.sumsq(self.grad, lo, hi)
                else:
                    self._seg_sumsq[w] = 0.0
                t_c = time.perf_counter()
                self._phase[w] = "waiting"
                self._reduced.wait()
                t_upd = time.perf_counter()
                apply, gscale, _, _ = self._decision
                self._phase[w] = "update"
                ulo, uhi = self._update_range[w]
                if apply and uhi > ulo:
                    self._save_segment(w, ulo, uhi)
                    self.optimizer.update_segment(self.model.params, self.grad, ulo, uhi,
                                                  self._hyper, gscale)
                if apply and comb is not None and hi > lo:
                    comb.gather(w, self.model.params, lo, hi)   # every rank's shard of it
                t_e = time.perf_counter()
                self._phase[w] = "waiting"
                self._updated.wait()
                stats.busy_s += (t_c - t_red) + (t_e - t_upd)
                stats.idle_s += (t_red - t_wait) + (t_upd - t_c)
                if apply and self.optimizer.has_matrix_phase:
                    self._matrix_share(w, stats)
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:  # surfaces in train_step with this traceback
            self._record_failure(f"worker sphere {w}", exc)
            for bar in self._barriers:
                bar.abort()

    def _matrix_share(self, w: int, stats: SphereStats) -> None:
        """Muon's matrix phase (engine.optim.Optimizer.finish_step), worker w's share of the
        blocks, once every segment's direction is written (after Point E); then Point F. A
        failure is recorded as the matrix phase's, and train_step rolls the step back."""
        t = time.perf_counter()
        self._phase[w] = "matrix phase"
        try:
            self.optimizer.finish_step(self.model.params, self._hyper, self._shares[w])
        except BaseException as exc:
            self._record_failure(f"worker sphere {w}'s share of Muon's matrix phase", exc)
            raise
        t_f = time.perf_counter()
        self._phase[w] = "waiting"
        self._finished.wait()
        stats.busy_s += t_f - t
        stats.idle_s += time.perf_counter() - t_f

    # ------------------------------------------------------------------ reporting
    def topology(self) -> dict:
        """The sphere tree with per-sphere statistics (Node Zero at the root)."""
        def node(s: Sphere) -> dict:
            st = s.stats
            return {"id": s.id, "level": s.level, "position": s.position,
                    "segment": list(self.segments[s.id]), "batches": st.batches,
                    "sequences": st.sequences, "tokens": st.tokens,
                    "busy_s": round(st.busy_s, 6), "idle_s": round(st.idle_s, 6),
                    "children": [node(self.spheres[c]) for c in s.children]}
        return {"id": "node-zero", "level": 0, "workers": self.n,
                "steps": self.node_zero.batches, "tokens": self.node_zero.tokens,
                "skipped": self.skipped, "wait_s": round(self.node_zero.idle_s, 6),
                "children": [node(s) for s in self.spheres if s.parent is None]}
