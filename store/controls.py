"""Controls of a store's agents, set by users (the dashboard, the API, the CLI) and read by
the agent at its lease heartbeat or at once when the server runs inside it; and the one
thing the trainer reports back the same way: its phase (learning, consolidating, converged,
idle, paused) and why, for `cllm status`, the dashboard and /metrics. The pause users set is
one row for every agent of the store; a trainer's own pauses (on battery, under load:
agent/limits.py) are its machine's, so they live in its process and reach the store only as
its phase, with their reasons."""
from __future__ import annotations

from typing import Optional, Sequence

from sqlalchemy.orm import Session

from .models import Control, utcnow

PAUSED = "paused"
TRAINER_PHASE = "trainer_phase"


def set_paused(session: Session, paused: bool, by: Optional[str] = None) -> None:
    """Pause (or resume) training: the trainer ends its cycle at the next step boundary,
    committing what it trained, and starts none until resumed."""
    _put(session, PAUSED, {"paused": bool(paused), "by": by})


def paused(session: Session) -> bool:
    row = session.get(Control, PAUSED)
    return bool(row is not None and row.value.get("paused"))


def set_trainer_phase(session: Session, phase: str, reason: str,
                      paused_by: Sequence[str] = ()) -> None:
    """Record what the trainer is doing now and why (written when it changes); for the phase
    "paused", `paused_by` names the reasons ("user", "battery", "load")."""
    _put(session, TRAINER_PHASE, {"phase": phase, "reason": reason,
                                  "paused_by": list(paused_by)})


def trainer_phase(session: Session) -> Optional[dict]:
    """{"phase", "reason", "paused_by", "since"} as the trainer last recorded it, or None."""
    row = session.get(Control, TRAINER_PHASE)
    if row is None:
        return None
    return {"paused_by": [], **row.value, "since": row.updated}


def _put(session: Session, name: str, value: dict) -> None:
    """Write one control's value (a new row, or the row's value and time replaced)."""
    row = session.get(Control, name)
    if row is None:
        session.add(Control(name=name, value=value))
    else:
        row.value = value
        row.updated = utcnow()
    session.flush()
