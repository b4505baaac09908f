"""Muon (engine.optim, optimizer="muon"): Newton-Schulz against a float64 numpy loop and
against the SVD's U V^T, one step against a plain numpy Muon + AdamW written from the
papers, N workers equal to one, a failing matrix phase rolled back, and checkpoints."""
import math

import numpy as np
import pytest

import engine
from engine import (Model, Optimizer, ThreadedTrainingSystem, TrainConfig, WorkerError,
                    load_checkpoint, save_checkpoint)
from engine import optim
from engine.params import is_linear_weight

CFG = engine.tiny.replace(mlp="relu2")
MUON = TrainConfig(optimizer="muon", lr=3e-3, warmup_steps=0, weight_decay=0.1)


def ns_reference(g, steps=5):
    a, b, c = optim.NS_COEFFS
    x = g.astype(np.float64) / (np.linalg.norm(g) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(8, 24), (32, 8), (16, 16)])
def test_newton_schulz_against_float64_and_the_svd(shape):
    g = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x = optim.newton_schulz(g)
    assert x.shape == shape and x.dtype == np.float32
    np.testing.assert_allclose(x, ns_reference(g), rtol=1e-3, atol=1e-4)
    u, s, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
    sv = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    assert 0.5 < sv.min() and sv.max() < 1.3              # about orthogonal
    cos = (x * (u @ vt)).sum() / (np.linalg.norm(x) * np.linalg.norm(u @ vt))
    assert cos > 0.95                                     # towards U V^T


