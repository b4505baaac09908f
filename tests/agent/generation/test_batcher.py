"""Continuous batching (agent/generation/batcher.py): concurrent requests decoded as rows of
one batch give what each would get alone, rows are freed and reused, the window slides at the
context length, failures reach the readers, ids reach an event loop from the decoding thread,
and the decoding thread ends when idle and on close."""
import asyncio

import numpy as np
import pytest

import engine
from agent.generation.batcher import DecodeBatcher
from engine import Model


@pytest.fixture
def model():
    m = Model(engine.tiny, seed=3)
    m.params *= 3.0                     # sharper than the init: sampling is not uniform
    return m


def run_together(batcher, jobs):
    """Queue every job's request while holding the batcher's lock, so its decoding thread
    admits them in one go (rows of one batch at once), then read each to the end (the
    batcher decodes ahead of its readers); returns each job's ids."""
    with batcher._lock:
        streams = [batcher.stream(**kw) for kw in jobs]
    return [list(s) for s in streams]


def alone(model, kw):
    kw = dict(kw)
    return list(model.generate(kw.pop("prompt_ids"), kw.pop("max_new_tokens"), **kw))


def test_concurrent_requests_get_what_each_would_get_alone(model):
    batcher = DecodeBatcher(model, rows=3)
    jobs = [dict(prompt_ids=[1, 2, 3], max_new_tokens=9, temperature=0.0),
            dict(prompt_ids=[5], max_new_tokens=14, temperature=1.0, seed=7),
            dict(prompt_ids=[9, 8, 7, 6, 5], max_new_tokens=5, temperature=0.8, top_k=5,
                 seed=2)]
    got = run_together(batcher, jobs)
    for kw, ids in zip(jobs, got):
        assert ids == alone(model, kw)
    assert batcher.widest == 3                   # they were decoded together
    batcher.close()


def test_more_requests_than_rows_wait_for_a_free_row_and_a_window_slides(model):
    T = engine.tiny.context
    batcher = DecodeBatcher(model, rows=2)
    jobs = [dict(prompt_ids=[i + 1, i + 2], max_new_tokens=3 + 2 * i, temperature=1.0, seed=i)
            for i in range(4)]
    jobs.append(dict(prompt_ids=[4, 4], max_new_tokens=2 * T + 3, temperature=0.0))  # slides
    got = run_together(batcher, jobs[:2])         # two at a time...
    got += run_together(batcher, jobs[2:4])
    got += run_together(batcher, jobs[4:])
    for kw, ids in zip(jobs, got):
        assert ids == alone(model, kw)
    assert batcher.widest == 2
    batcher.close()


def test_a_reader_that_stops_frees_its_row_for_the_next_request(model):
    batcher = DecodeBatcher(model, rows=2)
    long = batcher.stream([1, 2], 40, temperature=0.0)
    short = batcher.stream([3], 40, temperature=1.0, seed=1)
    a = [next(long) for _ in range(3)]
    b = [next(short) for _ in range(2)]
    long.close()                                  # row 0 ends: row 1 moves into it
    third = batcher.stream([6, 7], 6, temperature=0.0)
    c = list(third)
    b += list(short)
    assert a == alone(model, dict(prompt_ids=[1, 2], max_new_tokens=3, temperature=0.0))
    assert b == alone(model, dict(prompt_ids=[3], max_new_tokens=40, temperature=1.0, seed=1))
    assert c == alone(model, dict(prompt_ids=[6, 7], max_new_tokens=6, temperature=0.0))
    batcher.close()


def test_the_thread_ends_when_idle_and_close_ends_requests_in_flight(model):
    batcher = DecodeBatcher(model, rows=2)
    assert list(batcher.stream([1], 3, temperature=0.0)) == alone(
        model, dict(prompt_ids=[1], max_new_tokens=3, temperature=0.0))
    first = batcher._thread
    if first is not None:
        first.join(timeout=30)                    # ends by itself once nothing is left
    assert batcher._thread is None
    endless = batcher.stream([2], 10_000, temperature=1.0, seed=0)
    next(endless)
    worker = batcher._thread
    assert worker is not None and worker.is_alive()
    batcher.close()
    assert not worker.is_alive()
    assert len(list(endless)) < 10_000            # ended, not run to its length
    with pytest.raises(RuntimeError, match="closed"):
        next(batcher.stream([1], 2))


def test_a_failure_reaches_the_reader_and_the_batcher_goes_on(model):
    batcher = DecodeBatcher(model, rows=2)
    with pytest.raises(ValueError, match="token ids"):
        next(batcher.stream([engine.tiny.vocab_size + 5], 3))      # refused up front
    nothing = batcher.stream([1], 0)
    assert list(nothing) == [] and nothing.close() is None       # closes like any stream
    broken = Model(engine.tiny, seed=0)
    broken.params[:] = np.nan
    bad = DecodeBatcher(broken, rows=2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        list(bad.stream([1, 2], 3))
    bad.close()
    assert list(batcher.stream([1], 2, temperature=0.0)) == alone(
        model, dict(prompt_ids=[1], max_new_tokens=2, temperature=0.0))
    batcher.close()


def test_a_reader_on_an_event_loop_gets_the_ids_from_the_decoding_thread(model):
    batcher = DecodeBatcher(model, rows=2)
    job = dict(prompt_ids=[1, 2], max_new_tokens=7, temperature=1.0, seed=4)

    async def read():
        ids = [t async for t in batcher.astream(**job)]
        endless = batcher.astream([3], 10_000, temperature=1.0, seed=0)
        first = [await endless.__anext__()]
        endless.close()                           # the request ends, its reader too
        return ids, first + [t async for t in endless]
    ids, cut = asyncio.run(read())
    assert ids == alone(model, job)
    assert len(cut) == 1
    batcher.close()
