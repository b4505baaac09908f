"""The model against the float64 numpy reference: layout, logits, loss, every gradient by
central finite differences, overfitting, KV-cache generation and vocabulary growth."""
import numpy as np
import pytest

import engine
from engine import Model, ModelConfig, Optimizer, TrainConfig
from tests.engine.reference import forward_logits, mean_loss

MICRO = ModelConfig(vocab_size=11, context=5, d_model=8, n_layers=2, n_heads=2)


def batch(cfg, B, T, seed=0, ignore=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cfg.vocab_size, (B, T))
    y = rng.integers(0, cfg.vocab_size, (B, T))
    if ignore:
        y.reshape(-1)[rng.choice(B * T, ignore, replace=False)] = -1
    return x, y


def pdict(model, dtype=np.float64):
    return {n: model.param(n).astype(dtype) for n in model.param_names()}


def test_layout_is_exactly_the_named_tensors_in_order():
    cfg = engine.tiny
    m = Model(cfg)
    names = m.param_names()
    C = cfg.d_model
    assert names[:2] == ["wte", "wpe"] and names[-2:] == ["lnf.w", "lnf.b"]
    assert names[2:14] == [f"h.0.{s}" for s in (
        "ln1.w", "ln1.b", "attn.qkv.w", "attn.qkv.b", "attn.proj.w", "attn.proj.b",
        "ln2.w", "ln2.b", "mlp.fc.w", "mlp.fc.b", "mlp.proj.w", "mlp.proj.b")]
    assert m.param("h.1.attn.qkv.w").shape == (C, 3 * C)
    assert m.param("h.1.mlp.proj.w").shape == (4 * C, C)
    concat = np.concatenate([m.param(n).reshape(-1) for n in names])
    assert m.params.dtype == np.float32 and m.params.ndim == 1
    assert np.array_equal(concat, m.params)
    # views share memory with the flat array
    m.param("lnf.b")[0] = 42.0
    assert m.params[-C] == 42.0


def test_init_statistics():
    cfg = ModelConfig(vocab_size=500, context=32, d_model=64, n_layers=4, n_heads=4)
    m = Model(cfg, seed=3)
    assert abs(m.param("wte").std() - 0.02) < 0.001
    assert abs(m.param("h.2.mlp.proj.w").std() - 0.02 / np.sqrt(8)) < 0.0005
    assert (m.param("h.0.ln1.w") == 1).all() and (m.param("h.3.mlp.fc.b") == 0).all()
    assert np.array_equal(Model(cfg, seed=3).params, m.params)
    assert not np.array_equal(Model(cfg, seed=4).params, m.params)


@pytest.mark.parametrize("B,T", [(3, 5), (1, 1), (2, 2)])
def test_logits_and_loss_match_reference(B, T):
    m = Model(MICRO, seed=1)
    x, y = batch(MICRO, B, T, seed=B + T, ignore=1 if B * T > 2 else 0)
    np.testing.assert_allclose(m.logits(x), forward_logits(pdict(m), MICRO, x),
                               rtol=1e-4, atol=1e-5)
    loss, _ = m.loss_and_grad(x, y)
    assert loss == pytest.approx(mean_loss(pdict(m), MICRO, x, y), rel=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_every_gradient_by_central_differences(lam, monkeypatch):
    """All parameters of a micro model, against the float64 reference's loss."""
    m = Model(MICRO, seed=2)
    # scale params up a little so every path carries signal
    m.params *= 5.0
    x, y = batch(MICRO, 2, 5, seed=7, ignore=2)
    idx = q = None
    if lam:
        rng = np.random.default_rng(0)
        idx = np.stack([rng.permutation(MICRO.vocab_size)[:3] for _ in range(MICRO.vocab_size)]
                       ).astype(np.int32)
        q = rng.random(idx.shape).astype(np.float32)
        q /= q.sum(1, keepdims=True)
        monkeypatch.setattr(m, "_neighbour_tables", lambda lam_: (idx, q) if lam_ else
                            (np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float32)))
    _, grad = m.loss_and_grad(x, y, crystalline_weight=lam)
    p64 = m.params.astype(np.float64)
    layout = m.layout
    eps = 1e-5
    num = np.empty_like(p64)
    for i in range(p64.size):
        old = p64[i]
        p64[i] = old + eps
        fp = mean_loss(layout.views(p64), MICRO, x, y, idx, q, lam)
        p64[i] = old - eps
        fm = mean_loss(layout.views(p64), MICRO, x, y, idx, q, lam)
        p64[i] = old
        num[i] = (fp - fm) / (2 * eps)
    for name in m.param_names():
        a, b = layout.view(grad, name), layout.view(num, name)
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-3)
        assert err < 2e-3, f"{name}: relative gradient error {err:.2e}"


