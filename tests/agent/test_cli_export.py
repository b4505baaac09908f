"""`cllm models` and `cllm export` on real data directories made by `cllm train`: the rows
name each checkpoint by its cycle, the export of a cycle is that checkpoint's serving weights
and tokenizer (read back with the gguf package's reader, or with safetensors and tokenizers
for --format hf; slow: run in transformers), and an architecture GPT-2 does not compute is
refused with a one-line error naming the option."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.settings import DEFAULT_ARCH
from engine.config import ModelConfig, arch_text, parse_arch
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
    # the default architecture of a new data directory, which llama.cpp runs as nemotron
    assert all(row["arch"] == arch_text(ModelConfig(**parse_arch(DEFAULT_ARCH)))
               and row["exportable"] == "nemotron" for row in rows)
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


def test_export_hf_writes_the_cycles_serving_weights_and_tokenizer(data, tmp_path,
                                                                   monkeypatch):
    from safetensors.numpy import load_file
    import tokenizers      # the test extra has it (through transformers)

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["export", "--data-dir", str(data), "--format", "hf",
                                  "--checkpoint", "2", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output[r.output.index("{"):])
    out = tmp_path / "data-cycle-2-f32-hf"                      # the default folder
    assert info["cycle"] == 2 and info["format"] == "hf" and info["path"] == out.name
    with open_store(data) as store:
        state, _ = load_recorded_model_state(store, 2)
    model, tok = state.serving_model(), state.tokenizer
    got = load_file(out / "model.safetensors")
    assert np.array_equal(got["model.embed_tokens.weight"],      # the default: Nemotron
                          model.layout.views(model.params)["wte"])
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tok)
    hf_tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert hf_tok.encode(TEXT).ids == tok.encode(TEXT).tolist()
    assert hf_tok.token_to_id("<|fim_prefix|>") == tok.special_id("<|fim_prefix|>")
    r = CliRunner().invoke(main, ["export", "--data-dir", str(data), "--format", "hf",
                                  "--checkpoint", "1", "--dtype", "f16", "-o", str(out)])
    assert r.exit_code == 0, r.output                        # an earlier export is replaced
    assert load_file(out / "model.safetensors")["model.embed_tokens.weight"].dtype == np.float16


def test_export_hf_user_mistakes_are_one_line_errors(data, tmp_path):
    args = ["export", "--data-dir", str(data)]
    r = CliRunner().invoke(main, args + ["--format", "hf", "--dtype", "q8_0",
                                         "-o", str(tmp_path / "q")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "q8_0" in r.output
    assert "hint:" in r.output and not (tmp_path / "q").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(main, args + ["--format", "hf", "-o", str(tmp_path / "mine")])
    assert r.exit_code == 1 and "not an earlier export" in r.output
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    r = CliRunner().invoke(main, args + ["-o", str(tmp_path / "mine")])
    assert r.exit_code == 2 and "--format hf" in r.output     # a GGUF is a file


@pytest.mark.slow
def test_transformers_runs_the_exported_checkpoint_as_we_do(data, tmp_path):
    """The trained checkpoint (EMA weights, FIM tokens) through the CLI into transformers:
    logits on our ids within 1e-5 of the largest of ours (as in test_hf_export.py)."""
    torch = pytest.importorskip("torch", reason="installed by hand (the CPU wheel), as for the benchmarks")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = CliRunner().invoke(main, ["export", "--data-dir", str(data), "--format", "hf",
                                  "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    with open_store(data) as store:
        state, _ = load_recorded_model_state(store, None)
    model, tok = state.serving_model(), state.tokenizer
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    ids = hf_tok(TEXT[:300])["input_ids"][:model.config.context]
    assert ids == tok.encode(TEXT[:300]).tolist()[:model.config.context]
    ours = model.logits(np.asarray([ids]))[0]
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(theirs - ours).max() < 1e-5 * np.abs(ours).max()


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
    r = CliRunner().invoke(main, ["export", "--data-dir", str(d), "--format", "hf",
                                  "-o", str(tmp_path / "x-hf")])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "mlp=relu2" in r.output and "GPT2LMHeadModel" in r.output
    assert not (tmp_path / "x-hf").exists()
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
