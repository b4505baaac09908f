"""EMA of the weights: against a plain numpy loop, through vocabulary growth, through a
checkpoint (bit-exact), NaN refused, old checkpoints without one still load."""
import json

import numpy as np
import pytest

import engine
from engine import (EMA, CheckpointError, Model, Optimizer, TrainConfig, load_checkpoint,
                    save_checkpoint)
from engine.ema import decay_at


def train(m, opt, ema, steps, seed=0):
    rng = np.random.default_rng(seed)
    V = m.config.vocab_size
    for _ in range(steps):
        _, g = m.loss_and_grad(rng.integers(0, V, (2, 8)), rng.integers(0, V, (2, 8)))
        opt.step(m.params, g, 1e-2)
        if ema is not None:
            ema.update(m.params)


@pytest.mark.parametrize("warmup", [True, False])
def test_update_matches_a_plain_numpy_loop(warmup):
    m = Model(engine.tiny, seed=0)
    opt = Optimizer(m.layout, TrainConfig(lr=1e-2))
    ema = EMA(m.params, m.layout, decay=0.9, warmup=warmup)
    ref = m.params.astype(np.float64)
    rng = np.random.default_rng(1)
    for t in range(30):
        _, g = m.loss_and_grad(rng.integers(0, 320, (2, 8)), rng.integers(0, 320, (2, 8)))
        opt.step(m.params, g, 1e-2)
        d = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
        ref = d * ref + (1 - d) * m.params
        ema.update(m.params)
    assert ema.t == 30
    np.testing.assert_allclose(ema.shadow, ref, rtol=1e-5, atol=1e-7)
    assert not np.allclose(ema.shadow, m.params)       # it lags the weights


def test_the_decay_warms_up_to_its_cap():
    assert decay_at(0.999, 0) == pytest.approx(0.1)
    assert decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert decay_at(0.999, 10**6) == 0.999 and decay_at(0.999, 0, warmup=False) == 0.999


def test_update_allocates_nothing_and_keeps_its_buffer():
    m = Model(engine.tiny, seed=0)
    ema = EMA(m.params, m.layout, decay=0.99)
    buf = ema.shadow
    ema.update(m.params)
    assert ema.shadow is buf and ema.shadow.dtype == np.float32


@pytest.mark.parametrize("merges", [None, [(5, 7, 320), (320, 9, 321)] +
                                    [(z - 1, z - 2, z) for z in range(322, 330)]])
def test_vocabulary_growth_copies_the_models_new_rows(merges):
    m = Model(engine.tiny, seed=0)
    opt = Optimizer(m.layout, TrainConfig(lr=1e-2))
    ema = EMA(m.params, m.layout, decay=0.9)
    train(m, opt, ema, 5)
    before = ema.shadow.copy()
    old_layout = m.layout
    m.grow_vocab(330, merges=merges)
    opt.grow(m.layout)
    ema.grow(m.layout, m.params)
    assert ema.shadow.shape == m.params.shape and ema.layout == m.layout
    views, old = m.layout.views(ema.shadow), old_layout.views(before)
    np.testing.assert_array_equal(views["wte"][:320], old["wte"])
    np.testing.assert_array_equal(views["wte"][320:], m.param("wte")[320:])
    for name in m.param_names()[1:]:
        np.testing.assert_array_equal(views[name], old[name])
    train(m, opt, ema, 2, seed=3)                      # and it keeps working
    assert ema.t == 7


def test_checkpoint_round_trip_is_bit_exact_and_serves_the_ema(tmp_path):
    m = Model(engine.tiny, seed=0)
    tcfg = TrainConfig(lr=1e-2, schedule="constant", ema_decay=0.95)
    opt = Optimizer(m.layout, tcfg)
    ema = EMA(m.params, m.layout, decay=0.95)
    train(m, opt, ema, 4)
    path = tmp_path / "ckpt-000001.safetensors"
    sha = save_checkpoint(path, m, opt, tcfg, step=4, cycle=1, ema=ema)
    ck = load_checkpoint(path, expected_sha256=sha)
    assert ck.ema.shadow.tobytes() == ema.shadow.tobytes()
    assert (ck.ema.decay, ck.ema.warmup, ck.ema.t) == (0.95, True, 4)
    assert ck.model.params.tobytes() == m.params.tobytes()
    served = ck.serving_model()
    assert served.params.tobytes() == ema.shadow.tobytes() and served.config == m.config
    assert served.params is not ck.ema.shadow
    x = np.arange(8).reshape(1, 8)
    assert not np.allclose(served.logits(x), ck.model.logits(x))
    # the EMA keeps going from where it stopped
    ck.ema.update(ck.model.params)
    assert ck.ema.t == 5


