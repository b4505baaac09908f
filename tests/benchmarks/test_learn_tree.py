"""benchmarks/bench_learn_tree.py's reusable parts: the race clock, the checkpoint watcher
and the choice of the weights a user had at a mark, the recipe twin's batches (the agent's
reader, FIM and replay), the compressor floor; and (slow) a whole smoke race of the three
peers."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_learn_tree import agent_snapshots  # noqa: E402
from compress_floor import compressor_floor  # noqa: E402
from race_snapshots import CheckpointWatcher, RaceClock, Snapshot, weights_at  # noqa: E402
from stdlib_data import DEFAULT_ROOT, split_files  # noqa: E402


def _write(path: Path, data: bytes, mtime: float) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def test_race_clock_pops_each_passed_mark_once():
    clock = RaceClock(t0=0.0, seconds=1e12, marks=[3.0, 1.0, 2e12])   # the last past the end
    assert clock.marks == [1.0, 3.0]
    assert clock.passed() == [1.0, 3.0]
    assert clock.passed() == []
    assert not clock.over()


def test_watcher_copies_weights_with_their_tokenizer_stamped_with_mtime(tmp_path):
    src, dest, t0 = tmp_path / "checkpoints", tmp_path / "copies", 1000.0
    src.mkdir()
    _write(src / "ckpt-000001.tokenizer.json", b"tok1", t0 + 4.0)
    _write(src / "ckpt-000001.safetensors", b"weights1", t0 + 5.0)
    _write(src / "committed.json", b"{}", t0 + 5.5)              # not weights: never copied
    _write(src / ".ckpt-000002.safetensors.x.tmp", b"half", t0 + 6.0)
    w = CheckpointWatcher(src, dest, t0)
    assert w.scan() == 1
    assert w.scan() == 0                                        # unchanged: not copied again
    (snap,) = w.snapshots
    assert snap.at_s == 5.0
    assert Path(snap.path).read_bytes() == b"weights1"
    assert (Path(snap.path).parent / "ckpt-000001.tokenizer.json").read_bytes() == b"tok1"
    _write(src / "live.safetensors", b"live", t0 + 7.0)       # a future in-cycle snapshot
    _write(src / "ckpt-000001.safetensors", b"weights1b", t0 + 8.0)   # replaced
    assert w.scan() == 2
    assert sorted(s.at_s for s in w.snapshots) == [5.0, 7.0, 8.0]


def test_watcher_thread_copies_a_checkpoint_folder_that_appears_late(tmp_path):
    src, pause = tmp_path / "checkpoints", threading.Event()
    with CheckpointWatcher(src, tmp_path / "copies", 0.0, interval=0.01) as w:
        src.mkdir()
        _write(src / "ckpt-000003.safetensors", b"w", 42.0)
        for _ in range(500):
            if w.snapshots:
                break
            pause.wait(0.01)
    assert [s.at_s for s in w.snapshots] == [42.0]


def test_weights_at_is_the_newest_available_at_the_mark():
    snaps = [Snapshot("a", 10.0), Snapshot("b", 30.0), Snapshot("c", 20.0)]
    assert weights_at(snaps, 9.9) is None
    assert weights_at(snaps, 10.0).path == "a"
    assert weights_at(snaps, 29.0).path == "c"
    assert weights_at(snaps, 60.0).path == "b"


def test_agent_checkpoints_count_from_their_commit_and_uncommitted_ones_not_at_all():
    copies = [Snapshot("/c/1", 10.0, "/d/ckpt-000001.safetensors"),
              Snapshot("/c/2", 20.0, "/d/ckpt-000002.safetensors"),   # never committed
              Snapshot("/c/live", 25.0, "/d/live.safetensors")]
    got = agent_snapshots(copies, {"ckpt-000001.safetensors": (10.4, 1)})
    assert [(s.path, s.at_s) for s in got] == [("/c/1", 10.4), ("/c/live", 25.0)]


def _recipe_twin_batches(replay_fraction: float):
    from torch_twin import AgentBatches, build, our_recipe

    from agent.training.fim import FIM_PREFIX, SPECIALS

    texts = [f"def f{i}(x):\n    return x * {i} + {'y' * (i * 7)}\n" * (3 + i) for i in range(6)]
    recipe = dataclasses.replace(our_recipe(), preset="tiny", passes=2.0, fim_rate=0.5,
                                 replay_fraction=replay_fraction, replay_docs=3)
    model, tok = build(recipe, texts)
    assert tok.special_id(FIM_PREFIX) == 257                # the agent's ids for a new model
    assert model.config.vocab_size == len(tok) > 261        # built at its learned size
    special = {tok.eod_id, *(tok.special_id(n) for n in SPECIALS)}
    data = AgentBatches(texts, [""] * len(texts), tok, T=8, B=4, recipe=recipe)
    batches, replays, train_s = [], [], 0.0
    while (b := data.next(train_s)) is not None:
        batches.append(b)
        rep = data.batcher.replay                           # this cycle's replay sample
        if rep is not None:
            replays.append((set(np.unique(rep.own[rep.own >= 0]).tolist()), set(data.done)))
        train_s += 1.0                                      # a second a step: cycles of 10, 20...
    return data, tok, special, texts, batches, replays


def test_recipe_twin_reads_the_agents_backlog_every_token_passes_times_with_fim():
    pytest.importorskip("torch")
    from collections import Counter

    data, tok, special, texts, batches, replays = _recipe_twin_batches(replay_fraction=0.0)
    assert not replays
    got = Counter(int(t) for _, y in batches for t in y.ravel() if t >= 0 and t not in special)
    want = Counter()
    for t in texts:
        want.update(int(i) for i in tok.encode(t) for _ in range(2))
    assert got == want                                      # each token a target twice
    assert any((x == tok.special_id("<|fim_prefix|>")).any() for x, _ in batches)
    assert sorted(data.done) == sorted(data.docs) and set(data.left.values()) == {0}


def test_recipe_twin_replays_only_documents_whose_passes_are_done():
    pytest.importorskip("torch")
    data, tok, special, texts, batches, replays = _recipe_twin_batches(replay_fraction=0.25)
    assert data.cycle >= 2 and data.replayed_bytes > 0 and replays
    assert all(0 < len(drawn) <= 3 and drawn <= done for drawn, done in replays)
    assert set(data.left.values()) == {0}                   # replay leaves the passes exact


def test_compressor_floor_is_the_marginal_xz_size_and_is_cached(tmp_path):
    train = []
    for i in range(3):
        p = tmp_path / f"t{i}.py"
        p.write_text(f"def f{i}(x):\n    return x + {i}\n" * 50)
        train.append(p)
    same = tmp_path / "h0.py"
    same.write_text("def f1(x):\n    return x + 1\n" * 20)        # seen in training: cheap
    new = tmp_path / "h1.py"
    new.write_text("".join(chr(33 + (i * 7919) % 90) for i in range(600)) + "\n")
    cheap = compressor_floor(train, [same], 8192, cache=tmp_path / "cache", threads=1)
    dear = compressor_floor(train, [new], 8192, cache=tmp_path / "cache", threads=1)
    assert not cheap["cached"] and cheap["bpb"] < dear["bpb"]
    assert 0 < cheap["bpb"] < 1.0 < dear["bpb"]
    again = compressor_floor(train, [same], 8192, cache=tmp_path / "cache", threads=1)
    assert again["cached"] and again["bpb"] == cheap["bpb"]


def test_split_holds_out_every_tenth_file_of_the_glob(tmp_path):
    for i in range(25):
        (tmp_path / "d").mkdir(exist_ok=True)
        (tmp_path / "d" / f"doc{i:02d}.txt").write_text(f"text {i}\n")
        (tmp_path / f"mod{i:02d}.py").write_text(f"x = {i}\n")
    split = split_files(tmp_path, glob="*.txt")
    names = [p.name for p in split.heldout]
    assert names == ["doc09.txt", "doc19.txt"] and len(split.train) == 23
    assert all(p.suffix == ".txt" for p in split.train)
    assert len(split_files(tmp_path).heldout) == 2       # *.py by default


@pytest.mark.slow
def test_smoke_race_scores_all_three_peers_at_every_mark(tmp_path):
    pytest.importorskip("torch")
    if not DEFAULT_ROOT.is_dir():
        pytest.skip(f"no CPython tree at {DEFAULT_ROOT}")
    from bench_learn_tree import main

    out = tmp_path / "learn_tree.json"
    main(["--minutes", "0.4", "--marks", "0.2,0.4", "--max-files", "30",
          "--work", str(tmp_path / "work"), "--out", str(out), "--sample-prompt", "def "])
    res = json.loads(out.read_text())
    assert set(res["peers"]) == {"agent", "nanogpt", "ours"}
    assert res["git"]["commit"] and res["torch"] and res["cpu"]
    assert res["compressor_floor"]["bpb"] > 0
    for name, peer in res["peers"].items():
        assert [r["mark_s"] for r in peer["marks"]] == [12.0, 24.0], name
        assert peer["tokens_per_s"] > 0, name
        last = peer["marks"][-1]
        assert last["bpb"] is not None and 0 < last["bpb"] < 16, name
        assert last["weights_at_s"] <= 24.0 or name != "agent"
        assert isinstance(last["sample"], str) and last["sample"], name   # its weights wrote
    assert res["peers"]["ours"]["marks"][-1]["weights"] == "ema"
    assert res["peers"]["nanogpt"]["marks"][-1]["weights"] == "raw"
