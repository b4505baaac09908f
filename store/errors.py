"""The store's named exceptions: each says which database and what to do about it.

Only the CLI turns them into one-line messages; library code raises them and never exits.
"""
from __future__ import annotations

from engine.errors import CllmError


class StoreError(CllmError):
    """The database cannot be opened or used as a cllm store."""


class NotADatabaseError(StoreError):
    """The database file exists but is not an SQLite database (or is corrupted)."""


class ReadOnlyDatabaseError(StoreError):
    """The database file, or the directory holding it, cannot be written."""


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer cllm than this one."""


class DatabaseUnavailableError(StoreError):
    """The database server cannot be reached or refused the connection."""
