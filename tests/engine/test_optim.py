"""The learning-rate schedule: linear warmup to lr, cosine decay to min_lr at total_steps."""
import math

import pytest

from engine import TrainConfig, lr_at


def test_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110, schedule="cosine")
    assert [lr_at(i, cfg) for i in range(3)] == pytest.approx([1e-4, 2e-4, 3e-4])
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)                           # decay starts
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))      # half way
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(i, cfg) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))                        # monotone decay
    assert lr_at(35, cfg) == pytest.approx(
        1e-4 + 0.5 * (1 + math.cos(math.pi * 25 / 100)) * 9e-4)


def test_without_a_horizon_the_rate_stays_at_peak_after_warmup():
    cfg = TrainConfig(lr=2e-3, warmup_steps=4, total_steps=None)
    assert lr_at(3, cfg) == pytest.approx(2e-3) and lr_at(10_000, cfg) == pytest.approx(2e-3)
    assert lr_at(0, TrainConfig(lr=2e-3, warmup_steps=0)) == pytest.approx(2e-3)
