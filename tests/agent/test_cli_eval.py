"""`cllm eval`: bits per byte, bits per token and perplexity of the served model on files. Its
nats are checked against a numpy cross-entropy of the same model's logits and against the
trainer's own evaluation; folders are read as the crawler reads them, with what is skipped and
why; the one-line errors and --cycle."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.generation.checkpoint import load_serving_checkpoint
from store import open_store
from tests.agent.server.conftest import train_tiny, write_corpus

TEXT = "the crystal lattice hums a quiet tune; every sphere touches twelve neighbours. café\n" * 3
FIELDS = {"bytes", "tokens", "nats", "bits_per_byte", "bits_per_token", "perplexity"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A data directory with two committed cycles (tiny preset: context 16); not changed."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    write_corpus(root)
    train_tiny(root / "notes", data)
    train_tiny(root / "notes", data)
    return data


@pytest.fixture(autouse=True)
def _own_store(monkeypatch):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)


def run(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


def run_json(*args) -> dict:
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def numpy_nats(model, ids: list[int], T: int) -> tuple[float, int]:
    """The summed next-token cross-entropy of ids + [end-of-document] in consecutive windows of
    T tokens, from the model's forward logits and a float64 log-softmax in numpy."""
    nats, count = 0.0, 0
    for s in range(0, len(ids) - 1, T):
        seg = ids[s:s + T + 1]
        logits = model.logits(np.asarray([seg[:-1]]))[0].astype(np.float64)   # (t, V)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nats -= logp[np.arange(len(seg) - 1), seg[1:]].sum()
        count += len(seg) - 1
    return nats, count


