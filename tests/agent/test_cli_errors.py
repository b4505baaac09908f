"""A user's situation is one line with a hint, never a traceback: a data directory that
cannot be written, a plot that cannot be written, an optional dependency not installed,
Ctrl-C during start-up."""
from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner

from agent.cli import main


def one_line(r, status: int) -> None:
    assert r.exit_code == status, r.output
    assert r.output.startswith("Error: ") or r.output.startswith("interrupted"), r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output, r.output


@pytest.fixture
def store_dir(tmp_path):
    """A data directory with a store (one crawled document) and nothing trained."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("some words\n")
    data = tmp_path / "data"
    r = CliRunner().invoke(main, ["crawl", str(src), "--data-dir", str(data)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return data


@pytest.mark.parametrize("args", [["agent", "--watch", "."], ["train", "."], ["crawl", "."],
                                  ["db", "upgrade"]], ids=" ".join)
def test_a_data_directory_that_cannot_be_created_is_one_line(args):
    r = CliRunner().invoke(main, [*args, "--data-dir", "/sys/cllm-data"])  # refused even to root
    one_line(r, 1)
    assert "/sys/cllm-data" in r.output and "hint:" in r.output


def test_a_read_only_data_directory_is_one_line(store_dir):
    os.chmod(store_dir, 0o500)
    try:
        if os.access(store_dir, os.W_OK):     # root ignores the mode: /sys stands in above
            return
        for args in (["train", str(store_dir), "--steps", "1"], ["crawl", str(store_dir)]):
            r = CliRunner().invoke(main, [*args, "--data-dir", str(store_dir)])
            one_line(r, 1)
    finally:
        os.chmod(store_dir, 0o700)


@pytest.mark.parametrize("view", ["cycles", "vocab", "forgetting"])
def test_a_plot_that_cannot_be_written_is_one_line_before_any_work(store_dir, tmp_path, view):
    base = ["history", view, "--data-dir", str(store_dir), "--plot"]
    r = CliRunner().invoke(main, base + [str(tmp_path / "loss.docx")])
    one_line(r, 2)
    assert "cannot write .docx" in r.output and ".png" in r.output and ".svg" in r.output
    r = CliRunner().invoke(main, base + [str(tmp_path / "no" / "such" / "loss.png")])
    one_line(r, 2)
    assert "does not exist" in r.output and "create it first" in r.output
    r = CliRunner().invoke(main, base + ["/sys/loss.png"])   # a folder nobody writes in
    one_line(r, 2)
    assert "/sys/loss.png" in r.output and "hint:" in r.output
    r = CliRunner().invoke(main, base + [str(tmp_path / "loss.svg")], catch_exceptions=False)
    assert r.exit_code == 0 and (tmp_path / "loss.svg").read_text().lstrip().startswith("<?xml")


def test_plot_without_matplotlib_says_which_extra_to_install(store_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)    # import matplotlib fails
    r = CliRunner().invoke(main, ["history", "cycles", "--data-dir", str(store_dir), "--plot",
                                  str(tmp_path / "loss.png")])
    one_line(r, 1)
    assert "needs matplotlib" in r.output and "pip install 'crystalline-cllm[plot]'" in r.output
    r = CliRunner().invoke(main, ["history", "cycles", "--data-dir", str(store_dir)])
    assert r.exit_code == 0, r.output      # without --plot nothing needs it


def test_a_postgresql_url_without_its_driver_says_which_extra_to_install(tmp_path, monkeypatch):
    for name in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, name, None)
    for url in ("postgresql+psycopg://me@localhost/cllm", "postgresql://me@localhost/cllm"):
        r = CliRunner().invoke(main, ["db", "upgrade", "--database-url", url])
        one_line(r, 1)
        assert "PostgreSQL driver" in r.output and "crystalline-cllm[postgres]" in r.output


def test_ctrl_c_during_start_up_is_one_line(tmp_path, monkeypatch):
    from agent import datadir

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datadir.DataDirLock, "acquire", interrupted)
    r = CliRunner().invoke(main, ["agent", "--data-dir", str(tmp_path), "--watch", str(tmp_path)])
    one_line(r, 130)
    assert "interrupted" in r.output


def test_plots_have_whole_cycle_ticks_and_short_source_names():
    import matplotlib.pyplot as plt

    from agent.cli.history import figure, short_names

    names = short_names(["/home/me/corpus/statements", "/home/me/corpus/datamodel",
                         "https://docs.python.org"])
    assert names == {"/home/me/corpus/statements": "statements",
                     "/home/me/corpus/datamodel": "datamodel",
                     "https://docs.python.org": "https://docs.python.org"}
    assert set(short_names(["/a/x/src", "/b/x/src"]).values()) == {"a/x/src", "b/x/src"}
    fig = figure({names["/home/me/corpus/statements"]: ([1, 2, 3], [3.0, 2.5, 2.4])},
                 "cycle", "loss", "t")
    try:
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["statements"]
    finally:
        plt.close(fig)
