"""Fixtures of the server tests: a tiny trained data directory made once per session (two
cycles, so one can be pinned), `serve`, which starts real uvicorn servers on free ports
in threads and stops (joins) them after the test, `http`, httpx's request functions
sending the token of the server a URL names (read from its data directory, as a client
told by `cllm token` does), and `script_ids`, which makes a batcher's requests take their
ids from a script."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Optional

import httpx
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.generation.batcher import END
from agent.server.config import ServeConfig
from store import open_store

CORPUS = {"a.txt": "the crystal lattice hums a quiet tune. " * 40,
          "b.txt": "every sphere touches twelve neighbours. " * 40}


def write_corpus(root: Path) -> Path:
    (root / "notes").mkdir(parents=True, exist_ok=True)
    for name, text in CORPUS.items():
        (root / "notes" / name).write_text(text)
    return root


def train_tiny(corpus: Path, data_dir: Path, steps: int = 8) -> dict:
    """One `cllm train` cycle (tiny preset); returns its --json summary."""
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


def token_of(server) -> Optional[str]:
    """The token a client of `server` sends: the one it was given, else the data
    directory's, read from its file (`cllm token`); None with --auth none."""
    from agent.server.security import token_path

    cfg = server.service.config
    if cfg.auth == "none":
        return None
    return cfg.token or token_path(server.service.data_dir).read_text().strip()


class Http:
    """httpx's get/post/options/delete/stream, sending 'Authorization: Bearer TOKEN' to
    the servers `add`ed (the `serve` fixture adds each it starts); a request that sets its
    own Authorization header, or goes elsewhere, is sent as it is."""

    def __init__(self) -> None:
        self.tokens: dict[str, Optional[str]] = {}     # a server's URL -> its token

    def add(self, server) -> None:
        self.tokens[server.url] = token_of(server)

    def headers(self, url, headers=None) -> dict:
        out = dict(headers or {})
        token = next((t for base, t in self.tokens.items()
                      if str(url) == base or str(url).startswith(base + "/")), None)
        if token and not any(k.lower() == "authorization" for k in out):
            out["Authorization"] = f"Bearer {token}"
        return out

    def request(self, method: str, url, **kwargs) -> httpx.Response:
        return httpx.request(method, url, headers=self.headers(url, kwargs.pop("headers", None)),
                             **kwargs)

    def get(self, url, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def options(self, url, **kwargs) -> httpx.Response:
        return self.request("OPTIONS", url, **kwargs)

    def delete(self, url, **kwargs) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def stream(self, method: str, url, **kwargs):
        return httpx.stream(method, url, headers=self.headers(url, kwargs.pop("headers", None)),
                            **kwargs)


@pytest.fixture
def http() -> Http:
    return Http()


@pytest.fixture
def serve(monkeypatch, http):
    """serve(data_dir, **ServeConfig fields, limits=Limits(...)) -> a started Server, whose
    token `http` sends."""
    from agent.server.app import Server, Service  # the serve extra: generation tests go without

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
        http.add(server)
        return server

    yield start
    for server, store in started:
        try:
            server.stop()
        finally:
            store.close()


class ScriptedIds:
    """A stand-in for a batcher's `submit`: each request takes its ids from
    `script(prompt_ids, max_new_tokens, **sampling)` (a generator) on a thread of its own,
    which hands them to the request's reader as the decoding thread would (then END, or the
    exception the script raised) and blocks where the script does; a cancelled request's
    script is closed at its next id."""

    def __init__(self, script) -> None:
        self.script, self.threads = script, []

    def __call__(self, prompt_ids, max_new_tokens, deliver, **sampling):
        cancelled = threading.Event()

        def run():
            gen = self.script(prompt_ids, max_new_tokens, **sampling)
            try:
                for t in gen:
                    if cancelled.is_set():
                        return
                    deliver(t)
                deliver(END)
            except BaseException as e:      # noqa: BLE001 - to the reader, as the batcher does
                deliver(e)
            finally:
                gen.close()
        thread = threading.Thread(target=run, name="scripted-ids")
        thread.start()
        self.threads.append(thread)
        return cancelled.set


@pytest.fixture
def script_ids():
    """script_ids(batcher, script): the batcher's requests take their ids from `script`
    (ScriptedIds); its threads are joined after the test."""
    fakes = []

    def install(batcher, script) -> None:
        fakes.append(ScriptedIds(script))
        batcher.submit = fakes[-1]
    yield install
    for fake in fakes:
        for thread in fake.threads:
            thread.join()


def wait_loaded(server, timeout: float = 60.0):
    """Block until the server holds a checkpoint (its first load runs on the watcher)."""
    holder = server.service.holder
    done = threading.Event()
    holder.listeners.append(lambda ckpt: done.set())
    if holder.current is None:
        assert done.wait(timeout), f"no checkpoint loaded: {holder.error}"
    return holder.current
