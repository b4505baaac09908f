"""Logging for the command line, set up in one place: the project's loggers follow -v, other
libraries stay at WARNING unless -vvv (matplotlib's font manager alone printed 147 debug
lines at -vv), and the announcement of a long first-run compilation shows by default.
`log_file` adds a size-rotated file beside stderr (`cllm agent --log-file`)."""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
from pathlib import Path
from typing import Iterator, Optional

from engine.errors import CllmError

OWN = ("agent", "engine", "store")
NOTICES = ("engine.warmup",)   # "compiling the engine's kernels (first run only)": a long wait
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: int) -> None:
    """0: warnings (and the notices); 1 (-v): the project's INFO; 2 (-vv): its DEBUG;
    3 (-vvv): every library's DEBUG too. -1 (-q): errors only, no notices; -2: critical only."""
    logging.basicConfig(format=FORMAT)      # a handler on the root, unless one is there
    logging.getLogger().setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)
    # the options' callbacks call this once per option: set every level each time
    own = min(logging.CRITICAL, max(logging.DEBUG, logging.WARNING - 10 * verbose))
    for name in OWN:
        logging.getLogger(name).setLevel(own if verbose != 0 else logging.NOTSET)
    for name in NOTICES:
        logging.getLogger(name).setLevel(logging.NOTSET)
    if verbose >= 0:
        for name in NOTICES:
            notice = logging.getLogger(name)
            if notice.getEffectiveLevel() > logging.INFO:
                notice.setLevel(logging.INFO)


@contextlib.contextmanager
def log_file(path: Optional[str], max_bytes: int, count: int) -> Iterator[None]:
    """While the block runs, what reaches the root logger also goes to `path` (created with
    its folder), rotated past `max_bytes` into PATH.1 ... PATH.`count`. None: no file."""
    if path is None:
        yield
        return
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handler = _PrivateRotatingFileHandler(target, maxBytes=max_bytes, backupCount=count,
                                              encoding="utf-8")
        os.chmod(target, 0o600)          # one made before, by another umask
    except OSError as e:
        raise CllmError(f"cannot write the log file {target}: {e.strerror or e}",
                        "pass a writable --log-file PATH") from None
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Each file it opens (the first, and each after a rotation) is the user's alone: the
    log names the files and URLs the agent reads."""

    def _open(self):
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                    opener=lambda path, flags: os.open(path, flags, 0o600))
