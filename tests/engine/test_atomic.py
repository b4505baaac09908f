"""Durable writes: checkpoint and tokenizer both go through engine.atomic, leave no temp
file behind, and a failed write removes its temp file, named by the rule recovery uses."""
import os
from pathlib import Path

import pytest

import engine
from engine import Model, save_checkpoint
from engine.atomic import atomic_write_bytes, is_temp_file
from engine.tokenizer import Tokenizer


def write_checkpoint(path):
    save_checkpoint(path, Model(engine.tiny, seed=0))


def write_tokenizer(path):
    Tokenizer(max_vocab=300).save(path)


WRITERS = {"checkpoint": (write_checkpoint, "ckpt-000001.safetensors"),
           "tokenizer": (write_tokenizer, "ckpt-000001.tokenizer.json"),
           "bytes": (lambda p: atomic_write_bytes(p, b"x"), "f.bin")}


@pytest.mark.parametrize("kind", WRITERS)
def test_a_write_leaves_only_its_file(tmp_path, kind):
    write, name = WRITERS[kind]
    path = tmp_path / "d" / name
    write(path)
    write(path)                                   # overwrite, too
    assert [p.name for p in path.parent.iterdir()] == [name]


@pytest.mark.parametrize("kind", WRITERS)
def test_a_failed_rename_removes_its_temp_file_named_by_the_rule(tmp_path, monkeypatch, kind):
    write, name = WRITERS[kind]
    path = tmp_path / name
    path.write_bytes(b"old")
    seen = []

    def failing_replace(src, dst):
        src = Path(src)
        seen.append((src, src.exists(), Path(dst)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write(path)
    [(tmp, existed, dst)] = seen
    assert existed and dst == path and tmp.parent == path.parent
    assert is_temp_file(tmp.name) and tmp.name.startswith(f".{name}.") and tmp.name.endswith(".tmp")
    assert not tmp.exists()
    assert path.read_bytes() == b"old"            # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_write_fsyncs_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real(fd)))
    atomic_write_bytes(tmp_path / "f", b"data")
    import stat
    assert [stat.S_ISREG(m) for m in synced] == [True, False]     # file, then directory


@pytest.mark.parametrize("name,temp", [(".ckpt-000001.safetensors.ab12cd.tmp", True),
                                       (".x.tmp", True), ("ckpt-000001.safetensors", False),
                                       ("notes.tmp", False), (".hidden", False), (".tmp", False)])
def test_the_temp_file_rule(name, temp):
    assert is_temp_file(name) is temp
