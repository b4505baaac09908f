"""Where each setting's value comes from, for the commands with rows in agent/settings.py's
SETTINGS table: the click options of a command (`options("agent")`: `--name-with-dashes`,
the default shown in the help) and `resolve`, which reads, for every command with a row
(CONFIGURED_COMMANDS: agent, train, crawl), the environment (`CLLM_<NAME>`, e.g.
CLLM_MIN_CYCLE_TOKENS=4000; lists separated by os.pathsep, URLs kept whole) and TOML files
(the user config file, ~/.config/cllm/cllm.toml on Linux, beneath `--config FILE`, else
$CLLM_CONFIG, else `<data-dir>/cllm.toml`, each if present). Keys at the top level apply to
every command taking them; a command's own table (`[agent]`, `[train]`, `[crawl]`) wins over
them; keys are spelled with - or _. An unknown table or key is an error.

Precedence, strongest first: flags, environment, the data directory's TOML file (or
--config), the user config file, the table's default. A value that fails its type or check
is a ConfigError naming where it came from.

This module only resolves values; it starts nothing.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping, Optional

import click

from agent.datadir import user_config_file
from agent.settings import BY_NAME, CONFIGURED_COMMANDS, SETTINGS, Setting, settings_of
from engine.errors import ConfigError


# ------------------------------------------------------------------------- click options

def _shown_default(s: Setting, command: str) -> Optional[str]:
    if s.shown is not None:
        return s.shown() if callable(s.shown) else s.shown
    value = s.default_for(command)
    if s.type is bool:
        return "yes" if value else "no"
    if value is None or value == ():
        return None
    return str(value)


def options(command: str):
    """A decorator adding the flags of `command`'s settings (table order), and --config.
    Every flag defaults to None (a list flag to ()), so `resolve` can tell a given flag from
    the default; the help shows the default the command resolves to. A renamed setting's
    old flag is hidden and passed as `<old_name>__old`."""
    def decorate(fn):
        fn = click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
                          default=None,
                          help="TOML settings file [$CLLM_CONFIG, else DATA_DIR/cllm.toml; the "
                               "user config file beneath it].")(fn)
        for s in reversed(settings_of(command)):
            if s.old_name:
                fn = click.option("--" + s.old_name.replace("_", "-"), s.old_name + "__old",
                                  type=s.type, default=None, hidden=True)(fn)
            shown = _shown_default(s, command)
            text = s.help + (f"  [default: {shown}]" if shown else "")
            kwargs: dict[str, Any] = {"help": text, "metavar": s.metavar}
            if s.type is bool:
                decls = [f"{s.flag}/--no-{s.key}"]
                kwargs["default"] = None
            elif s.type is list:
                decls = [s.flag]
                kwargs.update(multiple=True)
            else:
                decls = [s.flag]
                kwargs.update(default=None,
                              type=click.Choice(s.choices) if s.choices else s.type)
            fn = click.option(*decls, s.name, **kwargs)(fn)
        return fn

    return decorate


# --------------------------------------------------------------------------- resolution

def config_files(data_dir: Path, explicit: Optional[Path] = None) -> list[Path]:
    """The TOML files read, weakest first: the user config file (agent/datadir.py, if it
    exists), then `explicit` (--config), else $CLLM_CONFIG, else DATA_DIR/cllm.toml (if it
    exists). A named file that does not exist is an error."""
    if explicit is None and os.environ.get("CLLM_CONFIG"):
        explicit = Path(os.environ["CLLM_CONFIG"])
    if explicit is not None and not Path(explicit).is_file():
        raise ConfigError(f"config file {explicit} does not exist",
                          "check the --config path (or $CLLM_CONFIG)")
    out = [p for p in (user_config_file(),) if p.is_file()]
    own = Path(explicit) if explicit is not None else Path(data_dir) / "cllm.toml"
    if own.is_file() and own not in out:
        out.append(own)
    return out


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


def _convert(s: Setting, value: Any, where: str, command: str, split: bool = False) -> Any:
    typ = s.type
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
        raise ConfigError(f"{s.key} = {value!r} from {where} is not a valid {typ.__name__}",
                          f"e.g. {s.key} = {s.default_for(command)!r}") from None


def _given(value: Any) -> bool:
    return value is not None and value != () and value != []


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}", "fix the TOML syntax") from None


def _by_key(key: str) -> Optional[Setting]:
    name = key.replace("-", "_")
    s = BY_NAME.get(name) or next((s for s in SETTINGS if s.old_name == name), None)
    return s if s is not None and s.configurable and s.commands else None


def _toml_values(doc: dict, path: Path, command: str) -> dict[str, tuple[Setting, str, Any]]:
    """The raw values a TOML document gives `command`: top-level keys (for every command
    taking them), then its own table ([agent], [train], [crawl]) over them. A table of no
    command, or a key no command (or not this table's command) takes, is a ConfigError."""
    out: dict[str, tuple[Setting, str, Any]] = {}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    for name in tables:
        if name not in CONFIGURED_COMMANDS:
            raise ConfigError(f"unknown table [{name}] in {path}",
                              "known: " + ", ".join(f"[{c}]" for c in sorted(CONFIGURED_COMMANDS))
                              + ", or keys at the top level")
    for key, value in doc.items():
        if key in tables:
            continue
        s = _by_key(key)
        if s is None:
            raise ConfigError(f"unknown setting {key!r} in {path}", "known: " + ", ".join(
                sorted({s.key for s in SETTINGS if s.configurable and s.commands})))
        if command in s.commands:
            out[s.name] = (s, key, value)
    for table, entries in tables.items():   # every table checked, whichever command runs
        for key, value in entries.items():
            s = _by_key(key)
            if s is None or table not in s.commands:
                raise ConfigError(f"unknown setting {key!r} in [{table}] of {path}",
                                  f"`cllm {table}` takes: " + ", ".join(
                                      s.key for s in settings_of(table) if s.configurable))
            if table == command:
                out[s.name] = (s, key, value)
    return out


def _deprecated(s: Setting, used: str) -> None:
    click.echo(f"warning: {used} is deprecated, it is {s.flag.removeprefix('--')} now "
               f"({s.flag}, {s.env}, TOML {s.key})", err=True)


class Resolved(dict):
    """Resolved values by setting name; `where[name]` says where each came from ("the
    default", a file, $CLLM_X or --flag)."""

    where: dict[str, str]

    def given(self, name: str) -> bool:
        return self.where.get(name) != "the default"


def resolve(flags: Mapping[str, Any], data_dir: Path,
            config: Optional[Path] = None, command: str = "agent") -> Resolved:
    """The values of `command`'s settings by name: defaults < the user config file <
    DATA_DIR/cllm.toml (or --config / $CLLM_CONFIG) < environment < flags. A flag counts as
    given unless it is None or an empty tuple/list. Every value is checked; a refused one is
    a ConfigError naming where it came from."""
    flags = dict(flags)
    if config is None:
        config = flags.pop("config", None)
    takes = settings_of(command)
    out = Resolved({s.name: (list(s.default_for(command)) if s.type is list
                             else s.default_for(command)) for s in takes})
    where = out.where = {s.name: "the default" for s in takes}
    if command in CONFIGURED_COMMANDS:
        configurable = {s.name: s for s in takes if s.configurable}
        for path in config_files(data_dir, config):
            for s, key, value in _toml_values(_read_toml(path), path, command).values():
                if s.old_name and key.replace("-", "_") == s.old_name:
                    _deprecated(s, f"{key} in {path}")
                out[s.name], where[s.name] = _convert(s, value, str(path), command), str(path)
        for s in configurable.values():
            for env in ([f"CLLM_{s.old_name.upper()}"] if s.old_name else []) + [s.env]:
                value = os.environ.get(env)
                if value is not None:
                    if env != s.env:
                        _deprecated(s, f"${env}")
                    out[s.name] = _convert(s, value, f"${env}", command, split=True)
                    where[s.name] = f"${env}"
    for s in takes:
        old = flags.get(f"{s.old_name}__old") if s.old_name else None
        if _given(old) and not _given(flags.get(s.name)):
            old_flag = "--" + s.old_name.replace("_", "-")
            _deprecated(s, old_flag)
            out[s.name], where[s.name] = _convert(s, old, old_flag, command), old_flag
        value = flags.get(s.name)
        if _given(value):
            out[s.name], where[s.name] = _convert(s, value, s.flag, command), s.flag
    for s in takes:
        problem = s.problem(out[s.name])
        if problem is not None:
            raise ConfigError(f"{problem} (from {where[s.name]})", s.hint)
    return out
