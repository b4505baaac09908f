"""Every reader of a checkpoint goes through the store's record and its SHA-256: a file
edited in place or an older file copied over the latest is refused by `cllm generate` and
`cllm neighbours` exactly as the agent refuses it (issue 14, item 3)."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.training.model_state import (load_recorded_model_state, new_model_state,
                               recorded_checkpoints, save_model_state)
from engine.errors import ConfigError
from store import open_store
from store.checkpoints import record_checkpoint
from store.cycles import start_cycle


def _two_recorded_checkpoints(store, data_dir):
    """Two checkpoints of different models, recorded as the agent records them."""
    paths = []
    for cycle, seed in ((1, 0), (2, 1)):
        state = new_model_state("tiny", seed=seed)
        path, sha = save_model_state(state, data_dir, cycle)
        with store.session() as s:
            record_checkpoint(s, path=str(path), sha256=sha, step=cycle,
                              vocab_size=len(state.tokenizer))
        paths.append(path)
    return paths


def test_readers_refuse_a_latest_file_that_is_not_the_committed_one(store, tmp_path):
    first, latest = _two_recorded_checkpoints(store, tmp_path)
    rows = recorded_checkpoints(store)
    assert [r.path for r in rows] == [latest, first] and rows[0].is_latest
    state, row = load_recorded_model_state(store)
    assert row.path == latest and state.path == latest

    # an older (valid, self-consistent) file copied over the latest loads on its own,
    # but it is not the file the store committed
    shutil.copyfile(first, latest)
    state, row = load_recorded_model_state(store)
    assert row.path == first and state.cycle == 1

    # a digit of the header changed in place: refused as well
    shutil.copyfile(first, latest)
    blob = bytearray(first.read_bytes())
    i = blob.index(b'"step":') + len(b'"step":')
    blob[i:i + 1] = b"7" if blob[i:i + 1] != b"7" else b"8"
    first.write_bytes(bytes(blob))
    assert load_recorded_model_state(store) == (None, None)


def test_a_cycle_without_a_checkpoint_is_named_with_those_that_have_one(store, tmp_path):
    state = new_model_state("tiny")
    with store.session() as s:
        kept, bare = start_cycle(s, trigger="tokens").id, start_cycle(s, trigger="tokens").id
    path, sha = save_model_state(state, tmp_path, kept)
    with store.session() as s:
        record_checkpoint(s, path=str(path), sha256=sha, step=1, cycle_id=kept,
                          vocab_size=len(state.tokenizer))
    assert load_recorded_model_state(store, kept)[1].cycle_id == kept
    with pytest.raises(ConfigError) as e:
        load_recorded_model_state(store, bare)
    assert e.value.one_line().startswith(f"cycle {bare} has no checkpoint")
    assert f"cycles with one: {kept}" in e.value.one_line()


def test_generate_uses_the_checkpoint_the_agent_would_use(tmp_path, caplog):
    data_dir = tmp_path / "data"
    store = open_store(data_dir)
    first, latest = _two_recorded_checkpoints(store, data_dir)
    store.close()
    shutil.copyfile(first, latest)        # the agent would refuse this file
    r = CliRunner().invoke(main, ["generate", "--data-dir", str(data_dir), "--prompt", "a",
                                  "--max-tokens", "3", "--seed", "0"])
    assert r.exit_code == 0, r.output
    assert f"refusing checkpoint {latest}" in caplog.text
    first.unlink()                        # nothing the store recorded loads any more
    r = CliRunner().invoke(main, ["generate", "--data-dir", str(data_dir), "--prompt", "a"])
    assert r.exit_code != 0 and "no recorded checkpoint" in r.output


def test_generate_on_a_directory_without_a_store_creates_nothing(tmp_path):
    r = CliRunner().invoke(main, ["generate", "--data-dir", str(tmp_path / "typo")])
    assert r.exit_code != 0 and "no store" in r.output
    assert not (tmp_path / "typo").exists()
