"""Named leases of the store: the single-trainer rule (issue 14 item 5; the same mechanism
lets several ingest-only agents share one PostgreSQL store with one trainer).

A lease row names its holder (`host:pid:random`, one per run) and an expiry. Taking it is a
compare-and-swap on the row the caller read (an INSERT when there is none, an UPDATE
conditioned on the holder and renewal it saw), so two processes racing for it cannot both
win, on SQLite or PostgreSQL. A lease can be taken over when it expired (its holder stopped
renewing: killed, hung, cut off) or when its holder is a process of this host that no longer
exists (a SIGKILLed agent restarting does not wait out the expiry). The holder renews it by
heartbeats; `holds()` inside a transaction that commits work is the fence: a holder whose
lease was taken over cannot commit afterwards.

Times come from the database's clock (PostgreSQL's `now()`), so agents on several machines
agree whatever their own clocks; SQLite is one machine's file and uses its clock.
"""
from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import LeaseHeldError, LeaseLostError
from .models import Lease, utcnow

TRAINER = "trainer"


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a lease, for messages and `cllm status`."""
    name: str
    holder: str
    host: str
    pid: int
    data_dir: Optional[str]
    acquired_at: dt.datetime
    renewed_at: dt.datetime
    expires_at: dt.datetime
    expired: bool

    def describe(self) -> str:
        where = f" on {self.data_dir}" if self.data_dir else ""
        return f"pid {self.pid} on host {self.host}{where}"


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def db_now(session: Session) -> dt.datetime:
    """The database's clock (aware UTC) where it has one every client shares."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(select(func.now())).astimezone(dt.timezone.utc)
    return utcnow()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, owned by someone else
        return True
    return True


def _info(row: Lease, now: dt.datetime) -> LeaseInfo:
    return LeaseInfo(row.name, row.holder, row.host, row.pid, row.data_dir, row.acquired_at,
                     row.renewed_at, row.expires_at, row.expires_at <= now)


def current(session: Session, name: str = TRAINER) -> Optional[LeaseInfo]:
    """The lease's holder, or None when nobody ever held it or it was released."""
    row = session.get(Lease, name)
    return None if row is None else _info(row, db_now(session))


def acquire(session: Session, holder: str, ttl_s: float, *, name: str = TRAINER,
            data_dir: Optional[str] = None) -> LeaseInfo:
    """Take the lease for `holder` for `ttl_s` seconds, or raise LeaseHeldError naming the
    live holder. Commit the session to make it visible (the caller's transaction)."""
    now = db_now(session)
    host, pid = socket.gethostname(), os.getpid()
    expires = now + dt.timedelta(seconds=ttl_s)
    row = session.get(Lease, name, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(Lease(name=name, holder=holder, host=host, pid=pid,
                                  data_dir=data_dir, acquired_at=now, renewed_at=now,
                                  expires_at=expires))
        except IntegrityError:      # another process inserted it first: it holds it
            session.expire_all()
            row = session.get(Lease, name)
            raise LeaseHeldError(*_held_message(_info(row, now))) from None
        return _info(session.get(Lease, name), now)
    seen = _info(row, now)
    free = (seen.holder == holder or seen.expired
            or (seen.host == host and not _pid_alive(seen.pid)))
    if not free:
        raise LeaseHeldError(*_held_message(seen))
    # compare-and-swap on what we read: a concurrent taker changes holder or renewed_at
    won = session.execute(
        update(Lease).where(Lease.name == name, Lease.holder == seen.holder,
                            Lease.renewed_at == seen.renewed_at)
        .values(holder=holder, host=host, pid=pid, data_dir=data_dir, acquired_at=now,
                renewed_at=now, expires_at=expires)
        .execution_options(synchronize_session=False)).rowcount
    session.expire_all()
    if won != 1:
        raise LeaseHeldError(*_held_message(_info(session.get(Lease, name), now)))
    return _info(session.get(Lease, name), now)


def _held_message(info: LeaseInfo) -> tuple[str, str]:
    return (f"another agent is training this store: {info.describe()} "
            f"(lease renewed {info.renewed_at:%Y-%m-%d %H:%M:%S} UTC)",
            "stop it first; only one agent trains a store (a stopped agent's lease expires by "
            "itself)")


def renew(session: Session, holder: str, ttl_s: float, *, name: str = TRAINER) -> LeaseInfo:
    """Push the expiry forward; LeaseLostError if another holder took it over."""
    now = db_now(session)
    n = session.execute(
        update(Lease).where(Lease.name == name, Lease.holder == holder)
        .values(renewed_at=now, expires_at=now + dt.timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)).rowcount
    session.expire_all()
    if n != 1:
        raise _lost(session, name)
    return _info(session.get(Lease, name), now)


def holds(session: Session, holder: str, *, name: str = TRAINER) -> None:
    """The fence: raise LeaseLostError unless `holder` holds the lease now (call it in the
    transaction that commits the work the lease guards; on PostgreSQL the row is locked
    until that commit, so a takeover waits for it)."""
    row = session.get(Lease, name, with_for_update=True)
    if row is None or row.holder != holder:
        raise _lost(session, name)


def release(session: Session, holder: str, *, name: str = TRAINER) -> bool:
    """Give the lease up (a clean stop); False if it was not ours any more."""
    row = session.get(Lease, name)
    if row is None or row.holder != holder:
        return False
    session.delete(row)
    return True


def _lost(session: Session, name: str) -> LeaseLostError:
    row = session.get(Lease, name)
    by = f": {_info(row, db_now(session)).describe()} holds it now" if row is not None else ""
    return LeaseLostError(f"this agent's {name} lease was taken over{by}",
                          "it was not renewed in time (a hung or suspended process); restart "
                          "this agent after the other one stops")