def test_all_ignored_targets_give_zero_loss_and_gradient():
    m = Model(engine.tiny)
    x, _ = batch(engine.tiny, 2, 4)
    loss, grad = m.loss_and_grad(x, np.full((2, 4), -1))
    assert loss == 0.0 and not grad.any()


def test_bad_inputs_are_refused_with_a_clear_error():
    m = Model(engine.tiny)
    with pytest.raises(ValueError, match="context"):
        m.loss_and_grad(np.zeros((1, engine.tiny.context + 1), int),
                        np.zeros((1, engine.tiny.context + 1), int))
    with pytest.raises(ValueError, match="token ids"):
        m.logits(np.full((1, 3), engine.tiny.vocab_size))
    with pytest.raises(ValueError, match="targets"):
        m.loss_and_grad(np.zeros((1, 3), int), np.zeros((1, 4), int))


def test_tiny_model_overfits_a_short_text():
    text = b"the crystal lattice learns its own song. "
    cfg = engine.tiny.replace(vocab_size=256, context=16)
    m = Model(cfg, seed=0)
    ids = np.frombuffer(text * 4, np.uint8).astype(np.int64)
    starts = np.arange(0, len(text), 3)
    x = np.stack([ids[s:s + 16] for s in starts])
    y = np.stack([ids[s + 1:s + 17] for s in starts])
    opt = Optimizer(m.layout, TrainConfig(lr=1e-2, weight_decay=0.0, warmup_steps=0))
    for _ in range(300):
        loss, grad = m.loss_and_grad(x, y)
        opt.step(m.params, grad, 1e-2)
        if loss < 0.05:
            break
    assert loss < 0.05


def test_generation_is_reproducible_and_respects_sampling_options():
    cfg = engine.tiny
    m = Model(cfg, seed=1)
    m.params *= 4.0
    a = m.generate([1, 2, 3], 40, temperature=1.0, seed=11)
    b = m.generate([1, 2, 3], 40, temperature=1.0, seed=11)
    c = m.generate([1, 2, 3], 40, temperature=1.0, seed=12)
    assert len(a) == 40 and np.array_equal(a, b) and not np.array_equal(a, c)
    greedy = m.generate([1, 2, 3], 5, temperature=0)
    logits = m.logits(np.asarray([[1, 2, 3]]))[0, -1]
    assert greedy[0] == int(np.argmax(logits))
    top1 = m.generate([1, 2, 3], 5, temperature=1.0, top_k=1, seed=3)
    assert np.array_equal(top1, greedy)
    tiny_p = m.generate([1, 2, 3], 5, temperature=1.0, top_p=1e-9, seed=4)
    assert np.array_equal(tiny_p, greedy)
    # stop sequence ends the stream
    stop = [int(greedy[1])]
    assert list(m.generate([1, 2, 3], 5, temperature=0, stop=[stop]))[-1] == stop[0]
    # longer than the context: sliding window keeps going
    assert len(m.generate([1], 3 * cfg.context, seed=0)) == 3 * cfg.context


def merges_for(V, added):
    """(a, b, z) triples making ids V..V+added-1 as a tokenizer does: some from two old
    tokens, some from tokens just added (in merge order), with a merge onto an old token
    and a second merge onto a new one mixed in (both make no new id)."""
    out = []
    for z in range(V, V + added):
        k = z - V
        a = k * 7 % V if k % 3 == 0 else z - 1            # every third from old tokens only
        b = (k * 13 + 5) % V if k % 2 == 0 else V + k // 2 if k > 1 else 42
        out.append((a, b, z))
        if k == 4:
            out += [(3, 9, 100), (1, 2, V + 1)]           # z already exists: not read
    return out


def merged_rows_reference(old_wte, merges):
    """The rows a merge-initialised growth appends: a plain loop in float64."""
    rows = [r.astype(np.float64) for r in old_wte]
    for a, b, z in merges:
        if z == len(rows):
            rows.append((rows[a] + rows[b]) / 2)
    return np.array(rows[len(old_wte):])