def test_nats_are_the_models_cross_entropy_and_the_trainers_validation_loss(trained, tmp_path):
    from engine.data import evaluate, pack

    f = tmp_path / "lattice.txt"
    f.write_text(TEXT, encoding="utf-8")
    out = run_json(f, "--data-dir", trained)
    [row] = out["files"]
    with open_store(trained) as store:
        ckpt = load_serving_checkpoint(store, trained, None, "float32")
    ids = [int(t) for t in ckpt.tokenizer.encode(TEXT)] + [ckpt.tokenizer.eod_id]
    T = ckpt.model.config.context
    assert len(ids) > 3 * T                 # several windows, the last one partial
    nats, count = numpy_nats(ckpt.model, ids, T)
    assert row["tokens"] == count == len(ids) - 1
    assert row["nats"] == pytest.approx(nats, rel=1e-5)
    assert row["bytes"] == len(TEXT.encode("utf-8")) == len(TEXT) + 3     # é: 2 bytes
    assert row["bits_per_byte"] == pytest.approx(nats / math.log(2) / row["bytes"], rel=1e-5)
    assert row["bits_per_token"] == pytest.approx(nats / math.log(2) / count, rel=1e-5)
    assert row["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-5)
    # the number the trainer's validation reports for the same text (all windows)
    stream = pack([ckpt.tokenizer.encode(TEXT)], ckpt.tokenizer.eod_id)
    assert row["nats"] / row["tokens"] == pytest.approx(
        evaluate(ckpt.model, stream, max_windows=None), rel=1e-6)
    # the served model: the EMA weights, not the raw ones
    assert ckpt.state.ema is not None and out["checkpoint"]["ema"] is True
    raw, _ = numpy_nats(ckpt.state.model, ids, T)
    assert abs(raw - nats) > 1e-3 and row["nats"] != pytest.approx(raw, rel=1e-5)


def test_json_fields_checkpoint_and_total(trained, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text("every sphere touches twelve neighbours.\n" * 5)
    out = run_json(tmp_path / "a.txt", tmp_path / "b.txt", "--data-dir", trained)
    assert set(out) == {"checkpoint", "files", "skipped", "total"}
    ck = out["checkpoint"]
    with open_store(trained) as store:
        latest = load_serving_checkpoint(store, trained)
    assert (ck["path"], ck["sha256"], ck["cycle"], ck["step"], ck["context"]) == (
        str(latest.ref.path), latest.ref.sha256, 2, latest.step, 16)
    assert [f["path"] for f in out["files"]] == [str(tmp_path / n) for n in ("a.txt", "b.txt")]
    assert all(set(f) == FIELDS | {"path"} for f in out["files"]) and out["skipped"] == []
    total = out["total"]
    assert set(total) == FIELDS | {"files"} and total["files"] == 2
    for k in ("bytes", "tokens"):
        assert total[k] == sum(f[k] for f in out["files"])
    assert total["nats"] == pytest.approx(sum(f["nats"] for f in out["files"]))
    assert total["bits_per_byte"] == pytest.approx(total["nats"] / math.log(2) / total["bytes"])
    assert total["perplexity"] == pytest.approx(math.exp(total["nats"] / total["tokens"]))


def test_a_folder_is_read_as_the_crawler_reads_it_and_skipped_files_say_why(trained, tmp_path,
                                                                            monkeypatch):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text(TEXT)
    (docs / "sub" / "c.md").write_text("# a heading\n\nsome words\n")
    (docs / "blob.bin").write_bytes(b"\x89PNG\0\0\0\rIHDR" + bytes(range(256)))
    (docs / "empty.txt").write_text("")
    (docs / "ignored.txt").write_text("not for scoring\n")
    (docs / ".gitignore").write_text("ignored.txt\n")
    (docs / "cache.pyc").write_bytes(b"excluded by default")
    out = run_json(docs, "--data-dir", trained)
    names = {f["path"] for f in out["files"]}
    assert names == {f"{docs}/{n}" for n in ("a.txt", "sub/c.md", ".gitignore")}
    skipped = {s["path"]: s["reason"] for s in out["skipped"]}
    assert skipped == {f"{docs}/blob.bin": "binary content (NUL byte at offset 4)",
                       f"{docs}/empty.txt": "empty (no text)"}
    # each file once (a folder and a file inside it), and the same score as on its own
    alone = run_json(docs / "a.txt", docs, "--data-dir", trained)
    assert [f["path"] for f in alone["files"]].count(str(docs / "a.txt")) == 1
    assert alone["files"][0] == next(f for f in out["files"] if f["path"].endswith("a.txt"))
    monkeypatch.chdir(tmp_path)                # paths are shown as given
    table = run("docs", "--data-dir", trained)
    assert table.exit_code == 0, table.output
    assert "docs/sub/c.md" in table.stdout
    for text in ("bits_per_byte", "perplexity", "blob.bin", "binary content", "total (3 files)",
                 "cycle 2", "EMA weights"):
        assert text in table.stdout, text


def test_max_bytes_scores_the_head_of_each_file_at_a_character_boundary(trained, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("é" * 50)                     # 100 bytes of two-byte characters
    out = run_json(f, "--data-dir", trained, "--max-bytes", 7)
    head = tmp_path / "head.txt"
    head.write_text("é" * 3)
    assert out["files"][0]["bytes"] == 6
    assert out["files"][0]["nats"] == run_json(head, "--data-dir", trained)["files"][0]["nats"]
    r = run(f, "--data-dir", trained, "--max-bytes", 1)
    assert r.exit_code == 2 and "no whole character in its first 1 bytes" in r.output


def test_cycle_scores_that_cycles_checkpoint(trained, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(TEXT)
    first = run_json(f, "--data-dir", trained, "--cycle", 1)
    latest = run_json(f, "--data-dir", trained)
    assert first["checkpoint"]["cycle"] == 1 and latest["checkpoint"]["cycle"] == 2
    assert first["checkpoint"]["step"] < latest["checkpoint"]["step"]
    assert first["files"][0]["nats"] != latest["files"][0]["nats"]
    r = run(f, "--data-dir", trained, "--cycle", 9)
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "cycles with one: 1, 2" in r.output


def one_line_error(r, status: int, *texts: str) -> None:
    assert r.exit_code == status, r.output
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert "hint:" in r.output and "Traceback" not in r.output
    for text in texts:
        assert text in r.output, text


def test_usage_mistakes_are_one_line_errors(trained, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(TEXT)
    one_line_error(run(tmp_path / "missing.txt", "--data-dir", trained), 2,
                   "missing.txt does not exist")
    (tmp_path / "x.bin").write_bytes(b"\0\1\2")
    (tmp_path / "empty").mkdir()
    one_line_error(run(tmp_path / "x.bin", "--data-dir", trained), 2, "no text to score",
                   "binary content")
    one_line_error(run(tmp_path / "empty", "--data-dir", trained), 2, "no text to score",
                   "no files")
    # a store without a checkpoint (crawled, never trained)
    data = tmp_path / "crawled"
    r = CliRunner().invoke(main, ["crawl", str(f), "--data-dir", str(data)])
    assert r.exit_code == 0, r.output
    one_line_error(run(f, "--data-dir", data), 2, f"no checkpoint in {data}", "cllm train")
    # no store at all: as every reading command, a runtime failure that creates nothing
    typo = tmp_path / "typo"
    one_line_error(run(f, "--data-dir", typo), 1, "no store")
    assert not typo.exists()
