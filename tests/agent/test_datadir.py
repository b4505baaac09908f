"""The default data directory and the user config file (agent/datadir.py): the user's data
and config homes, never the current folder. The autouse fixture of tests/conftest.py points
HOME and the XDG homes at temporary folders."""
import json
import os
import stat
from pathlib import Path

from click.testing import CliRunner

from agent.cli import main
from agent.datadir import DataDirLock


def test_the_default_data_directory_is_the_user_data_directory_wherever_cllm_runs(
        tmp_path, monkeypatch, _no_real_home):
    home_data = Path(os.environ["XDG_DATA_HOME"]) / "cllm"
    src = tmp_path / "notes"
    src.mkdir()
    (src / "a.txt").write_text("words to keep\n")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["crawl", str(src)], catch_exceptions=False)
    assert r.exit_code == 0 and "added 1" in r.output, r.output
    assert (home_data / "cllm.sqlite3").is_file() and not (tmp_path / "cllm-data").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = CliRunner().invoke(main, ["status"], catch_exceptions=False)
    assert r.exit_code == 0 and f"data directory: {home_data}\n" in r.output, r.output
    st = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert st["data_dir"] == str(home_data) and st["documents"] == {"pending": 1}
    # $CLLM_DATA_DIR and --data-dir as before
    monkeypatch.setenv("CLLM_DATA_DIR", str(tmp_path / "env-dir"))
    r = CliRunner().invoke(main, ["status"])
    assert r.exit_code == 1 and f"no store in {tmp_path / 'env-dir'}" in r.output
    r = CliRunner().invoke(main, ["status", "--data-dir", str(home_data)])
    assert r.exit_code == 0 and str(home_data) in r.output


def test_help_shows_the_default_data_directory_as_the_user_data_directory():
    r = CliRunner().invoke(main, ["status", "-h"])
    assert "~/.local/share/cllm, the user data directory" in " ".join(r.output.split())


def test_config_precedence_flags_env_data_dir_toml_user_toml_defaults(tmp_path, monkeypatch):
    from agent.datadir import user_config_file
    from agent.resolve import resolve

    user = user_config_file()
    assert user == Path(os.environ["XDG_CONFIG_HOME"]) / "cllm" / "cllm.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[agent]\npreset = "tiny"\nmax-wait = 7\nmin-cycle-tokens = 11\n'
                    'passes = 3\n')
    data = tmp_path / "data"
    data.mkdir()
    (data / "cllm.toml").write_text('[agent]\nmax-wait = 8\nmin-cycle-tokens = 12\n')
    monkeypatch.setenv("CLLM_MIN_CYCLE_TOKENS", "13")
    v = resolve({"passes": 4.0}, data)
    assert (v["preset"], v["max_wait"], v["min_cycle_tokens"], v["passes"]) == (
        "tiny", 8.0, 13, 4.0)        # user TOML < data-dir TOML < environment < flags
    assert v["lr"] == 6e-3           # the table's default under all of them
    # --config replaces the data directory's file, the user file still lies beneath it
    other = tmp_path / "other.toml"
    other.write_text("[agent]\nreplay-fraction = 0.5\n")
    v = resolve({}, data, other)
    assert (v["preset"], v["max_wait"], v["replay_fraction"]) == ("tiny", 7.0, 0.5)


def test_a_planted_lock_symlink_or_hard_link_leaves_its_target_untouched(tmp_path):
    """cllm.lock put in a shared data directory as a link to another of the user's files:
    the agent refuses with a clear error instead of truncating the file and writing its pid."""
    import pytest

    from agent.datadir import DataDirLock, holder_pid
    from engine.errors import CllmError

    victim = tmp_path / "precious.txt"
    victim.write_text("a year of notes\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "cllm.lock").symlink_to(victim)
    with pytest.raises(CllmError, match="cllm.lock is a symbolic link: refused") as e:
        DataDirLock(data).acquire()
    assert "remove it" in e.value.hint
    assert victim.read_text() == "a year of notes\n"
    assert holder_pid(data) is None               # `cllm status`: no agent runs there
    r = CliRunner().invoke(main, ["train", "--data-dir", str(data), "--preset", "tiny", "--steps", "1"])
    assert r.exit_code == 1 and "is a symbolic link: refused" in r.output, r.output
    assert victim.read_text() == "a year of notes\n"

    (data / "cllm.lock").unlink()
    os.link(victim, data / "cllm.lock")           # a hard link (where the kernel allows one)
    with pytest.raises(CllmError, match=r"is a hard link \(2 names for one file\): refused"):
        DataDirLock(data).acquire()
    assert victim.read_text() == "a year of notes\n"

    (data / "cllm.lock").unlink()
    os.mkfifo(data / "cllm.lock")                 # a FIFO: neither the agent nor status waits on it
    with pytest.raises(CllmError, match="is not a regular file: refused"):
        DataDirLock(data).acquire()
    assert holder_pid(data) is None


def test_the_lock_keeps_a_running_agents_pid_until_it_is_held(tmp_path):
    """A second agent that fails to take the lock leaves the first one's pid in the file."""
    import pytest

    from agent.datadir import DataDirLock, holder_pid
    from agent.training.trainer_lease import AgentLocked

    data = tmp_path / "data"
    with DataDirLock(data):
        with pytest.raises(AgentLocked, match=f"pid {os.getpid()}"):
            DataDirLock(data).acquire()
        assert (data / "cllm.lock").read_text() == f"{os.getpid()}\n"
        assert holder_pid(data) == os.getpid()
    assert holder_pid(data) is None


def test_the_agent_creates_its_data_directory_private(tmp_path):
    old = os.umask(0)
    try:
        with DataDirLock(tmp_path / "data"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


def test_status_never_locks_a_free_data_directory(tmp_path, monkeypatch):
    """`cllm status` (or the server's /api/status) asking at the moment an agent starts must
    not make that agent fail with "already running": a lock file that is empty (released) or
    names a dead process is answered without taking even a shared lock."""
    import subprocess

    import agent.datadir as datadir

    data = tmp_path / "data"
    with datadir.DataDirLock(data):
        pass                                       # released: the file is empty now
    child = subprocess.Popen(["true"])
    child.wait()                                   # a pid that no longer runs
    probes = []
    real_flock = datadir.fcntl.flock
    monkeypatch.setattr(datadir.fcntl, "flock", lambda fd, op: probes.append(op) or real_flock(fd, op))
    assert datadir.holder_pid(data) is None
    (data / "cllm.lock").write_text(f"{child.pid}\n")   # left behind by a SIGKILLed agent
    assert datadir.holder_pid(data) is None
    assert probes == []
    (data / "cllm.lock").write_text("")
    with datadir.DataDirLock(data):
        assert datadir.holder_pid(data) == os.getpid()
    assert probes                                  # a live pid is still confirmed by the lock
