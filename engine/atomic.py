"""The one way durable files are written: atomically, durably, with recognisable temp files.

`atomic_write_bytes(path, data)`: a temp file in the same directory named `.NAME.<random>.tmp`,
write, flush, fsync, os.replace onto path, fsync the directory; on any error the temp file is
removed and the old file (if any) is left untouched. A reader sees the old or the new file,
never half of one, and after a crash only a temp file can be left behind:
`is_temp_file(name)` is the rule that recognises one, for the agent's recovery to delete.

Used by engine.checkpoint and engine.tokenizer. Not here: what the files hold.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of atomic_write_bytes's temp files (`.NAME.<random>.tmp`)."""
    return (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)
            and len(name) > len(TEMP_PREFIX) + len(TEMP_SUFFIX))


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):      # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write data to path atomically and durably (creating the parent directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX,
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))
