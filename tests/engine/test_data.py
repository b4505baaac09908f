"""Token streams, windows, mixture sampling and evaluation."""
import numpy as np
import pytest

import engine
from engine.data import WindowSampler, eval_windows, evaluate, pack, window


def test_pack_separates_documents_and_skips_empty_ones():
    s = pack([np.array([1, 2]), np.array([], np.int64), np.array([3])], eod=9)
    assert s.tolist() == [1, 2, 9, 3, 9]
    assert pack([], eod=9).size == 0


def test_window_shifts_targets_and_pads_past_the_end():
    s = np.arange(10, 16)
    x, y = window(s, 0, 4)
    assert x.tolist() == [10, 11, 12, 13] and y.tolist() == [11, 12, 13, 14]
    x, y = window(s, 3, 4)
    assert x.tolist() == [13, 14, 15, 0] and y.tolist() == [14, 15, -1, -1]


def test_sampler_respects_mixture_weights_and_is_seeded():
    a, b = np.zeros(500, np.int64), np.ones(500, np.int64)
    s = WindowSampler([a, b], T=8, B=50, weights=[0.8, 0.2], seed=1)
    for _ in range(20):
        x, y = s.batch()
        assert x.shape == (50, 8) and (y >= 0).all()
    share = s.drawn[1] / s.drawn.sum()
    assert 0.15 < share < 0.25
    x1, _ = WindowSampler([np.arange(100)], 8, 4, seed=3).batch()
    x2, _ = WindowSampler([np.arange(100)], 8, 4, seed=3).batch()
    assert np.array_equal(x1, x2)


def test_sampler_refuses_streams_too_short_to_train():
    with pytest.raises(ValueError, match="two tokens"):
        WindowSampler([np.array([5])], 8, 2)
    short = WindowSampler([np.array([5, 6, 7])], 8, 2)     # shorter than T: padded
    x, y = short.batch()
    assert (y >= 0).sum() == 2 * 2


def test_evaluate_matches_direct_loss_on_all_windows():
    cfg = engine.tiny
    m = engine.Model(cfg, seed=0)
    stream = np.random.default_rng(0).integers(0, cfg.vocab_size, 3 * cfg.context + 5)
    x, y = eval_windows(stream, cfg.context)
    assert (y >= 0).sum() == len(stream) - 1          # every next-token target, once
    s, n = m.loss(x, y)
    assert evaluate(m, stream, batch_size=2, max_windows=None) == pytest.approx(s / n, rel=1e-6)
    assert evaluate(m, np.array([1]), 2) is None
