"""The `cllm` command line: help everywhere, one-line errors, train -> generate end to end."""
import json

import click
import pytest
from click.testing import CliRunner

from agent.cli import main
from engine.config import arch_text, parse_arch, preset


def all_commands(group=main, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    r = CliRunner().invoke(main, [*path, "-h"], catch_exceptions=False)
    assert r.exit_code == 0
    assert "Usage:" in r.output
    cmd = dict(all_commands())[path]
    if not isinstance(cmd, click.Group):
        assert "Example" in (cmd.help or ""), f"{' '.join(path)} has no example in its help"


def test_user_mistakes_are_one_line_errors_with_a_hint(tmp_path):
    r = CliRunner().invoke(main, ["generate", "--data-dir", str(tmp_path / "none")])
    assert r.exit_code == 1          # a runtime failure: nothing to generate from
    assert r.output.count("\n") == 1 and "hint:" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["train", str(tmp_path / "missing"), "--data-dir",
                                  str(tmp_path)])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_bench_reports_every_worker_count_with_scaling_cpu_and_topology():
    r = CliRunner().invoke(main, ["bench", "--preset", "tiny", "--workers", "1,2,3", "--rounds",
                                  "1", "--steps", "1", "--no-torch", "--topology", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    rows = res["rows"]
    assert [row["workers"] for row in rows] == [1, 2, 3]
    assert rows[0]["scaling"] == 1.0 and all(row["tok_s"] > 0 for row in rows)
    assert all(0.0 < row["cpu_util"] <= 1.0 + 1e-6 for row in rows)
    assert all("ratio" not in row for row in rows)          # --no-torch: no peer columns
    from engine.cpu import describe
    assert res["cpu"] == describe().line()                   # which CPU the figures are of
    from agent.settings import DEFAULT_ARCH                   # the model a new data dir gets
    assert res["arch"] == arch_text(preset("tiny").replace(**parse_arch(DEFAULT_ARCH)))
    spheres = res["topology"]["children"]
    # three spheres, each ran a micro-batch in the warm-up step and in the measured one
    assert len(spheres) == 3 and [s["batches"] for s in spheres] == [2, 2, 2]
    assert sum(s["tokens"] for s in spheres) == 2 * res["batch"] * res["context"]
    from agent.settings import TrainerSettings               # and the recipe it trains with
    st = TrainerSettings()
    assert (res["batch"], res["optimizer"]) == (st.batch_size, st.train_config(1).optimizer)
    adamw = CliRunner().invoke(main, ["bench", "--preset", "tiny", "--workers", "2", "--rounds",
                                      "1", "--steps", "1", "--no-torch", "--optimizer", "adamw",
                                      "--batch-size", "4", "--json"], catch_exceptions=False)
    adamw = json.loads(adamw.output)
    assert (adamw["optimizer"], adamw["batch"]) == ("adamw", 4)
    bad = CliRunner().invoke(main, ["bench", "--workers", "1,x"])
    assert bad.exit_code == 2 and "hint:" in bad.output
    gpt2 = CliRunner().invoke(main, ["bench", "--preset", "tiny", "--workers", "1", "--rounds",
                                     "1", "--steps", "1", "--no-torch", "--arch", "gpt2",
                                     "--json"], catch_exceptions=False)
    assert json.loads(gpt2.output)["arch"] == "gpt2"
    bad = CliRunner().invoke(main, ["bench", "--arch", "mlp=swish"])
    assert bad.exit_code == 2 and "hint:" in bad.output and "mlp" in bad.output


@pytest.mark.slow   # importing PyTorch takes seconds
def test_bench_compares_with_pytorch_when_it_is_installed():
    pytest.importorskip("torch")
    r = CliRunner().invoke(main, ["bench", "--preset", "tiny", "--workers", "1", "--rounds",
                                  "1", "--steps", "1", "--json"], catch_exceptions=False)
    res = json.loads(r.output)
    row = res["rows"][0]
    assert res["optimizer"] == "muon"            # PyTorch's step runs Muon too (torch_peer)
    assert row["torch_tok_s"] > 0 and row["ratio"] == pytest.approx(row["tok_s"] / row["torch_tok_s"])


def test_neighbours_lists_twelve_tokens_ranked_by_crystalline_similarity():
    from engine.prime_math import crystalline_similarity

    r = CliRunner().invoke(main, ["neighbours", "100", "--vocab-size", "500", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    nb = d["neighbours"]
    assert len(nb) == 12 and all(n["token"] != 100 for n in nb)
    sims = [n["similarity"] for n in nb]
    assert sims == sorted(sims, reverse=True)
    assert sims[0] == pytest.approx(float(crystalline_similarity(100, nb[0]["token"])), rel=1e-6)
    assert sum(n["prior"] for n in nb) == pytest.approx(1.0, abs=1e-5)
    assert d["symmetry_group"] == 100 % 12
    text = CliRunner().invoke(main, ["neighbours", "100", "--vocab-size", "500"]).output
    assert "symmetry group 4" in text and len(text.strip().splitlines()) == 2 + 12
    bad = CliRunner().invoke(main, ["neighbours", "900", "--vocab-size", "500"])
    assert bad.exit_code == 2 and "outside the vocabulary" in bad.output


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "at least one worker"),
    (["--replay-fraction", "1.5"], "outside [0, 1)"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--max-wait", "-1"], "--max-wait must be >= 0"),
    (["--crystalline-weight", "-0.5"], "is negative"),
    (["--watch", "/nonexistent/folder"], "cannot watch"),
    (["--crawl", "ftp://example.org/"], "http(s) URL"),
    (["--quiet-period", "-1"], "quiet period -1.0 is negative"),
    (["--max-pages", "0"], "--max-pages must be >= 1"),
    (["--max-links", "0"], "--max-links must be >= 1"),
])
def test_agent_setting_mistakes_are_one_line_errors_and_touch_nothing(tmp_path, args, message):
    data = tmp_path / "data"
    r = CliRunner().invoke(main, ["agent", "--data-dir", str(data), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "hint:" in r.output and "Traceback" not in r.output
    assert not (data / "cllm.sqlite3").exists() and not (data / "cllm.lock").exists()


def test_agent_settings_from_the_environment_are_validated_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CLLM_PRESET", "huge")
    r = CliRunner().invoke(main, ["agent", "--data-dir", str(tmp_path / "data")])
    assert r.exit_code == 2 and "preset 'huge'" in r.output and "hint:" in r.output


def test_exit_statuses_tell_usage_runtime_and_locked_apart(tmp_path):
    """0 success, 1 a runtime failure, 2 a usage error (click's and bad settings), 3 another
    agent holds the data directory."""
    from agent.datadir import DataDirLock

    data = tmp_path / "data"
    assert CliRunner().invoke(main, ["status", "--data-dir", str(data)]).exit_code == 1
    assert CliRunner().invoke(main, ["agent", "--no-such-flag"]).exit_code == 2
    r = CliRunner().invoke(main, ["agent", "--data-dir", str(data), "--batch-size", "0"])
    assert r.exit_code == 2 and "hint:" in r.output
    with DataDirLock(data):
        r = CliRunner().invoke(main, ["train", "--data-dir", str(data), "--preset", "tiny",
                                      "--steps", "1"])
    assert r.exit_code == 3 and "already running" in r.output and "hint:" in r.output


@pytest.mark.parametrize("view", ["documents", "urls"])
def test_history_status_filters_refuse_unknown_statuses_like_any_bad_choice(tmp_path, view):
    r = CliRunner().invoke(main, ["history", view, "--data-dir", str(tmp_path), "--status", "bogus"])
    assert r.exit_code == 2 and "'bogus' is not one of" in r.output


def test_version_and_verbosity_options_work_before_and_after_the_subcommand(tmp_path):
    import logging
    from importlib.metadata import version

    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output == f"cllm {version('crystalline-cllm')}\n"
    names = ("", "agent", "engine", "store", "engine.warmup")
    before = {n: logging.getLogger(n).level for n in names}
    ours, other = logging.getLogger("agent"), logging.getLogger("matplotlib.font_manager")
    try:
        for args, level in ((["-q", "neighbours", "1", "--vocab-size", "50"], logging.ERROR),
                            (["neighbours", "1", "--vocab-size", "50", "-q"], logging.ERROR),
                            (["neighbours", "1", "--vocab-size", "50", "-vv"], logging.DEBUG),
                            (["-v", "neighbours", "1", "--vocab-size", "50"], logging.INFO),
                            (["neighbours", "1", "--vocab-size", "50"], logging.WARNING)):
            r = CliRunner().invoke(main, args, catch_exceptions=False)
            assert r.exit_code == 0 and ours.getEffectiveLevel() == level, (args, r.output)
            assert other.getEffectiveLevel() == logging.WARNING     # -vv: ours only
    finally:
        for n, lvl in before.items():
            logging.getLogger(n).setLevel(lvl)


@pytest.mark.parametrize("args", [
    ["db", "current"], ["status"], ["history", "cycles"], ["history", "documents"],
    ["history", "urls"], ["history", "vocab"], ["history", "checkpoints"],
    ["history", "forgetting"], ["generate", "--prompt", "x"], ["neighbours", "3"]],
    ids=" ".join)
def test_reading_commands_never_create_a_store_or_a_data_directory(tmp_path, args):
    """Regression: `cllm db current --data-dir brand-new-typo` created an empty store and
    exited 0."""
    typo = tmp_path / "brand-new-typo"
    r = CliRunner().invoke(main, [*args, "--data-dir", str(typo)])
    assert not typo.exists(), r.output
    if args[0] != "neighbours":          # (neighbours needs no model: the default vocabulary)
        assert r.exit_code == 1 and r.output.startswith("Error: ") and "hint:" in r.output
    r = CliRunner().invoke(main, [*args, "--database-url", f"sqlite:///{typo}.sqlite3"])
    assert not typo.with_suffix(".sqlite3").exists(), r.output


def test_train_reads_the_files_crawl_accepts_under_the_same_source_names(tmp_path):
    """`cllm train DIR` and `cllm crawl DIR` (and so the agent's --crawl DIR): the same files
    (README, .org, .log included; ignored, binary and empty ones out) and the same sources."""
    from agent.inputs.corpus import read_docs
    from store import open_store
    from store.documents import list_documents

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for name, body in (("README", "readme words\n"), ("notes.org", "* an org heading\n"),
                       ("run.log", "a log line\n"), ("sub/a.md", "deeper text\n"),
                       ("Makefile", "all:\n\ttrue\n"), ("skipped.txt", "ignored\n"),
                       (".gitignore", "skipped.txt\n"), ("empty.txt", "  \n")):
        (tree / name).write_text(body)
    (tree / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    single = tmp_path / "one.txt"
    single.write_text("a single file\n")
    data = tmp_path / "data"
    for target in (str(tree), str(tree) + "/", str(single)):
        r = CliRunner().invoke(main, ["crawl", target, "--data-dir", str(data)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
    with open_store(data) as st, st.session(read_only=True) as s:
        stored = {(d.uri, d.source) for d in list_documents(s) if d.status == "pending"}
    read = {(d.uri, d.source) for target in (str(tree), str(single))
            for d in read_docs([target])}
    assert read == stored
    names = {u.rsplit("/", 1)[1] for u, _ in read}
    assert names == {"README", "notes.org", "run.log", "a.md", "Makefile", ".gitignore",
                     "one.txt"}


def test_neighbours_show_each_tokens_text_in_the_data_directorys_vocabulary(tmp_path):
    from agent.training.model_state import load_recorded_model_state
    from store import open_store

    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("dd dd dd words words words\n" * 20)
    data = tmp_path / "data"
    r = CliRunner().invoke(main, ["train", str(text), "--data-dir", str(data), "--preset", "tiny",
                                  "--steps", "1", "--batch-size", "2", "--workers", "1"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with open_store(data) as st:
        tok = load_recorded_model_state(st)[0].tokenizer
    r = CliRunner().invoke(main, ["neighbours", "100", "--data-dir", str(data), "--json"],
                           catch_exceptions=False)
    d = json.loads(r.output)
    assert d["text"] == tok.token_bytes(100).decode() == "d"
    assert all(n["text"] == tok.token_bytes(n["token"]).decode("utf-8", "backslashreplace")
               for n in d["neighbours"])
    table = CliRunner().invoke(main, ["neighbours", "100", "--data-dir", str(data)]).output
    from agent.cli.common import table_cell

    first = table.splitlines()[2].split()   # whitespace shown as a visible mark, escapes as such
    assert first[-1] == table_cell("token", tok.token_bytes(int(first[0])).decode(
        "utf-8", "backslashreplace"))
    assert table.startswith("token 100 'd': ")


def test_status_help_describes_what_it_prints():
    text = CliRunner().invoke(main, ["status", "-h"]).output
    for line in ("data directory", "agent ", "cycle ", "backlog", "pending", "last checkpoint",
                 "--json"):
        assert line in text, line


def test_every_json_output_is_indented_alike(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("words\n")
    data = ["--data-dir", str(tmp_path / "data")]
    outputs = []
    for args in (["crawl", str(src)], ["status"], ["db", "current"], ["history", "documents"],
                 ["neighbours", "5", "--vocab-size", "50"]):
        r = CliRunner().invoke(main, [*args, *data, "--json"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
    for out in outputs:
        assert out == json.dumps(json.loads(out), indent=2) + "\n", out[:200]