@pytest.mark.parametrize("by_merges", [False, True])
def test_grow_vocab_keeps_old_logits_and_training_continues(by_merges):
    cfg = engine.tiny
    m = Model(cfg, seed=0)
    opt = Optimizer(m.layout, TrainConfig(lr=1e-3))
    x, y = batch(cfg, 2, 8, seed=1)
    _, g = m.loss_and_grad(x, y)
    opt.step(m.params, g, 1e-3)
    before = m.logits(x)
    old = pdict(m, np.float32)
    merges = merges_for(cfg.vocab_size, 17)
    m.grow_vocab(cfg.vocab_size + 17, merges=merges if by_merges else None)
    opt.grow(m.layout)
    assert m.config.vocab_size == cfg.vocab_size + 17
    after = m.logits(x)
    # unchanged up to float32 round-off (BLAS blocks a wider matrix differently)
    np.testing.assert_allclose(after[..., :cfg.vocab_size], before, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.param("wte")[:cfg.vocab_size], old["wte"])
    for name in m.param_names()[1:]:
        np.testing.assert_array_equal(m.param(name), old[name])
    expect = (merged_rows_reference(old["wte"], merges) if by_merges
              else np.broadcast_to(old["wte"].mean(0), (17, cfg.d_model)))
    np.testing.assert_allclose(m.param("wte")[cfg.vocab_size:], expect, atol=1e-7)
    if by_merges:       # the rows differ from one another (not all at one mean)
        assert len({r.tobytes() for r in m.param("wte")[cfg.vocab_size:]}) == 17
    assert not opt.m[cfg.vocab_size * cfg.d_model:(cfg.vocab_size + 17) * cfg.d_model].any()
    # new tokens appear in the data: their rows get gradient, loss stays finite
    x2 = x.copy()
    x2[0, :4] = cfg.vocab_size + np.arange(4)
    y2 = y.copy()
    y2[1, :4] = cfg.vocab_size + 10
    loss, g = m.loss_and_grad(x2, y2)
    assert np.isfinite(loss)
    gw = m.layout.view(g, "wte")
    assert np.abs(gw[cfg.vocab_size:cfg.vocab_size + 4]).sum(1).min() > 0
    assert np.abs(gw[cfg.vocab_size + 10]).sum() > 0
    opt.step(m.params, g, 1e-3)
    assert np.isfinite(m.params).all()
    with pytest.raises(ValueError, match="shrink"):
        m.grow_vocab(5)


def test_grow_vocab_refuses_merges_that_do_not_make_every_new_row():
    cfg = engine.tiny
    m = Model(cfg, seed=0)
    V = cfg.vocab_size
    with pytest.raises(ValueError, match=f"no merge makes new token {V + 1}"):
        m.grow_vocab(V + 2, merges=[(1, 2, V)])
    with pytest.raises(ValueError, match="not older"):
        m.grow_vocab(V + 1, merges=[(V, 2, V)])
    assert m.config.vocab_size == V and m.params.size == m.layout.size   # nothing changed


def test_gradient_does_not_depend_on_what_the_buffer_held():
    """forward_backward zeroes only the accumulated tensors; matmuls overwrite the rest."""
    m = Model(engine.tiny, seed=0)
    x, y = batch(engine.tiny, 2, 8, seed=4)
    _, ref = m.loss_and_grad(x, y)
    dirty = np.full(m.num_params, np.nan, np.float32)
    m.forward_backward(m.workspace(2, 8), *m._check_inputs(x, y), dirty)
    assert dirty.tobytes() == ref.tobytes()


def test_sampling_edge_cases_are_exact_or_refused():
    from engine.generate import sample_next

    rng = np.random.default_rng(0)
    logits = np.array([1.0, 4.0, 2.0, 3.0], np.float32)
    assert sample_next(logits, rng, temperature=0) == 1
    assert sample_next(logits, rng, temperature=1e-320) == 1        # z overflows: greedy
    assert {sample_next(logits, rng, top_p=0.0) for _ in range(20)} == {1}
    assert {sample_next(logits, rng, top_k=1) for _ in range(20)} == {1}
    assert {sample_next(logits, rng, top_k=2) for _ in range(200)} == {1, 3}
    assert len({sample_next(logits, rng, top_k=99) for _ in range(400)}) == 4   # k > V: all
    for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=0),
                dict(top_p=1.5), dict(top_p=-0.1)):
        with pytest.raises(ValueError):
            sample_next(logits, rng, **bad)
    with pytest.raises(ValueError, match="NaN or Inf"):
        sample_next(np.array([1.0, np.nan, 2.0], np.float32), rng)


def test_a_decoder_keeps_working_when_the_vocabulary_grows_under_it():
    from engine.generate import KVDecoder

    m = Model(engine.tiny, seed=0)
    dec = KVDecoder(m, "float32")
    dec.prefill([1, 2, 3])
    m.grow_vocab(engine.tiny.vocab_size + 7)
    logits = dec.step(4)
    assert logits.shape == (engine.tiny.vocab_size + 7,)
    full = m.logits(np.array([[1, 2, 3, 4]]))[0, -1]
    np.testing.assert_allclose(logits, full, rtol=1e-4, atol=1e-5)
