"""The crystalline prior and lattice init wired into the model and the threaded system."""
import numpy as np
import pytest

import engine
from engine import Model, ThreadedTrainingSystem, TrainConfig
from engine.neighbours import neighbour_table
from tests.engine.reference import mean_loss


def batch(seed=0, B=5, T=10):
    rng = np.random.default_rng(seed)
    return rng.integers(0, engine.tiny.vocab_size, (B, T)), \
        rng.integers(0, engine.tiny.vocab_size, (B, T))


def test_loss_with_real_neighbour_table_matches_reference():
    m = Model(engine.tiny, seed=1)
    x, y = batch()
    idx, q = neighbour_table(engine.tiny.vocab_size)
    loss, _ = m.loss_and_grad(x, y, crystalline_weight=0.3)
    ref = mean_loss({n: m.param(n) for n in m.param_names()}, engine.tiny, x, y, idx, q, 0.3)
    assert loss == pytest.approx(ref, rel=1e-5)
    plain, _ = m.loss_and_grad(x, y)
    assert loss > plain          # KL >= 0 adds to the cross-entropy


def test_lambda_zero_reproduces_plain_cross_entropy_bit_for_bit():
    m = Model(engine.tiny, seed=1)
    x, y = batch(2)
    a_loss, a_grad = m.loss_and_grad(x, y)
    b_loss, b_grad = m.loss_and_grad(x, y, crystalline_weight=0.0)
    assert a_loss == b_loss and a_grad.tobytes() == b_grad.tobytes()


@pytest.mark.parametrize("n", [2, 5])
def test_crystalline_training_is_equal_across_worker_counts(n):
    tcfg = TrainConfig(optimizer="sgd", lr=0.05, warmup_steps=0, crystalline_weight=0.2)
    params = {}
    for workers in (1, n):
        m = Model(engine.tiny, seed=0)
        with ThreadedTrainingSystem(m, tcfg, n_workers=workers) as s:
            for i in range(3):
                s.train_step(*batch(i))
        params[workers] = m.params
    np.testing.assert_allclose(params[n], params[1], rtol=0, atol=1e-6)


def test_lattice_init_rows_have_the_normal_inits_norm_and_train():
    cfg = engine.tiny.replace(init="lattice")
    m = Model(cfg, seed=0)
    norms = np.linalg.norm(m.param("wte"), axis=1)
    np.testing.assert_allclose(norms, cfg.init_std * np.sqrt(cfg.d_model), rtol=1e-4)
    assert not np.array_equal(m.param("wte"), Model(engine.tiny, seed=0).param("wte"))
    loss, g = m.loss_and_grad(*batch())
    assert np.isfinite(loss) and np.isfinite(g).all()
