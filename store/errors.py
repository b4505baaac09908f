"""The store's named exceptions: each says which database and what to do about it.

The store imports nothing from the agent or the engine, so StoreError has its own small base
(a message and a `hint`, `one_line()`), shaped like engine.errors.CllmError; the CLI turns
both into one-line messages. Library code raises them and never exits.
"""
from __future__ import annotations

from typing import Optional


class StoreError(Exception):
    """The database cannot be opened or used as a cllm store. `hint` says what to do."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        msg = str(self).replace("\n", " ")
        return f"{msg} (hint: {self.hint})" if self.hint else msg


class NotADatabaseError(StoreError):
    """The database file exists but is not an SQLite database (or is corrupted)."""


class ReadOnlyDatabaseError(StoreError):
    """The database file, or the directory holding it, cannot be written."""


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer cllm than this one."""


class DatabaseUnavailableError(StoreError):
    """The database server cannot be reached or refused the connection."""


class LeaseHeldError(StoreError):
    """A lease of the store (e.g. "trainer": the one agent that trains) is held by another
    live process."""


class LeaseLostError(StoreError):
    """This process held a lease and another one took it over (ours expired unrenewed)."""
