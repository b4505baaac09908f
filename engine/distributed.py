"""The cycle protocol of data-parallel training across MPI ranks: rank 0 leads, the others
follow (the sphere hierarchy beyond one process).

Rank 0 runs the command (the store, the tokenizer, the checkpoints) and wraps its training
loop in a Leader; every other rank spends its life in `follow`, training with a
ThreadedTrainingSystem whatever rank 0 announces. Both sides train through the same
ThreadedTrainingSystem with a rank group, which combines the gradients.

Does not hold the MPI transport (the rank group, combining gradient segments, the launcher's
environment and the settings): engine/mpi.py, below engine/spheres.py.
"""
from __future__ import annotations

import signal
from typing import Optional

import numpy as np

from engine.config import ModelConfig, TrainConfig
from engine.model import Model
from engine.mpi import RankGroup, rank_timeout_s
from engine.optim import Optimizer
from engine.spheres import ThreadedTrainingSystem

# ---------------------------------------------------------------------------- the plan
#
# Rank 0 alone reads the store, learns the tokenizer and writes checkpoints. Per cycle it
# broadcasts ("cycle", model config, train config, workers), then its parameters and
# optimizer state; per step ("step", lr, shape) and the global batch's token windows (the
# followers need neither documents nor tokenizer); at the end ("end",) and every rank checks
# that its parameters agree with rank 0's. ("exit",) ends the followers.

class Leader:
    """Rank 0's side of a cycle: wraps the training loop of agent/training/learn.py."""

    def __init__(self, group: RankGroup, model, tcfg, optimizer, workers: int) -> None:
        self.group, self.model, self.optimizer = group, model, optimizer
        group.bcast(("cycle", model.config.to_json(), tcfg.to_json(), workers))
        _share_state(group, model, optimizer)

    def step(self, inputs: np.ndarray, targets: np.ndarray, lr: float) -> None:
        """Send one step's batch; then call the system's train_step as usual."""
        inputs = np.ascontiguousarray(inputs, np.int64)
        targets = np.ascontiguousarray(targets, np.int64)
        self.group.bcast(("step", float(lr), inputs.shape))
        self.group.bcast_array_(inputs)
        self.group.bcast_array_(targets)

    def end(self, system) -> str:
        """The cycle's end: the followers are told, the optimizer state is made whole on
        every rank, and every rank's parameters and moments must agree with rank 0's."""
        self.group.bcast(("end",))
        system.gather_state()
        return self.group.check_agreement(self.model.params, *self.optimizer.state().values())


def _share_state(group: RankGroup, model, optimizer) -> None:
    group.bcast_array_(model.params)
    for arr in optimizer.state().values():
        if arr.size:
            group.bcast_array_(arr)
    optimizer.t = group.bcast(optimizer.t if group.is_root else None)


def shutdown(group: Optional[RankGroup]) -> None:
    """Rank 0 at exit: release the followers."""
    if group is not None and group.is_root:
        group.bcast(("exit",))


def follow(group: RankGroup) -> int:
    """A follower rank's whole life: train every cycle rank 0 announces; return at "exit"."""
    # rank 0 handles Ctrl-C / SIGTERM (mpiexec forwards them to every rank) and ends the
    # cycle at a step boundary; a follower that died of it would abort the whole job
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    model = optimizer = None
    while True:
        msg = group.bcast()
        if msg[0] == "exit":
            return 0
        _, cfg_json, tcfg_json, workers = msg
        cfg, tcfg = ModelConfig.from_json(cfg_json), TrainConfig.from_json(tcfg_json)
        if model is None or model.config != cfg:
            model = Model(cfg, seed=0)           # its values come from rank 0 next
        if optimizer is None or optimizer.cfg != tcfg or optimizer.layout.size != model.layout.size:
            optimizer = Optimizer(model.layout, tcfg)
        _share_state(group, model, optimizer)
        with ThreadedTrainingSystem(model, tcfg, n_workers=workers, optimizer=optimizer,
                                    group=group, watchdog_timeout=rank_timeout_s()) as system:
            while True:
                ctl = group.bcast()
                if ctl[0] == "end":
                    system.gather_state()
                    break
                _, lr, shape = ctl
                inputs = np.empty(shape, np.int64)
                targets = np.empty(shape, np.int64)
                group.bcast_array_(inputs)
                group.bcast_array_(targets)
                system.train_step(inputs, targets, lr=lr)
        group.check_agreement(model.params, *optimizer.state().values())
