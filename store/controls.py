"""Controls of a store's agents, set by users (the dashboard, the API, the CLI) and read by
the agent at its lease heartbeat or at once when the server runs inside it."""
from __future__ import annotations

from typing import Optional

from sqlalchemy.orm import Session

from .models import Control, utcnow

PAUSED = "paused"


def set_paused(session: Session, paused: bool, by: Optional[str] = None) -> None:
    """Pause (or resume) training: the trainer ends its cycle at the next step boundary,
    committing what it trained, and starts none until resumed."""
    row = session.get(Control, PAUSED)
    value = {"paused": bool(paused), "by": by}
    if row is None:
        session.add(Control(name=PAUSED, value=value))
    else:
        row.value = value
        row.updated = utcnow()
    session.flush()


def paused(session: Session) -> bool:
    row = session.get(Control, PAUSED)
    return bool(row is not None and row.value.get("paused"))
