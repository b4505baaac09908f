"""The `cllm` command line: help everywhere, one-line errors, train -> generate end to end."""
import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from agent.cli import main


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
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "hint:" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["train", str(tmp_path / "missing"), "--data-dir",
                                  str(tmp_path)])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_train_then_generate_end_to_end(tmp_path):
    corpus = tmp_path / "corpus" / "notes"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text("the crystal lattice hums a quiet tune. " * 40)
    (corpus / "b.txt").write_text("every sphere touches twelve neighbours. " * 40)
    data = tmp_path / "data"
    args = ["train", str(tmp_path / "corpus"), "--data-dir", str(data), "--preset", "tiny",
            "--steps", "30", "--batch-size", "4", "--workers", "2", "--max-new-tokens", "40",
            "--lr", "3e-3", "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["steps"] == 30 and out["loss_end"] < out["loss_start"]
    assert out["new_tokens"] > 0 and set(out["val_loss"]) == {"notes"}
    ckpt = data / "checkpoints" / "ckpt-000001.safetensors"
    assert out["checkpoint_path"] == str(ckpt) and ckpt.exists()
    # a second run resumes from the checkpoint and writes the next one
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert json.loads(r.output[r.output.index("{"):])["checkpoint_path"].endswith("000002.safetensors")
    # generation streams text from the latest checkpoint, in a real subprocess
    p = subprocess.run([sys.executable, "-m", "agent", "generate", "--data-dir", str(data),
                        "--prompt", "every sphere", "--max-new-tokens", "20", "--seed", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("every sphere") and len(p.stdout) > len("every sphere")
