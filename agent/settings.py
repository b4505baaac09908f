"""Agent settings from three places, strongest first: command-line flags, environment
variables (`CLLM_<NAME>`, e.g. CLLM_MIN_CYCLE_TOKENS=4000; lists separated by os.pathsep,
URLs kept whole),
and a TOML file (`--config FILE`, else $CLLM_CONFIG, else `<data-dir>/cllm.toml` if present;
keys in an `[agent]` table or at the top level, spelled with - or _).

It only resolves values; it does not start anything. Unknown keys and values of the wrong
type are ConfigErrors naming where they came from.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping, Optional

from engine.errors import ConfigError

# name -> (default, type); a list type means a repeatable flag
DEFAULTS: dict[str, tuple[Any, type]] = {
    "preset": ("small", str),
    "workers": (None, int),
    "min_cycle_tokens": (2000, int),
    "max_wait": (300.0, float),
    "quiet_period": (1.0, float),
    "replay_fraction": (0.25, float),
    "max_steps": (None, int),
    "passes": (2.0, float),
    "cycle_seconds": (90.0, float),
    "keep_checkpoints": (5, int),
    "batch_size": (8, int),
    "lr": (2e-3, float),
    "max_new_tokens": (500, int),
    "crystalline_weight": (0.0, float),
    "init": ("normal", str),
    "allow_private_hosts": (False, bool),
    "watch": ([], list),
    "crawl": ([], list),
    "include": ([], list),
    "exclude": ([], list),
    "polling": (False, bool),
    "follow_symlinks": (False, bool),
    "fallback_encoding": (None, str),
    "max_pages": (100, int),
    "max_depth": (2, int),
}


def config_file(data_dir: Path, explicit: Optional[Path] = None) -> Optional[Path]:
    if explicit is not None:
        if not Path(explicit).is_file():
            raise ConfigError(f"config file {explicit} does not exist", "check the --config path")
        return Path(explicit)
    env = os.environ.get("CLLM_CONFIG")
    if env:
        return config_file(data_dir, Path(env))
    p = Path(data_dir) / "cllm.toml"
    return p if p.is_file() else None


def split_list(value: str) -> list[str]:
    """A list from one environment variable: items separated by os.pathsep (':' here), except
    that the ':' of a URL's scheme (http://, https://) or port (host:8080) does not split."""
    out: list[str] = []
    for p in value.split(os.pathsep):
        prev = out[-1] if out else ""
        scheme = prev.lower() in ("http", "https") and p.startswith("//")
        port = "://" in prev and "/" not in prev.split("://", 1)[1] and p[:1].isdigit()
        if scheme or port:
            out[-1] = prev + os.pathsep + p
        else:
            out.append(p)
    return [p for p in out if p]


def _convert(name: str, value: Any, where: str, split: bool = False) -> Any:
    default, typ = DEFAULTS[name]
    try:
        if typ is list:
            if isinstance(value, str):
                return split_list(value) if split else [value]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [str(v) for v in value]
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError
            if not isinstance(value, bool):
                raise TypeError
            return value
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name.replace('_', '-')} = {value!r} from {where} is not a valid "
                          f"{typ.__name__}", f"e.g. {name.replace('_', '-')} = {default!r}") from None


def resolve(flags: Mapping[str, Any], data_dir: Path, config: Optional[Path] = None
            ) -> dict[str, Any]:
    """Merge defaults < TOML < environment < flags. A flag counts as given unless it is None
    or an empty tuple/list."""
    out = {k: (list(v) if isinstance(v, list) else v) for k, (v, _) in DEFAULTS.items()}
    path = config_file(data_dir, config)
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}", "fix the TOML syntax") from None
        table = doc.get("agent", doc)
        for key, value in table.items():
            name = key.replace("-", "_")
            if isinstance(value, dict):
                continue
            if name not in DEFAULTS:
                raise ConfigError(f"unknown setting {key!r} in {path}",
                                  f"known: {', '.join(k.replace('_', '-') for k in DEFAULTS)}")
            out[name] = _convert(name, value, str(path))
    for name in DEFAULTS:
        env = os.environ.get(f"CLLM_{name.upper()}")
        if env is not None:
            out[name] = _convert(name, env, f"$CLLM_{name.upper()}", split=True)
    for name, value in flags.items():
        if name in DEFAULTS and value is not None and value != () and value != []:
            out[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    return out
