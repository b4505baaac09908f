"""Checkpoints: bit-exact round trip; truncated, corrupted and mismatched files refused."""
import hashlib
import os

import numpy as np
import pytest

import engine
from engine import CheckpointError, Model, Optimizer, TrainConfig, load_checkpoint, save_checkpoint


@pytest.fixture
def trained(tmp_path):
    m = Model(engine.tiny, seed=0)
    tcfg = TrainConfig(lr=1e-3)
    opt = Optimizer(m.layout, tcfg)
    rng = np.random.default_rng(0)
    for _ in range(2):
        _, g = m.loss_and_grad(rng.integers(0, 320, (2, 8)), rng.integers(0, 320, (2, 8)))
        opt.step(m.params, g, 1e-3)
    path = tmp_path / "ckpt" / "model.safetensors"
    sha = save_checkpoint(path, m, opt, tcfg, step=7, cycle=3, tokenizer_sha256="ab" * 32,
                          extra={"note": "x"})
    return m, opt, tcfg, path, sha


def test_round_trip_is_bit_exact(trained):
    m, opt, tcfg, path, sha = trained
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    ck = load_checkpoint(path, expected_tokenizer_sha256="ab" * 32, expected_sha256=sha)
    assert ck.model.config == m.config and ck.train_config == tcfg
    assert ck.model.params.tobytes() == m.params.tobytes()
    assert ck.optimizer.m.tobytes() == opt.m.tobytes()
    assert ck.optimizer.v.tobytes() == opt.v.tobytes()
    assert ck.optimizer.t == opt.t == 2
    assert (ck.step, ck.cycle, ck.extra) == (7, 3, {"note": "x"})
    # no temp files left behind, and the file is not a pickle
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert not path.read_bytes().startswith(b"\x80")


def test_truncated_file_is_refused(trained):
    _, _, _, path, _ = trained
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=str(path.name)):
            load_checkpoint(path)


def test_corrupted_payload_is_refused(trained):
    _, _, _, path, _ = trained
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x40           # a bit flip inside tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_mismatches_are_refused(trained, tmp_path):
    _, _, _, path, sha = trained
    with pytest.raises(CheckpointError, match="another tokenizer"):
        load_checkpoint(path, expected_tokenizer_sha256="cd" * 32)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path, expected_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(junk)


def test_error_message_is_one_line_with_hint(trained):
    _, _, _, path, _ = trained
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    line = e.value.one_line()
    assert "\n" not in line and "hint:" in line and str(path) in line


def test_non_finite_parameters_are_never_written_nor_loaded(trained, monkeypatch):
    import engine.checkpoint as ck_mod

    m, opt, tcfg, path, sha = trained
    bad = Model(engine.tiny, params=m.params.copy())
    bad.params[123] = np.nan
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        save_checkpoint(path, bad, opt, tcfg)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha      # the old file is intact
    # a file that holds them anyway (written around the guard) is refused on load
    other = path.with_name("bad.safetensors")
    monkeypatch.setattr(ck_mod, "all_finite", lambda x: True)
    save_checkpoint(other, bad, opt, tcfg)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(other)
    assert load_checkpoint(path).model.params[123] == m.params[123]


@pytest.mark.parametrize("change", ["drop", "reshape"])
def test_a_tensor_missing_or_of_the_wrong_shape_is_refused(trained, tmp_path, change):
    """A well-formed file (payload hash consistent) whose tensors do not match its config."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    import engine.checkpoint as ck_mod

    _, _, _, path, _ = trained
    tensors = load_file(str(path))
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    if change == "drop":
        del tensors["lnf.b"]
    else:
        tensors["wpe"] = np.ascontiguousarray(tensors["wpe"][:-1])
    meta["payload_sha256"] = ck_mod._payload_sha256(tensors)
    bad = tmp_path / f"{change}.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="does not match the config") as e:
        load_checkpoint(bad)
    assert str(bad) in e.value.one_line()


@pytest.mark.parametrize("field, value", [("step", "seven"), ("cycle", "1.5"),
                                          ("extra", "{not json")])
def test_unreadable_metadata_is_a_checkpoint_error(trained, tmp_path, field, value):
    """The payload hash covers the tensors only: bad metadata must still be a CheckpointError
    (so the agent falls back to the previous checkpoint) and never a ValueError."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    _, _, _, path, _ = trained
    tensors = load_file(str(path))
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    meta[field] = value
    bad = tmp_path / "meta.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(bad)
