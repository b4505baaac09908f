"""Named exceptions shared by the engine, the store and the agent.

Library code raises these; only the CLI turns them into one-line messages with a hint.
"""
from __future__ import annotations


class CllmError(Exception):
    """Base class of every error a user can cause and fix. `hint` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        msg = str(self).replace("\n", " ")
        return f"{msg} (hint: {self.hint})" if self.hint else msg


class CheckpointError(CllmError):
    """A checkpoint file is missing, truncated, corrupted or does not match."""


class ConfigError(CllmError):
    """A configuration value is invalid."""
