"""Fixtures of the server tests: a tiny trained data directory made once per session (two
cycles, so one can be pinned), and `serve`, which starts real uvicorn servers on free ports
in threads and stops (joins) them after the test."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

CORPUS = {"a.txt": "the crystal lattice hums a quiet tune. " * 40,
          "b.txt": "every sphere touches twelve neighbours. " * 40}


def write_corpus(root: Path) -> Path:
    (root / "notes").mkdir(parents=True, exist_ok=True)
    for name, text in CORPUS.items():
        (root / "notes" / name).write_text(text)
    return root


def train_tiny(corpus: Path, data_dir: Path, steps: int = 8) -> dict:
    """One `cllm train` cycle (tiny preset); returns its --json summary."""
    from agent.cli import main

    r = CliRunner().invoke(main, ["train", str(corpus), "--data-dir", str(data_dir),
                                  "--preset", "tiny", "--steps", str(steps), "--batch-size", "4",
                                  "--workers", "1", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{"):])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus) -> Path:
    """A data directory with two committed cycles; tests must not change it."""
    data = tmp_path_factory.mktemp("served") / "data"
    train_tiny(corpus, data)
    train_tiny(corpus, data)
    return data


@pytest.fixture
def serve(monkeypatch):
    """serve(data_dir, **ServeConfig fields, limits=Limits(...)) -> a started Server."""
    from agent.server.app import ServeConfig, Server, Service
    from store import open_store

    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    started = []

    def start(data_dir: Path, **cfg) -> Server:
        cfg.setdefault("port", 0)
        store = open_store(data_dir)
        try:
            server = Server(Service(store, data_dir, ServeConfig(**cfg)))
        except BaseException:
            store.close()
            raise
        started.append((server, store))
        server.start()
        return server

    yield start
    for server, store in started:
        try:
            server.stop()
        finally:
            store.close()


def wait_loaded(server, timeout: float = 60.0):
    """Block until the server holds a checkpoint (its first load runs on the watcher)."""
    import threading

    holder = server.service.holder
    done = threading.Event()
    holder.listeners.append(lambda ckpt: done.set())
    if holder.current is None:
        assert done.wait(timeout), f"no checkpoint loaded: {holder.error}"
    return holder.current
