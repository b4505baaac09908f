"""The quick start from a wheel, as a user installing from a package index gets it: the
wheel built from this tree, installed into a fresh virtual environment, run from a folder
outside the checkout with no PYTHONPATH. Regression: the wheel had no sample corpus, so
`cllm agent` on embedded defaults sat idle and `cllm train` failed.

The venv sees the system's site-packages (numpy, numba, ... are not downloaded again); the
package itself comes from the wheel, which the test checks.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("agent", "engine", "store", "pyproject.toml", "README.md", "LICENSE")


def run(cmd, cwd, env, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"            # a copy, so the build leaves no build/ or egg-info here
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for name in SHIPPED:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(
            ROOT / name, src / name, **({"ignore": ignore} if (ROOT / name).is_dir() else {}))
    # (module scope: set up before the autouse fixture that hides the real home, so do it here)
    home = tmp / "home"
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("CLLM_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"),
               XDG_CONFIG_HOME=str(home / ".config"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    # with build isolation, as a user's pip builds it: pip fetches what [build-system] asks
    # for (setuptools>=68, wheel) from the registry. The interpreter's own setuptools may be
    # older and come without `wheel` (a fresh Python 3.11 has setuptools 65.5 and no wheel,
    # which cannot build this project), so nothing installed by hand is used.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", tmp / "dist", src], tmp, env)
    wheel = next((tmp / "dist").glob("crystalline_cllm-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp, env)
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp, env)
    cwd = tmp / "run"
    cwd.mkdir()
    return wheel, venv, cwd, env


def test_the_wheel_holds_the_corpus_with_its_notice_and_the_licence(wheel_venv):
    wheel = wheel_venv[0]
    names = zipfile.ZipFile(wheel).namelist()
    corpus = [n for n in names if n.startswith("agent/sample_corpus/")]
    n_files = len(list((ROOT / "agent" / "sample_corpus").rglob("*.txt")))
    assert len([n for n in corpus if n.endswith(".txt")]) == n_files
    assert "agent/sample_corpus/NOTICE" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names), names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_the_quick_start_runs_from_the_wheel(wheel_venv):
    wheel, venv, cwd, env = wheel_venv
    cllm = venv / "bin" / "cllm"
    version = run([cllm, "--version"], cwd, env).stdout.strip()
    assert version.startswith("cllm ") and version.split()[1] in wheel.name
    where = run([venv / "bin" / "python", "-c",
                 "import agent, agent.inputs.corpus as c; print(agent.__file__); print(c.SAMPLE_CORPUS)"],
                cwd, env).stdout.split()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), where
    # cllm train on the embedded corpus (a few steps), in the user data directory
    out = json.loads(run([cllm, "train", "--preset", "tiny", "--steps", "2", "--batch-size", "2",
                          "--workers", "1", "--vocab-growth", "10", "--json"], cwd, env).stdout)
    assert out["documents"] == len(list((ROOT / "agent" / "sample_corpus").rglob("*.txt")))
    data = Path(env["XDG_DATA_HOME"]) / "cllm"
    assert Path(out["checkpoint_path"]).resolve().is_relative_to(data.resolve())
    # the agent on embedded defaults learns the corpus: one cycle, then it stops by itself
    r = run([cllm, "agent", "--data-dir", cwd / "agent-data", "--preset", "tiny", "--workers",
             "1", "--max-steps", "3", "--max-cycles", "1"], cwd, env)
    assert "learning the sample corpus in" in r.stderr and str(venv) in r.stderr, r.stderr
    assert "documents to learn" in r.stderr and "agent stopped after 1 cycles" in r.stderr
