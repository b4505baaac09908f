"""Learning-rate schedules against plain references: re-warmed cosine, wsd, constant, rsqrt."""
import math

import pytest

from engine import TrainConfig, lr_at
from engine.schedule import ScheduleConfig, learning_rate


def ref_cosine(lr, min_lr, warmup, step, total):
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    frac = min(1.0, max(0.0, frac))
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * frac)) / 2


def ref_wsd(lr, min_lr, warmup, cooldown, g, s, n):
    rate = lr * (g + 1) / warmup if g < warmup else lr
    cool = math.ceil(cooldown * n)
    start = n - cool
    s = min(s, n - 1)
    if cool and s >= start:
        p = (s - start + 1) / cool
        rate = min(rate, min_lr + (lr - min_lr) * (1 - math.sqrt(p)))
    return rate


def run(cfg, cycles):
    """Rates of consecutive cycles (planned lengths `cycles`), as the trainer would ask."""
    out, g = [], 0
    for n in cycles:
        cyc = []
        for s in range(n):
            cyc.append(learning_rate(cfg, g, s, n))
            g += 1
        out.append(cyc)
    return out


CYCLES = [250, 250, 97, 1, 400]


def test_cosine_is_rewarmed_every_cycle_and_matches_the_reference():
    cfg = ScheduleConfig("cosine", lr=2e-3, min_lr=2e-4, warmup_steps=10)
    for n, cyc in zip(CYCLES, run(cfg, CYCLES)):
        assert cyc == pytest.approx([ref_cosine(2e-3, 2e-4, 10, s, n) for s in range(n)],
                                    rel=1e-12)
        if n > 10:
            assert cyc[0] == pytest.approx(2e-4) and cyc[9] == pytest.approx(2e-3)
            assert cyc[-1] == pytest.approx(2e-4, rel=0.05)
            assert all(a >= b for a, b in zip(cyc[10:], cyc[11:]))       # monotone decay


def test_cosine_equals_lr_at_of_a_train_config():
    cfg = ScheduleConfig("cosine", lr=1e-3, min_lr=1e-4, warmup_steps=7)
    tcfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=7, total_steps=123,
                       schedule="cosine")
    assert [learning_rate(cfg, 999, s, 123) for s in range(200)] == \
        [lr_at(s, tcfg) for s in range(200)]


def test_wsd_warms_up_once_holds_and_cools_down_each_cycle():
    cfg = ScheduleConfig("wsd", lr=2e-3, min_lr=2e-4, warmup_steps=100, cooldown=0.2)
    rates = run(cfg, CYCLES)
    g = 0
    for n, cyc in zip(CYCLES, rates):
        assert cyc == pytest.approx([ref_wsd(2e-3, 2e-4, 100, 0.2, g + s, s, n)
                                     for s in range(n)], rel=1e-12)
        g += n
    first, second = rates[0], rates[1]
    assert first[:100] == pytest.approx([2e-3 * (i + 1) / 100 for i in range(100)])
    assert first[100:200] == [2e-3] * 100                              # stable
    assert first[-1] == pytest.approx(2e-4)                            # cooled to the floor
    cool = first[200:]
    assert all(a > b for a, b in zip(cool, cool[1:]))                  # strictly decreasing
    assert second[0] == 2e-3                                           # no second warmup
    assert second[:200] == [2e-3] * 200 and second[-1] == pytest.approx(2e-4)


def test_wsd_cooldown_is_one_minus_sqrt_and_never_above_the_warmup():
    cfg = ScheduleConfig("wsd", lr=1.0, min_lr=0.0, warmup_steps=0, cooldown=0.5)
    assert learning_rate(cfg, 0, 49, 100) == 1.0
    assert learning_rate(cfg, 0, 50, 100) == pytest.approx(1 - math.sqrt(1 / 50))
    assert learning_rate(cfg, 0, 74, 100) == pytest.approx(1 - math.sqrt(25 / 50))
    assert learning_rate(cfg, 0, 99, 100) == 0.0
    assert learning_rate(cfg, 0, 150, 100) == 0.0                      # past the plan
    # a cycle that ends inside the warmup: the cooldown starts from the warming rate
    cfg = ScheduleConfig("wsd", lr=1.0, min_lr=0.0, warmup_steps=1000, cooldown=0.5)
    assert learning_rate(cfg, 60, 60, 100) == pytest.approx(61 / 1000)
    assert learning_rate(cfg, 99, 99, 100) == 0.0


