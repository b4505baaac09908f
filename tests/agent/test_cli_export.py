"""`cllm models` and `cllm export` on real data directories made by `cllm train`: the rows
name each checkpoint by its cycle, the export of a cycle is that checkpoint's serving weights
and tokenizer (read back with the gguf package's reader), and an architecture llama.cpp does
not compute is refused with a one-line error naming the option."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.training.model_state import load_recorded_model_state
from store import open_store

TEXT = "def area(r):\n    return 3.14159 * r * r\n\n\nclass Circle:\n    pass\n" * 30


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    (root / "src").mkdir()
    (root / "src" / "a.py").write_text(TEXT)
    d = root / "data"
    for _ in range(2):
        r = CliRunner().invoke(main, ["train", str(root / "src"), "--data-dir", str(d),
                                      "--preset", "tiny", "--steps", "6", "--batch-size", "4",
                                      "--workers", "1"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    return d


def test_models_lists_the_checkpoints_by_cycle(data):
    r = CliRunner().invoke(main, ["models", "--data-dir", str(data), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["cycle_id"] for row in rows] == [2, 1]
    assert rows[0]["latest"] and not rows[1]["latest"]
    assert all(row["arch"] == "gpt2" and row["exportable"] for row in rows)
    assert all(row["vocab_size"] > 260 and row["size_bytes"] > 0 for row in rows)
    assert rows[0]["val_loss"] is not None
    table = CliRunner().invoke(main, ["models", "--data-dir", str(data)])
    assert table.exit_code == 0 and "2 checkpoints" in table.output


def test_export_writes_the_cycles_serving_weights_and_tokenizer(data, tmp_path):
    out = tmp_path / "m.gguf"
    r = CliRunner().invoke(main, ["export", "--data-dir", str(data), "--checkpoint", "1",
                                  "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output[r.output.index("{"):])
    assert info["cycle"] == 1 and info["path"] == str(out) and out.stat().st_size == info["bytes"]
    with open_store(data) as store:
        state, _ = load_recorded_model_state(store, 1)
    model = state.serving_model()
    reader = gguf.GGUFReader(out)
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    got = np.asarray(emb.data).reshape(tuple(reversed(emb.shape.tolist())))
    assert np.array_equal(got, model.layout.views(model.params)["wte"])   # the EMA's rows
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == len(state.tokenizer)
    assert "<|fim_prefix|>" in tokens           # FIM training (the default) added them


def test_export_refuses_an_architecture_llama_cpp_does_not_compute(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(TEXT)
    d = tmp_path / "data"
    r = CliRunner().invoke(main, ["train", str(tmp_path / "src"), "--data-dir", str(d),
                                  "--preset", "tiny", "--steps", "3", "--batch-size", "4",
                                  "--workers", "1", "--arch", "mlp=relu2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = json.loads(CliRunner().invoke(main, ["models", "--data-dir", str(d), "--json"]).output)
    assert rows[0]["arch"] == "mlp=relu2" and not rows[0]["exportable"]
    r = CliRunner().invoke(main, ["export", "--data-dir", str(d), "-o", str(tmp_path / "x.gguf")])
    assert r.exit_code == 1
    assert "mlp=relu2" in r.output and "cannot be exported" in r.output
    assert not (tmp_path / "x.gguf").exists()
    r = CliRunner().invoke(main, ["export", "--data-dir", str(d), "--checkpoint", "9"])
    assert r.exit_code == 2 and "cycle 9 has no checkpoint" in r.output


def test_generate_fills_in_the_middle_with_suffix(data):
    from agent.generation.checkpoint import load_serving_checkpoint
    from agent.generation.stream import Sampling, TextStream

    r = CliRunner().invoke(main, ["generate", "def area(r):\n    return ", "--suffix",
                                  " * r\n", "--data-dir", str(data), "--temperature", "0",
                                  "--max-tokens", "6", "--decode-weights", "float32", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    with open_store(data) as store:
        ckpt = load_serving_checkpoint(store, data, weights="float32")
    want = TextStream(ckpt, "def area(r):\n    return ", Sampling(max_tokens=6, temperature=0,
                                                                  top_k=40), suffix=" * r\n")
    assert out["suffix"] == " * r\n" and out["text"] == want.run()
    assert out["usage"]["prompt_tokens"] == want.prompt_tokens
