"""`cllm train` then `cllm generate` end to end: a second run resumes, generation streams
from the latest checkpoint in a real subprocess."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from agent.cli import main

pytestmark = pytest.mark.slow


def test_train_then_generate_end_to_end(tmp_path):
    corpus = tmp_path / "corpus" / "notes"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text("the crystal lattice hums a quiet tune. " * 40)
    (corpus / "b.txt").write_text("every sphere touches twelve neighbours. " * 40)
    data = tmp_path / "data"
    args = ["train", str(tmp_path / "corpus"), "--data-dir", str(data), "--preset", "tiny",
            "--steps", "30", "--batch-size", "4", "--workers", "2", "--vocab-growth", "40",
            "--lr", "3e-3", "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["steps"] == 30 and out["loss_end"] < out["loss_start"]
    # one source, the folder as given (as `cllm crawl` and the agent name it)
    assert out["new_tokens"] > 0 and set(out["val_loss"]) == {str(tmp_path / "corpus")}
    ckpt = data / "checkpoints" / "ckpt-000001.safetensors"
    assert out["checkpoint_path"] == str(ckpt) and ckpt.exists()
    # a second run resumes from the checkpoint and writes the next one
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert json.loads(r.output[r.output.index("{"):])["checkpoint_path"].endswith("000002.safetensors")
    # generation streams text from the latest checkpoint, in a real subprocess
    p = subprocess.run([sys.executable, "-m", "agent", "generate", "--data-dir", str(data),
                        "--prompt", "every sphere", "--max-tokens", "20", "--seed", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("every sphere") and len(p.stdout) > len("every sphere")


def test_the_recipes_options_train_resume_and_generate(tmp_path):
    """`--arch` and `--optimizer muon` make a new data directory's model; its checkpoints
    record both, a second run resumes them (a different --arch is ignored, with a warning),
    and generation decodes the model they describe."""
    from engine import load_checkpoint

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the crystal lattice hums a quiet tune. " * 40)
    data = tmp_path / "data"
    args = ["train", str(corpus), "--data-dir", str(data), "--preset", "tiny", "--steps", "20",
            "--batch-size", "4", "--workers", "2", "--vocab-growth", "30", "--json"]
    arch = "mlp=relu2,qk_norm,pos=rope,tie_head=false,zero_proj"
    r = CliRunner().invoke(main, args + ["--arch", arch, "--optimizer", "muon"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["loss_end"] < out["loss_start"]
    ck = load_checkpoint(data / "checkpoints" / "ckpt-000001.safetensors")
    cfg = ck.model.config
    assert (cfg.mlp, cfg.qk_norm, cfg.pos, cfg.tie_head) == ("relu2", True, "rope", False)
    assert ck.train_config.optimizer == "muon" and "head" in ck.model.param_names()
    r = CliRunner().invoke(main, args + ["--arch", "softcap=5"], catch_exceptions=False)
    assert r.exit_code == 0 and "--arch softcap=5 (from --arch) is ignored" in r.output
    ck2 = load_checkpoint(data / "checkpoints" / "ckpt-000002.safetensors")
    assert ck2.model.config == cfg.replace(vocab_size=ck2.model.config.vocab_size)
    assert ck2.train_config.optimizer == "muon"            # kept: --optimizer not given
    p = subprocess.run([sys.executable, "-m", "agent", "generate", "--data-dir", str(data),
                        "--prompt", "the crystal", "--max-tokens", "12", "--seed", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("the crystal") and len(p.stdout) > len("the crystal")
