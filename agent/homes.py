"""Where cllm keeps things when not told: the user's data and config directories.

    data directory   platformdirs' user data dir: ~/.local/share/cllm on Linux
                     ($XDG_DATA_HOME/cllm), ~/Library/Application Support/cllm on macOS;
                     $CLLM_DATA_DIR or --data-dir instead
    user config      platformdirs' user config dir + cllm.toml: ~/.config/cllm/cllm.toml on
                     Linux ($XDG_CONFIG_HOME/cllm/cllm.toml); read beneath DATA_DIR/cllm.toml
                     (agent/settings.py has the whole precedence)

So `cllm status` from any folder finds the agent that `cllm agent` started from another.
"""
from __future__ import annotations

from pathlib import Path

APP = "cllm"
CONFIG_NAME = "cllm.toml"


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def user_config_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / CONFIG_NAME


def shown(path: Path) -> str:
    """A path with the home folder as ~ (for help texts)."""
    try:
        return "~/" + str(Path(path).relative_to(Path.home()))
    except ValueError:
        return str(path)
