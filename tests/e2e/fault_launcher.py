"""`cllm` with a SIGKILL between a cycle's checkpoint and its commit, for the crash-window tests:

    python -m tests.e2e.fault_launcher agent --data-dir D ...

runs the CLI as `python -m agent` does, except that the trainer's checkpoint write is wrapped:
once the checkpoint file is in place the process kills itself (nothing is cleaned up, as with
`kill -9`), before the store's transaction records it. The product has no fault switch of
its own; benchmarks/fault_inject.py arms its moments the same way.
"""
from __future__ import annotations

import os
import signal
import sys

from agent import continuous_trainer
from agent.cli import main


def arm() -> None:
    """The next checkpoint the trainer writes is the process's last act."""
    save = continuous_trainer.save_model_state

    def save_then_die(*args, **kwargs):
        out = save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return out

    continuous_trainer.save_model_state = save_then_die


if __name__ == "__main__":
    arm()
    main(sys.argv[1:], prog_name="cllm")
