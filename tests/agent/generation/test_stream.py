"""The shared generation loop (agent/generation/stream.py): stop strings are cut and never
streamed in part, UTF-8 characters split over tokens come out whole, the end-of-text token
and max_tokens end it with OpenAI's finish reasons, and a cancel event stops it."""
from __future__ import annotations

import threading

import pytest

from agent.generation.checkpoint import load_serving_checkpoint
from agent.generation.stream import Sampling, TextStream
from store import open_store


@pytest.fixture(scope="module")
def ckpt(trained):
    with open_store(trained) as store:
        return load_serving_checkpoint(store, trained)


def scripted(ckpt, monkeypatch, data: bytes, end: bool = False):
    """Make the model produce `data` one byte token at a time (then end-of-text)."""
    ids = list(data) + ([ckpt.tokenizer.eod_id] if end else [])

    def gen(prompt_ids, max_new_tokens, **kw):
        yield from ids[:max_new_tokens]
    monkeypatch.setattr(ckpt.model, "generate_stream", gen)


def test_stop_string_is_cut_and_never_streamed_in_part(ckpt, monkeypatch):
    scripted(ckpt, monkeypatch, b"abc END def")
    ts = TextStream(ckpt, "p", Sampling(max_tokens=50, stop=("END", "zzz")))
    pieces = list(ts)
    assert "".join(pieces) == "abc " and ts.finish_reason == "stop"
    assert not any("E" in p for p in pieces)
    assert ts.completion_tokens == len(b"abc END")
    # a prefix of a stop string that does not complete is sent once it cannot
    scripted(ckpt, monkeypatch, b"an ENx and more")
    ts = TextStream(ckpt, "p", Sampling(max_tokens=50, stop=("END",)))
    assert "".join(ts) == "an ENx and more" and ts.finish_reason == "length"


def test_utf8_split_over_tokens_and_end_of_text(ckpt, monkeypatch):
    text = "crystal \u00e9t\u00e9 \U0001f48e"
    scripted(ckpt, monkeypatch, text.encode(), end=True)
    ts = TextStream(ckpt, "", Sampling(max_tokens=100))
    pieces = list(ts)
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert ts.finish_reason == "stop" and ts.completion_tokens == len(text.encode())
    assert ts.prompt_tokens == 0
    ts = TextStream(ckpt, "", Sampling(max_tokens=3))
    assert ts.run() == "cry" and ts.finish_reason == "length"


def test_cancel_stops_before_the_next_token(ckpt, monkeypatch):
    scripted(ckpt, monkeypatch, b"abcdef")
    cancel = threading.Event()
    ts = TextStream(ckpt, "p", Sampling(max_tokens=10), cancel)
    it = iter(ts)
    assert next(it) == "a"
    cancel.set()
    assert list(it) == [] and ts.finish_reason == "cancelled"


def test_real_model_is_seeded(ckpt):
    a = TextStream(ckpt, "every sphere", Sampling(max_tokens=10, seed=5, temperature=1.0)).run()
    b = TextStream(ckpt, "every sphere", Sampling(max_tokens=10, seed=5, temperature=1.0)).run()
    assert a == b and a