def test_the_blocks_are_the_hidden_matrices_with_qkv_in_three():
    layout = Model(CFG).layout
    blocks = optim.muon_blocks(layout)
    C = CFG.d_model
    names = [n for n in layout.names if is_linear_weight(n)]
    assert len(blocks) == len(names) + 2 * CFG.n_layers
    q = [b for b in blocks if b[0] == layout.offsets[layout.index("h.0.attn.qkv.w")]]
    assert [(b[1], b[2], b[3], b[4]) for b in q] == [(C, 3 * C, 0, C), (C, 3 * C, C, C),
                                                     (C, 3 * C, 2 * C, C)]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_the_workers_shares_cover_every_block_once_and_evenly(n):
    opt = Optimizer(Model(engine.small.replace(mlp="relu2")).layout, MUON)
    shares = opt.block_shares(n)
    blocks = optim.muon_blocks(opt.layout)
    assert len(shares) == n
    assert sorted(i for share in shares for i in share) == list(range(len(blocks)))

    def cost(i):
        _, rows, _, _, cols = blocks[i]
        m, k = min(rows, cols), max(rows, cols)
        return 2 * m * m * k + m ** 3

    loads = [sum(cost(i) for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(cost(i) for i in range(len(blocks)))
    # finished share by share, in any order, the update equals the whole phase's
    m = Model(CFG, seed=0)
    a, b = Optimizer(m.layout, MUON), Optimizer(m.layout, MUON)
    _, g = m.loss_and_grad(*data(1)[0])
    pa, pb = m.params.copy(), m.params.copy()
    for opt_, p in ((a, pa), (b, pb)):
        opt_.update_segment(p, g, 0, p.size, opt_.hyper(MUON.lr), 1.0)
    a.finish_step(pa, a.hyper(MUON.lr))
    for share in reversed(b.block_shares(3)):
        b.finish_step(pb, b.hyper(MUON.lr), share)
    assert pa.tobytes() == pb.tobytes()


def muon_reference(model, grad, lr, tcfg, state):
    """One step written from the papers: Muon with Nesterov momentum on each hidden matrix
    (q, k, v apart), scaled 0.2 sqrt(max(rows, cols)), decoupled decay; AdamW elsewhere."""
    p = {n: model.param(n).astype(np.float64).copy() for n in model.param_names()}
    g = {n: model.layout.view(grad, n).astype(np.float64) for n in model.param_names()}
    t = state.setdefault("t", 0) + 1
    state["t"] = t
    out = {}
    for n in model.param_names():
        m = state.setdefault(("m", n), np.zeros_like(p[n]))
        if is_linear_weight(n):
            m[...] = tcfg.muon_momentum * m + g[n]
            d = g[n] + tcfg.muon_momentum * m
            blocks = np.split(d, 3, axis=1) if n.endswith("qkv.w") else [d]
            o = np.concatenate([ns_reference(b) * 0.2 * math.sqrt(max(b.shape)) for b in blocks],
                               axis=1)
            out[n] = p[n] * (1 - lr * tcfg.weight_decay) - lr * o
        else:
            v = state.setdefault(("v", n), np.zeros_like(p[n]))
            m[...] = tcfg.beta1 * m + (1 - tcfg.beta1) * g[n]
            v[...] = tcfg.beta2 * v + (1 - tcfg.beta2) * g[n] ** 2
            mh, vh = m / (1 - tcfg.beta1 ** t), v / (1 - tcfg.beta2 ** t)
            wd = tcfg.weight_decay if n in ("wte", "wpe", "head") else 0.0
            out[n] = p[n] - lr * (mh / (np.sqrt(vh) + tcfg.eps) + wd * p[n])
    return out


def test_steps_match_the_reference():
    m = Model(CFG, seed=0)
    tcfg = MUON.replace(grad_clip=None)
    opt = Optimizer(m.layout, tcfg)
    rng = np.random.default_rng(1)
    state: dict = {}
    for _ in range(3):
        x, y = rng.integers(0, CFG.vocab_size, (2, 8)), rng.integers(0, CFG.vocab_size, (2, 8))
        _, g = m.loss_and_grad(x, y)
        want = muon_reference(m, g, 3e-3, tcfg, state)
        opt.step(m.params, g, 3e-3)
        for n, w in want.items():
            np.testing.assert_allclose(m.param(n), w, rtol=1e-4, atol=2e-6, err_msg=n)


def data(steps=3):
    rng = np.random.default_rng(0)
    return [(rng.integers(0, CFG.vocab_size, (5, 12)), rng.integers(0, CFG.vocab_size, (5, 12)))
            for _ in range(steps)]


@pytest.mark.parametrize("n", [2, 3])
def test_n_workers_equal_one_worker(n):
    def run(workers):
        m = Model(CFG, seed=0)
        with ThreadedTrainingSystem(m, MUON, n_workers=workers) as s:
            losses = [s.train_step(x, y).loss for x, y in data()]
        return m, losses

    ref = Model(CFG, seed=0)
    opt = Optimizer(ref.layout, MUON)
    for x, y in data():
        _, g = ref.loss_and_grad(x, y)
        opt.step(ref.params, g, MUON.lr)
    (m1, l1), (mn, ln), (again, _) = run(1), run(n), run(n)
    assert again.params.tobytes() == mn.params.tobytes()
    np.testing.assert_allclose(m1.params, ref.params, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mn.params, m1.params, rtol=0, atol=1e-5)
    assert l1 == pytest.approx(ln, rel=1e-5)


def test_a_failing_matrix_phase_rolls_the_step_back(monkeypatch):
    m = Model(CFG, seed=0)
    with ThreadedTrainingSystem(m, MUON, n_workers=2) as s:
        s.train_step(*data(1)[0])
        before = m.params.copy(), s.optimizer.m.copy(), s.optimizer.v.copy()

        def broken(g, steps=5):
            raise FloatingPointError("no")

        monkeypatch.setattr(optim, "newton_schulz", broken)
        with pytest.raises(WorkerError, match="matrix phase failed"):
            s.train_step(*data(2)[1])
    assert m.params.tobytes() == before[0].tobytes()
    assert s.optimizer.m.tobytes() == before[1].tobytes()
    assert s.optimizer.v.tobytes() == before[2].tobytes()


def test_the_state_survives_a_checkpoint(tmp_path):
    m = Model(CFG, seed=0)
    opt = Optimizer(m.layout, MUON)
    for x, y in data(2):
        opt.step(m.params, m.loss_and_grad(x, y)[1], MUON.lr)
    path = tmp_path / "c.safetensors"
    sha = save_checkpoint(path, m, opt, MUON, step=2, cycle=1, tokenizer_sha256="ab" * 32)
    ck = load_checkpoint(path, expected_tokenizer_sha256="ab" * 32, expected_sha256=sha)
    assert ck.train_config.optimizer == "muon" and ck.optimizer.t == 2
    assert ck.optimizer.m.tobytes() == opt.m.tobytes() and ck.optimizer.v.tobytes() == opt.v.tobytes()
    x, y = data(3)[2]
    g = m.loss_and_grad(x, y)[1]
    opt.step(m.params, g, MUON.lr)
    ck.optimizer.step(ck.model.params, g, MUON.lr)
    assert ck.model.params.tobytes() == m.params.tobytes()      # it resumes exactly