def test_constant_warms_up_once_then_holds_for_ever():
    cfg = ScheduleConfig("constant", lr=3e-3, min_lr=1e-4, warmup_steps=100)
    rates = [r for cyc in run(cfg, CYCLES) for r in cyc]
    assert rates[:100] == pytest.approx([3e-3 * (i + 1) / 100 for i in range(100)])
    assert rates[100:] == [3e-3] * (sum(CYCLES) - 100)
    assert all(a <= b for a, b in zip(rates, rates[1:]))               # monotone non-decreasing
    assert learning_rate(cfg, 10**9, 0, 1) == 3e-3


def test_rsqrt_holds_the_peak_then_decays_by_the_models_age_to_its_floor():
    cfg = ScheduleConfig("rsqrt", lr=3e-3, min_lr=1e-3, warmup_steps=100, decay_steps=500)
    rates = [r for cyc in run(cfg, CYCLES) for r in cyc]          # cycles do not matter
    ref = [3e-3 * (g + 1) / 100 if g < 100 else 3e-3 if g < 500
           else max(1e-3, 3e-3 * math.sqrt(500 / (g + 1))) for g in range(sum(CYCLES))]
    assert rates == pytest.approx(ref, rel=1e-12)
    assert all(a >= b for a, b in zip(rates[100:], rates[101:]))   # non-increasing after warmup
    assert rates[-1] == pytest.approx(3e-3 * math.sqrt(500 / sum(CYCLES)))
    assert learning_rate(cfg, 4499, 0, 1) == pytest.approx(1e-3)    # 3e-3 * sqrt(500/4500)
    assert learning_rate(cfg, 10**9, 7, 8) == 1e-3                  # the floor, for ever
    # a model resumed at step g takes the rate it would have taken without the restart
    assert learning_rate(cfg, 1200, 0, 50) == learning_rate(cfg, 1200, 49, 50)


def test_no_warmup_starts_at_the_peak():
    for kind in ("cosine", "wsd", "constant", "rsqrt"):
        assert learning_rate(ScheduleConfig(kind, lr=1e-3, warmup_steps=0), 0, 0, 50) == 1e-3


@pytest.mark.parametrize("bad", [dict(kind="linear"), dict(lr=-1.0), dict(warmup_steps=-1),
                                 dict(cooldown=1.5), dict(decay_steps=0)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        ScheduleConfig(**bad)


def test_a_train_config_names_its_schedule_and_old_configs_still_load():
    tcfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=50, schedule="wsd", cooldown=0.3)
    assert tcfg.schedule_config() == ScheduleConfig("wsd", 1e-3, 1e-4, 50, 0.3)
    assert TrainConfig.from_json(tcfg.to_json()) == tcfg
    old = ('{"batch_size": 8, "beta1": 0.9, "beta2": 0.95, "crystalline_weight": 0.0, '
           '"eps": 1e-08, "grad_clip": 1.0, "lr": 0.002, "min_lr": 0.0002, "momentum": 0.9, '
           '"optimizer": "adamw", "total_steps": null, "warmup_steps": 10, "weight_decay": 0.1}')
    assert TrainConfig.from_json(old).schedule_config().kind == "cosine"
    rsqrt = TrainConfig(lr=3e-3, min_lr=1e-3, schedule="rsqrt", decay_steps=700)
    assert TrainConfig.from_json(rsqrt.to_json()).schedule_config() == \
        ScheduleConfig("rsqrt", 3e-3, 1e-3, 100, 0.2, 700)
    with pytest.raises(ValueError):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError):
        TrainConfig(ema_decay=1.0)


def test_lr_at_follows_the_train_configs_schedule_with_one_counter():
    for kind in ("constant", "wsd", "rsqrt"):
        tcfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule=kind, decay_steps=20,
                           total_steps=100)
        assert [lr_at(s, tcfg) for s in range(120)] == \
            [learning_rate(tcfg.schedule_config(), s, s, 100) for s in range(120)]
        if kind != "rsqrt":
            assert lr_at(500, tcfg.replace(total_steps=None)) == 1e-3  # no plan: no cooldown
        else:
            assert lr_at(500, tcfg.replace(total_steps=None)) == \
                pytest.approx(1e-3 * math.sqrt(20 / 501))
    assert lr_at(99, TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="wsd",
                                 total_steps=100)) == pytest.approx(1e-4)
