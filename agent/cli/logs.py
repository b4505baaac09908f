"""Logging for the command line, set up in one place: the project's loggers follow -v, other
libraries stay at WARNING unless -vvv (matplotlib's font manager alone printed 147 debug
lines at -vv), and the announcement of a long first-run compilation shows by default."""
from __future__ import annotations

import logging

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
