"""Where cllm keeps things when not told: the user's data and config directories.

    data directory   platformdirs' user data dir: ~/.local/share/cllm on Linux
                     ($XDG_DATA_HOME/cllm), ~/Library/Application Support/cllm on macOS;
                     $CLLM_DATA_DIR or --data-dir instead
    user config      platformdirs' user config dir + cllm.toml: ~/.config/cllm/cllm.toml on
                     Linux ($XDG_CONFIG_HOME/cllm/cllm.toml); read beneath DATA_DIR/cllm.toml
                     (agent/resolve.py has the whole precedence)

A data directory cllm creates is its owner's only (0700, store/db.py's make_private_dir)
and so are the store's files (0600): on a shared machine other users cannot read what the
agent learned, nor the server's token (DATA_DIR/cllm.token, agent/server/security.py).

So `cllm status` from any folder finds the agent that `cllm agent` started from another.

One agent runs per data directory: `DataDirLock` holds an exclusive flock on
`DATA_DIR/cllm.lock` (the kernel drops it when the process dies) with the owner's pid in
it, which `holder_pid` reads for `cllm status`. The lock file is opened without following
a symbolic link and must be a regular file with one name, and it is truncated only once
the lock is held: a link planted in a shared data directory cannot make the agent empty
another file. The store's trainer lease
(agent/training/trainer_lease.py) keeps a second agent from training the same database from
another directory or machine.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Optional

import platformdirs

from agent.training.trainer_lease import AgentLocked
from engine.errors import CllmError
from store.db import make_private_dir

APP = "cllm"
# the lock file is never reached through a symbolic link, kept open by a child process, or
# waited on (a FIFO put in its place)
_LOCK_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
CONFIG_NAME = "cllm.toml"
LOCK_NAME = "cllm.lock"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def user_config_file() -> Path:
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / CONFIG_NAME


def shown(path: Path) -> str:
    """A path with the home folder as ~ (for help texts)."""
    try:
        return "~/" + str(Path(path).relative_to(Path.home()))
    except ValueError:
        return str(path)


class DataDirLock:
    """An exclusive flock on `<data_dir>/cllm.lock` holding the owner's pid."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "DataDirLock":
        try:
            make_private_dir(self.path.parent)
            fd = os.open(self.path, _LOCK_FLAGS | os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CllmError(f"{self.path} is a symbolic link: refused (writing the pid "
                                "through it would truncate the file it points to)",
                                "remove it (the agent creates its own lock file) and make sure "
                                "nobody else can write in the data directory") from None
            raise CllmError(f"cannot write in the data directory {self.path.parent}: "
                            f"{e.strerror}", "pass a --data-dir you can write to") from None
        try:
            problem = _not_own_file(os.fstat(fd))
            if problem:
                raise CllmError(f"{self.path} is {problem}: refused (writing the pid would "
                                "change another file)", "remove it (the agent creates its own "
                                "lock file) and make sure nobody else can write in the data "
                                "directory")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                pid = holder_pid(self.path.parent)
                raise AgentLocked(
                    f"another agent{f' (pid {pid})' if pid else ''} is already running on "
                    f"{self.path.parent}", "stop it first, or use another --data-dir") from None
            raise
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)  # only now, with the lock held: the pid of a running agent stays
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DataDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _not_own_file(st: os.stat_result) -> str | None:
    """What makes an opened lock file no file of its own (a regular file with one name), or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return f"a hard link ({st.st_nlink} names for one file)"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return pid > 0


def holder_pid(data_dir: Path) -> Optional[int]:
    """The pid of the agent holding the data directory's lock, or None if none runs."""
    path = Path(data_dir) / LOCK_NAME
    try:
        fd = os.open(path, _LOCK_FLAGS | os.O_RDONLY)
    except OSError:  # none, or a symbolic link no agent would lock: no agent runs
        return None
    try:
        if _not_own_file(os.fstat(fd)):  # a FIFO or device planted there: never read
            return None
        # Read before probing: the probe's shared lock, however brief, makes an agent that
        # starts at that moment fail to lock ("already running"), so it is taken only when
        # the file names a live process (an agent, or a pid reused after a SIGKILL)
        text = os.read(fd, 64).decode(errors="replace").strip()
        if not text or (text.isdigit() and not _alive(int(text))):
            return None  # released (an agent empties it) or its agent is gone
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
