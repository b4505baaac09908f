"""The settings table (agent/settings.py): every row reaches its dataclass from a flag, and for
`cllm agent` also from CLLM_* and the TOML file, strongest first (flag, environment, TOML,
default); a refused value is a one-line error naming where it came from; --database-url
reaches the store through click's context object, not os.environ.

Commands run in process with the work they would start replaced by a recorder, so each
invocation takes milliseconds.
"""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.settings import (SETTINGS, AgentConfig, CrawlSettings, Setting, TrainerSettings,
                            settings_of)


class Stop(Exception):
    """Raised by a recorder: the command got as far as building its settings."""


def samples(s: Setting, command: str) -> tuple:
    """Two valid values for `s`: the first differs from the command's default, the second
    from the first (so each precedence layer changes the result)."""
    d = s.default_for(command)
    if s.choices:
        a = next(c for c in s.choices if c != d)
        return a, next(c for c in s.choices if c != a)
    if s.type is bool:
        return (not d), d
    if s.type is list:
        return ["/srv/one", "/srv/two"], ["/srv/three"]
    if s.type is int:
        base = 3 if d is None else d
        return base + 1, base + 2
    if s.type is float:      # the first two candidates the row's check accepts
        base = d or 0.2
        ok = [v for v in (base * 1.5, base * 1.25, base / 2, base / 4)
              if v != d and s.problem(v) is None]
        return ok[0], ok[1]
    if s.name == "arch":     # text with a grammar: two architectures it reads
        return "mlp=relu2", "pos=rope,qk_norm"
    return "cp1252", "latin-1"


def invalid(s: Setting, command: str):
    """A value of the right type that the row's check refuses, or None if there is none."""
    if s.choices:
        return "bogus"
    if s.check is None:
        return None
    for v in (-5, 0, -0.5, 0.05, 1.5, 0.7):
        v = s.type(v) if s.type in (int, float) else v
        if s.problem(v) is not None:
            return v
    return None


def env_text(s: Setting, v) -> str:
    if s.type is list:
        return os.pathsep.join(v)
    if s.type is bool:
        return "true" if v else "false"
    return str(v)


def toml_text(s: Setting, v) -> str:
    if s.type is list:
        return f"{s.key} = {json.dumps(v)}\n"
    if s.type is bool:
        return f"{s.key} = {'true' if v else 'false'}\n"
    if s.type is str:
        return f"{s.key} = {json.dumps(v)}\n"
    return f"{s.key} = {v!r}\n"


def flag_args(s: Setting, v) -> list[str]:
    if s.type is list:
        return [a for item in v for a in (s.flag, item)]
    if s.type is bool:
        return [s.flag if v else f"--no-{s.key}"]
    return [s.flag, str(v)]


def as_field(s: Setting, v):
    return tuple(v) if s.type is list else v