def test_a_checkpoint_without_an_ema_still_loads(tmp_path):
    m = Model(engine.tiny, seed=0)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, Optimizer(m.layout, TrainConfig()), TrainConfig())
    ck = load_checkpoint(path)
    assert ck.ema is None and ck.serving_model() is ck.model


def test_a_checkpoint_written_before_the_ema_existed_still_loads(tmp_path):
    """A file whose metadata has no 'ema' key at all (written by the previous format)."""
    from safetensors.numpy import load, save

    m = Model(engine.tiny, seed=0)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    del meta["ema"]
    path.write_bytes(save(load(data), metadata=meta))
    assert load_checkpoint(path).ema is None


def test_nan_in_the_ema_is_refused(tmp_path):
    m = Model(engine.tiny, seed=0)
    ema = EMA(m.params, m.layout, decay=0.9)
    ema.shadow[5] = np.nan
    path = tmp_path / "c.safetensors"
    with pytest.raises(CheckpointError, match="EMA has NaN"):
        save_checkpoint(path, m, ema=ema)
    assert not path.exists()


def test_the_ema_tensor_is_covered_by_the_payload_hash(tmp_path):
    m = Model(engine.tiny, seed=0)
    ema = EMA(m.params, m.layout, decay=0.9)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, ema=ema)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    lo, _ = header["ema"]["data_offsets"]
    data[8 + n + lo + 3] ^= 0x01                      # flip a bit inside the EMA tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="payload hash"):
        load_checkpoint(path)


def test_an_ema_of_the_wrong_size_is_refused(tmp_path):
    m = Model(engine.tiny, seed=0)
    ema = EMA(m.params, m.layout, decay=0.9)
    m.grow_vocab(330)
    with pytest.raises(CheckpointError, match="the EMA has 36224 weights, the model 36544"):
        save_checkpoint(tmp_path / "c.safetensors", m, ema=ema)
    with pytest.raises(ValueError, match="EMA.grow"):
        ema.update(m.params)


def test_a_running_mean_is_the_plain_mean_of_the_weights_it_folded_in():
    from engine.ema import RunningMean

    m = Model(engine.tiny, seed=0)
    opt = Optimizer(m.layout, TrainConfig(lr=1e-2))
    mean = RunningMean(m.params, m.layout)
    seen = []
    for i in range(7):
        train(m, opt, None, 1, seed=i)
        mean.update(m.params)
        seen.append(m.params.astype(np.float64))
    assert mean.t == 7 and mean.current_decay() == pytest.approx(7 / 8)
    np.testing.assert_allclose(mean.shadow, np.mean(seen, axis=0), rtol=0, atol=1e-6)
    assert not np.allclose(mean.shadow, m.params, rtol=0, atol=1e-6)  # not the last weights


def test_a_sweep_mean_round_trips_through_a_checkpoint_and_old_files_have_none(tmp_path):
    from engine.ema import RunningMean

    m = Model(engine.tiny, seed=0)
    opt = Optimizer(m.layout, TrainConfig(lr=1e-2))
    ema = EMA(m.params, m.layout, decay=0.9)
    sweep = RunningMean(m.params, m.layout)
    for i in range(3):
        train(m, opt, ema, 1, seed=i)
        sweep.update(m.params)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, opt, ema=ema, sweep=sweep)
    ck = load_checkpoint(path)
    assert isinstance(ck.sweep, RunningMean) and ck.sweep.t == 3
    assert np.array_equal(ck.sweep.shadow, sweep.shadow)
    assert np.array_equal(ck.ema.shadow, ema.shadow)          # the two stay apart
    save_checkpoint(path, m, opt, ema=ema)
    assert load_checkpoint(path).sweep is None
    sweep.shadow[3] = np.inf
    with pytest.raises(CheckpointError, match="sweep's running mean has NaN or Inf"):
        save_checkpoint(tmp_path / "d.safetensors", m, ema=ema, sweep=sweep)