@pytest.fixture
def clean_env(monkeypatch):
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    for name in ("CLLM_CONFIG", "CLLM_DATABASE_URL", "CLLM_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def agent_config(clean_env, tmp_path):
    """Run `cllm agent ARGS` up to the daemon and return the AgentConfig it would get."""
    from agent import daemon

    got = []

    class Recorder:
        def __init__(self, cfg, stop=None, serve=None):
            got.append(cfg)
            raise Stop

    clean_env.setattr(daemon, "Agent", Recorder)
    data = tmp_path / "data"

    def run(*args, env=None, obj_args=()):
        r = CliRunner().invoke(main, [*obj_args, "agent", "--data-dir", str(data), *args],
                               env=env)
        if not got:
            return r
        assert isinstance(r.exception, Stop), r.output
        return got.pop()

    run.data = data
    return run


def dataclass_value(cfg: AgentConfig, s: Setting):
    return getattr(cfg.trainer if "trainer" in s.into else cfg, s.attr)


AGENT_ROWS = settings_of("agent")


def test_the_table_names_each_setting_once_and_every_row_reaches_a_dataclass_or_a_command():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for s in SETTINGS:
        assert s.into or s.commands, s.name
        assert set(s.into) <= {"trainer", "agent", "crawl"}, s.name
        assert s.problem(s.default) is None, f"{s.name}: the default fails its own check"
    held = {"trainer": TrainerSettings, "agent": AgentConfig, "crawl": CrawlSettings}
    for s in SETTINGS:
        for h in s.into:
            assert getattr(held[h](**({"data_dir": "d", "trainer": TrainerSettings()}
                                      if h == "agent" else {})), s.attr) == s.default


@pytest.mark.parametrize("s", AGENT_ROWS, ids=lambda s: s.name)
def test_each_agent_setting_reaches_its_dataclass_from_toml_env_and_flag_strongest_first(
        s, agent_config, tmp_path):
    a, b = samples(s, "agent")
    assert s.problem(a) is None and s.problem(b) is None
    cfg = agent_config()
    default = s.default_for("agent")
    if s.name in ("watch", "crawl"):   # nothing to watch or crawl: the embedded defaults
        assert dataclass_value(cfg, s) != ()
    else:
        assert dataclass_value(cfg, s) == as_field(s, default)
    assert dataclass_value(agent_config(*flag_args(s, a)), s) == as_field(s, a)
    if not s.configurable:
        return
    agent_config.data.mkdir(exist_ok=True)
    (agent_config.data / "cllm.toml").write_text("[agent]\n" + toml_text(s, a))
    assert dataclass_value(agent_config(), s) == as_field(s, a)
    env = {s.env: env_text(s, b)}
    assert dataclass_value(agent_config(env=env), s) == as_field(s, b)
    assert dataclass_value(agent_config(*flag_args(s, a), env=env), s) == as_field(s, a)


@pytest.mark.parametrize("s", [s for s in AGENT_ROWS if s.configurable and (
    invalid(s, "agent") is not None or s.type in (int, float, bool))], ids=lambda s: s.name)
def test_an_invalid_agent_setting_is_one_line_naming_where_it_came_from(
        s, agent_config, tmp_path):
    bad = invalid(s, "agent")
    places = []
    if bad is not None:
        if s.choices:   # click's own choice check: its usage error names the flag
            r = agent_config(*flag_args(s, bad))
            assert r.exit_code == 2 and f"Invalid value for '{s.flag}'" in r.output, r.output
        else:
            places.append((flag_args(s, bad), None, None, f"(from {s.flag})"))
        places.append(([], {s.env: env_text(s, bad)}, None, f"(from ${s.env})"))
        places.append(([], None, toml_text(s, bad), "cllm.toml"))
    if s.type in (int, float, bool):  # the wrong type, outside click's own parsing
        places.append(([], {s.env: "many"}, None, f"from ${s.env}"))
        places.append(([], None, f'{s.key} = "many"\n', "cllm.toml"))
    for args, env, toml, where in places:
        agent_config.data.mkdir(exist_ok=True)
        toml_file = agent_config.data / "cllm.toml"
        toml_file.unlink(missing_ok=True)
        if toml is not None:
            toml_file.write_text(toml)
        r = agent_config(*args, env=env)
        assert not isinstance(r, AgentConfig), f"{s.name} {args} {env} {toml} was accepted"
        assert r.exit_code == 2, r.output
        assert r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
        assert where in r.output and "hint:" in r.output, r.output


@pytest.mark.parametrize("command, cls", [("train", TrainerSettings), ("crawl", CrawlSettings)])
def test_train_and_crawl_settings_reach_their_dataclass_from_toml_env_and_flag_strongest_first(
        command, cls, clean_env, tmp_path):
    """Regression: `cllm crawl` and `cllm train` took flags only (a fallback-encoding in
    cllm.toml did not reach `cllm crawl`)."""
    from agent.cli import crawl as crawl_cli
    from agent.cli import model as model_cli
    from agent.settings import build

    module = model_cli if command == "train" else crawl_cli
    got = []

    def recorder(klass, values, **fields):
        got.append(build(klass, values, **fields))
        raise Stop

    clean_env.setattr(module, "build", recorder)
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("some words to train on\n")

    data = tmp_path / "d"
    data.mkdir()

    def run(*args, env=None):
        r = CliRunner().invoke(main, [command, str(text), "--data-dir", str(data), *args],
                               env=env)
        assert isinstance(r.exception, Stop), r.output
        return got.pop()

    for s in settings_of(command):
        if cls.holder not in s.into:
            continue
        a, b = samples(s, command)
        (data / "cllm.toml").unlink(missing_ok=True)
        assert getattr(run(), s.attr) == as_field(s, s.default_for(command)), s.name
        assert getattr(run(*flag_args(s, a)), s.attr) == as_field(s, a), s.name
        for toml in (f"[{command}]\n" + toml_text(s, a), toml_text(s, a)):  # table, top level
            (data / "cllm.toml").write_text(toml)
            assert getattr(run(), s.attr) == as_field(s, a), (s.name, toml)
        assert getattr(run(env={s.env: env_text(s, b)}), s.attr) == as_field(s, b), s.name
        assert getattr(run(*flag_args(s, a), env={s.env: env_text(s, b)}), s.attr) == as_field(
            s, a), s.name
        (data / "cllm.toml").unlink()
        bad = invalid(s, command)
        if bad is not None and not s.choices:   # (click itself refuses a choice it lacks)
            r = CliRunner().invoke(main, [command, str(text), "--data-dir", str(tmp_path / "d"),
                                          *flag_args(s, bad)])
            assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
            assert f"(from {s.flag})" in r.output and "hint:" in r.output, r.output


def test_a_misspelled_table_or_a_key_of_another_command_is_an_error(clean_env, tmp_path):
    from agent.resolve import resolve
    from engine.errors import ConfigError

    data = tmp_path / "d"
    data.mkdir()
    for toml, message in (('[agnet]\npreset = "tiny"\n', "unknown table [agnet]"),
                          ('[crawl]\npreset = "tiny"\n', "unknown setting 'preset' in [crawl]"),
                          ("prest = 'tiny'\n", "unknown setting 'prest'")):
        (data / "cllm.toml").write_text(toml)
        for command in ("agent", "crawl", "train"):
            with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
                resolve({}, data, command=command)
    # a top-level key applies to every command taking it, and is no error for the others
    (data / "cllm.toml").write_text('fallback-encoding = "cp1252"\nwatch = ["/srv"]\n')
    assert resolve({}, data, command="crawl")["fallback_encoding"] == "cp1252"
    assert resolve({}, data, command="agent")["watch"] == ["/srv"]
    r = CliRunner().invoke(main, ["crawl", str(tmp_path), "--data-dir", str(data), "--config",
                                  str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "config file" in r.output and "hint:" in r.output


def test_the_renamed_vocabulary_flag_keeps_its_old_name_for_a_release_with_a_warning(
        clean_env, tmp_path):
    from agent.resolve import resolve

    data = tmp_path / "d"
    assert resolve({"vocab_growth": 7}, data, command="train")["vocab_growth"] == 7
    v = resolve({"max_new_tokens__old": 9}, data, command="train")
    assert v["vocab_growth"] == 9 and v.where["vocab_growth"] == "--max-new-tokens"
    clean_env.setenv("CLLM_MAX_NEW_TOKENS", "11")
    assert resolve({}, data)["vocab_growth"] == 11
    help_text = " ".join(CliRunner().invoke(main, ["agent", "-h"]).output.split())
    assert "--vocab-growth" in help_text and "--max-new-tokens" not in help_text
    gen = " ".join(CliRunner().invoke(main, ["generate", "-h"]).output.split())
    assert "--max-tokens" in gen and "--max-new-tokens" not in gen


def test_train_steps_are_checked_before_any_work(clean_env, tmp_path):
    r = CliRunner().invoke(main, ["train", str(tmp_path), "--data-dir", str(tmp_path / "d"),
                                  "--steps", "0"])
    assert r.exit_code == 2 and "--steps must be >= 1 (from --steps)" in r.output
    assert not (tmp_path / "d").exists()


def test_help_shows_each_commands_own_default(clean_env):
    train = CliRunner().invoke(main, ["train", "-h"]).output
    agent = CliRunner().invoke(main, ["agent", "-h"]).output
    assert "[default: 16]" in train and "[default: 3000]" in train
    assert "[default: 16]" in agent and "[default: 2000]" in agent
    crawl = CliRunner().invoke(main, ["crawl", "-h"]).output
    assert "5242880" in crawl            # the crawler's own page limit, read from the crawler


def test_crawl_without_max_file_bytes_uses_the_crawlers_own_limits(clean_env, tmp_path):
    """Regression: `cllm crawl` capped pages at 4 MiB while the crawler (and `cllm agent`)
    used 5 MiB."""
    from agent import crawler as crawler_mod
    from agent.web.fetch import MAX_BODY_BYTES
    from agent.inputs.text import DEFAULT_MAX_FILE_BYTES

    seen = []

    class Recorder(crawler_mod.Crawler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((self.fetcher.max_body_bytes, self.ingestor.max_file_bytes))

    page_limit = MAX_BODY_BYTES
    assert page_limit == 5 * 1024 * 1024
    clean_env.setattr(crawler_mod, "Crawler", Recorder)
    (tmp_path / "src").mkdir()
    for extra, want in (([], (page_limit, DEFAULT_MAX_FILE_BYTES)),
                        (["--max-file-bytes", "999"], (999, 999))):
        r = CliRunner().invoke(main, ["crawl", str(tmp_path / "src"), "--data-dir",
                                      str(tmp_path / "d"), *extra], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert seen.pop() == want


# ----------------------------------------------------------------------- --database-url

class RecordingEnviron(dict):
    """os.environ that remembers every write."""

    def __init__(self, base):
        super().__init__(base)
        self.writes = []

    def __setitem__(self, key, value):
        self.writes.append(key)
        super().__setitem__(key, value)


def test_database_url_reaches_the_store_without_touching_the_environment(
        store_target, tmp_path, monkeypatch):
    from store import cycles

    url = store_target.url or f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    from store import open_store
    with open_store(url=url) as st:
        with st.session() as s:
            cycles.finish_cycle(s, cycles.start_cycle(s, trigger="tokens").id)
    environ = RecordingEnviron(os.environ)
    environ.pop("CLLM_DATABASE_URL", None)
    monkeypatch.setattr(os, "environ", environ)
    data = tmp_path / "empty-data-dir"       # no store here: only the URL can answer
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("words for the right database\n")
    runner = CliRunner()
    r = runner.invoke(main, ["--database-url", url, "status", "--data-dir", str(data), "--json"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["cycles_completed"] == 1
    r = runner.invoke(main, ["--database-url", url, "crawl", str(src), "--data-dir", str(data)],
                      catch_exceptions=False)
    assert r.exit_code == 0 and "added 1" in r.output, r.output
    r = runner.invoke(main, ["--database-url", url, "history", "documents", "--data-dir",
                             str(data), "--json"], catch_exceptions=False)
    assert [d["uri"].rsplit("/", 1)[1] for d in json.loads(r.output)] == ["a.txt"]
    r = runner.invoke(main, ["--database-url", url, "db", "current", "--data-dir", str(data),
                             "--json"], catch_exceptions=False)
    assert json.loads(r.output)["backend"] == store_target.backend
    # the same after the subcommand
    r = runner.invoke(main, ["status", "--data-dir", str(data), "--json", "--database-url", url],
                      catch_exceptions=False)
    assert r.exit_code == 0 and json.loads(r.output)["cycles_completed"] == 1, r.output
    r = runner.invoke(main, ["history", "documents", "--database-url", url, "--data-dir",
                             str(data), "--json"], catch_exceptions=False)
    assert [d["uri"].rsplit("/", 1)[1] for d in json.loads(r.output)] == ["a.txt"]
    assert environ.writes == [] and "CLLM_DATABASE_URL" not in environ
    assert not (data / "cllm.sqlite3").exists()


def test_database_url_reaches_the_agents_config(agent_config):
    cfg = agent_config(obj_args=("--database-url", "sqlite:////tmp/x.sqlite3"))
    assert cfg.database_url == "sqlite:////tmp/x.sqlite3"
    assert agent_config().database_url is None


def test_a_preset_other_than_the_data_directorys_model_is_a_warning_naming_the_way_out(
        agent_config, clean_env):
    from agent.cli import model as model_cli
    from agent.training.model_state import new_model_state, save_model_state

    def stop(*args, **kwargs):
        raise Stop

    clean_env.setattr(model_cli, "build", stop)
    data = agent_config.data
    save_model_state(new_model_state("tiny"), data, 1)
    agent = ["agent", "--data-dir", str(data), "--watch", str(data)]
    r = CliRunner().invoke(main, agent + ["--preset", "base"])
    assert isinstance(r.exception, Stop), r.output      # it goes on, with the directory's model
    assert ("warning: preset base (from --preset) is ignored: " in r.output
            and "already holds a tiny model, which resumes" in r.output
            and "another --data-dir" in r.output), r.output
    for args in (["--preset", "tiny"], []):   # the same preset, or none given: no warning
        r = CliRunner().invoke(main, agent + args)
        assert isinstance(r.exception, Stop) and "warning" not in r.output, r.output
    text = data.parent / "text"                 # not the data directory: it is never read
    text.mkdir()
    (text / "a.txt").write_text("text to train on\n")
    train = ["train", str(text), "--data-dir", str(data)]
    r = CliRunner().invoke(main, train, env={"CLLM_PRESET": "small"})
    assert isinstance(r.exception, Stop), r.output
    assert "preset small (from $CLLM_PRESET) is ignored" in r.output and "--fresh" in r.output
    r = CliRunner().invoke(main, train + ["--fresh"], env={"CLLM_PRESET": "small"})
    assert isinstance(r.exception, Stop) and "warning" not in r.output, r.output


def test_an_architecture_other_than_the_data_directorys_model_is_a_warning(agent_config,
                                                                           clean_env):
    """--arch shapes a new data directory's model only: one that holds a model resumes it as
    its checkpoints record it (nothing converts it), and says so."""
    from agent.cli import model as model_cli
    from agent.training.model_state import new_model_state, save_model_state

    def stop(*args, **kwargs):
        raise Stop

    clean_env.setattr(model_cli, "build", stop)
    data = agent_config.data
    save_model_state(new_model_state("tiny", arch={"mlp": "relu2", "pos": "rope"}), data, 1)
    agent = ["agent", "--data-dir", str(data), "--watch", str(data)]
    r = CliRunner().invoke(main, agent + ["--arch", "qk_norm"])
    assert isinstance(r.exception, Stop), r.output
    assert ("--arch qk_norm (from --arch) is ignored" in r.output
            and "of architecture mlp=relu2,pos=rope, which resumes" in r.output), r.output
    for args in (["--arch", "pos=rope,mlp=relu2"], []):   # the same options, or none given
        r = CliRunner().invoke(main, agent + args)
        assert isinstance(r.exception, Stop) and "warning" not in r.output, r.output
    r = CliRunner().invoke(main, agent + ["--arch", "mlp=swish"])
    assert r.exit_code != 0 and "mlp must be one of gelu, relu2" in r.output, r.output


def test_the_optimizer_of_a_resumed_model_is_kept_unless_named():
    from agent.settings import NEW_OPTIMIZER, TrainerSettings

    st = TrainerSettings()
    assert st.train_config(10).optimizer == NEW_OPTIMIZER          # a new data directory
    assert st.train_config(10, resumed="muon").optimizer == "muon"
    assert st.train_config(10, resumed="adamw").optimizer == "adamw"
    assert st.replace(optimizer="muon").train_config(10, resumed="adamw").optimizer == "muon"
    assert st.replace(arch="mlp=relu2,qk_norm").arch_options() == {"mlp": "relu2",
                                                                   "qk_norm": True}
