"""The recipe's options of the model (issue "A modern recipe": relu^2, QK-norm, rotary
positions, untied head, logit soft-capping, zero-initialised projections), each alone and
all together, with the engine's usual proofs: the float64 reference's logits, every
gradient by central differences, KV-cache decoding (float32, int8, batched, BLAS) equal to
the full forward, N workers equal to one, vocabulary growth, checkpoints, and old
configurations loading as the architecture they were trained with."""
import json

import numpy as np
import pytest

import engine
from engine import (Model, ModelConfig, Optimizer, ThreadedTrainingSystem, TrainConfig,
                    load_checkpoint, save_checkpoint)
from engine.generate import BatchDecoder, KVDecoder
from tests.engine.reference import forward_logits, mean_loss
from tests.engine.test_model import batch, merges_for, pdict

MICRO = ModelConfig(vocab_size=11, context=6, d_model=8, n_layers=2, n_heads=2)
OPTIONS = {
    "relu2": dict(mlp="relu2"),
    "qk_norm": dict(qk_norm=True),
    "rope": dict(pos="rope"),
    "untied": dict(tie_head=False),
    "softcap": dict(softcap=2.0),
    "all": dict(mlp="relu2", qk_norm=True, pos="rope", tie_head=False, softcap=2.0,
                zero_proj=True),
}
IDS = list(OPTIONS)


def model(opts, cfg=MICRO, seed=1, scale=3.0):
    m = Model(cfg.replace(**opts), seed=seed)
    m.params[...] = Model(cfg.replace(**{**opts, "zero_proj": False}), seed=seed).params * scale
    return m


def test_the_layout_follows_the_options():
    names = Model(MICRO.replace(**OPTIONS["all"])).param_names()
    assert "wpe" not in names and names[0] == "wte" and names[-1] == "head"
    assert names[1:7] == ["h.0.ln1.w", "h.0.ln1.b", "h.0.attn.qkv.w", "h.0.attn.qkv.b",
                          "h.0.attn.q_norm.w", "h.0.attn.k_norm.w"]
    m = Model(MICRO.replace(**OPTIONS["all"]), seed=0)
    assert (m.param("h.1.attn.q_norm.w") == 1).all() and m.param("head").shape == (11, 8)
    assert not m.param("h.0.attn.proj.w").any() and not m.param("h.1.mlp.proj.w").any()
    assert m.param("h.0.attn.qkv.w").std() > 0.01


def test_an_old_configuration_loads_as_gpt2():
    """A checkpoint's config JSON written before the options existed: GPT-2, unchanged."""
    old = {k: v for k, v in json.loads(MICRO.to_json()).items()
           if k in ("vocab_size", "context", "d_model", "n_layers", "n_heads", "init", "init_std")}
    cfg = ModelConfig.from_json(json.dumps(old))
    assert cfg == MICRO and "wpe" in Model(cfg).param_names()
    assert (cfg.mlp, cfg.tie_head, cfg.softcap, cfg.qk_norm, cfg.pos) == (
        "gelu", True, 0.0, False, "learned")


@pytest.mark.parametrize("bad,match", [(dict(mlp="swish"), "mlp"), (dict(pos="alibi"), "pos"),
                                       (dict(softcap=-1.0), "softcap"),
                                       (dict(pos="rope", d_model=6, n_heads=2), "even head size")])
def test_bad_options_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        MICRO.replace(**bad)


@pytest.mark.parametrize("name", IDS)
def test_logits_and_loss_match_the_reference(name):
    m = model(OPTIONS[name])
    cfg = m.config
    x, y = batch(cfg, 3, 6, seed=3, ignore=2)
    np.testing.assert_allclose(m.logits(x), forward_logits(pdict(m), cfg, x),
                               rtol=1e-4, atol=1e-4)
    loss, _ = m.loss_and_grad(x, y)
    assert loss == pytest.approx(mean_loss(pdict(m), cfg, x, y), rel=1e-5)
    assert m.loss(x, y)[0] / m.loss(x, y)[1] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("name", IDS)
def test_every_gradient_by_central_differences(name):
    m = model(OPTIONS[name], scale=2.0)
    cfg = m.config
    x, y = batch(cfg, 2, 6, seed=7, ignore=2)
    _, grad = m.loss_and_grad(x, y)
    p64 = m.params.astype(np.float64)
    eps = 1e-5
    num = np.empty_like(p64)
    for i in range(p64.size):
        old = p64[i]
        p64[i] = old + eps
        fp = mean_loss(m.layout.views(p64), cfg, x, y)
        p64[i] = old - eps
        fm = mean_loss(m.layout.views(p64), cfg, x, y)
        p64[i] = old
        num[i] = (fp - fm) / (2 * eps)
    for pname in m.param_names():
        a, b = m.layout.view(grad, pname), m.layout.view(num, pname)
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-3)
        assert err < 2e-3, f"{name} {pname}: relative gradient error {err:.2e}"


def test_zero_initialised_projections_still_learn():
    m = Model(MICRO.replace(zero_proj=True), seed=0)
    x, y = batch(MICRO, 2, 6, seed=1)
    _, g = m.loss_and_grad(x, y)
    assert np.abs(m.layout.view(g, "h.1.mlp.proj.w")).max() > 0
    assert np.abs(m.layout.view(g, "h.0.attn.proj.w")).max() > 0


@pytest.mark.parametrize("name", IDS)
def test_float32_decoding_equals_the_full_forward_at_every_position(name):
    m = model(OPTIONS[name])
    cfg = m.config
    ids = list(np.random.default_rng(2).integers(0, cfg.vocab_size, cfg.context))
    dec = KVDecoder(m, "float32")
    got = [dec.prefill(ids[:2]).copy()]
    for t in range(2, cfg.context):
        got.append(dec.step(ids[t]).copy())
    full = m.logits(np.asarray([ids]))[0]
    np.testing.assert_allclose(np.stack(got), full[1:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,B", [("float32", 3), ("int8", 3),
                                     ("int8", BatchDecoder.BLAS_BATCH + 1)])
def test_a_batch_at_different_positions_equals_each_decoded_alone(kind, B):
    m = model(OPTIONS["all"])
    cfg = m.config
    rng = np.random.default_rng(4)
    prompts = [list(rng.integers(0, cfg.vocab_size, 1 + i % 4)) for i in range(B)]
    nxt = rng.integers(0, cfg.vocab_size, (2, B))
    dec = BatchDecoder(m, B, kind)
    blas = B >= BatchDecoder.BLAS_BATCH
    first = [dec.prefill(p, row=i).copy() for i, p in enumerate(prompts)]
    steps = [dec.step(nxt[k]).copy() for k in range(2)]
    for i, p in enumerate(prompts):
        alone = KVDecoder(m, "float32" if blas else kind)
        np.testing.assert_array_equal(alone.prefill(p), first[i])
        for k in range(2):
            np.testing.assert_allclose(alone.step(nxt[k, i]), steps[k][i], rtol=1e-5, atol=1e-5)


def test_int8_decoding_stays_close_to_float32():
    m = model(OPTIONS["all"], cfg=engine.tiny, scale=2.0)
    ids = list(np.random.default_rng(5).integers(0, m.config.vocab_size, m.config.context))
    a, b = KVDecoder(m, "int8"), KVDecoder(m, "float32")
    a.prefill(ids[:3])
    b.prefill(ids[:3])
    for t in ids[3:]:
        la, lb = a.step(t), b.step(t)
        assert np.abs(la - lb).max() < 0.05 * np.abs(lb).max()


def test_generation_past_the_context_slides_its_window():
    m = model(OPTIONS["all"])
    out = m.generate([1, 2], 3 * MICRO.context, seed=0)
    assert len(out) == 3 * MICRO.context and out.max() < MICRO.vocab_size


@pytest.mark.parametrize("n", [2, 3])
def test_n_workers_equal_one_worker(n):
    cfg = engine.tiny.replace(**OPTIONS["all"])
    tcfg = TrainConfig(lr=3e-3, warmup_steps=0)
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, cfg.vocab_size, (5, 12)), rng.integers(0, cfg.vocab_size, (5, 12)))
            for _ in range(3)]

    def run(workers):
        m = Model(cfg, seed=0)
        with ThreadedTrainingSystem(m, tcfg, n_workers=workers) as s:
            losses = [s.train_step(x, y).loss for x, y in data]
        return m, losses

    ref = Model(cfg, seed=0)
    opt = Optimizer(ref.layout, tcfg)
    for x, y in data:
        _, g = ref.loss_and_grad(x, y)
        opt.step(ref.params, g, engine.lr_at(opt.t, tcfg))
    (m1, l1), (mn, ln), (again, _) = run(1), run(n), run(n)
    assert again.params.tobytes() == mn.params.tobytes()
    np.testing.assert_allclose(m1.params, ref.params, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mn.params, m1.params, rtol=0, atol=1e-5)
    assert l1 == pytest.approx(ln, rel=1e-5)
    assert np.abs(mn.params - Model(cfg, seed=0).params).max() > 1e-3


def test_growing_the_vocabulary_grows_the_untied_head_and_keeps_old_logits():
    cfg = engine.tiny.replace(**OPTIONS["all"])
    m = model(OPTIONS["all"], cfg=engine.tiny, scale=1.0)
    opt = Optimizer(m.layout, TrainConfig(lr=1e-3))
    x, _ = batch(cfg, 2, 8, seed=1)
    before, old = m.logits(x), pdict(m, np.float32)
    ema = engine.EMA(m.params, m.layout)
    V = cfg.vocab_size
    m.grow_vocab(V + 9, merges=merges_for(V, 9))
    opt.grow(m.layout)
    ema.grow(m.layout, m.params)
    np.testing.assert_allclose(m.logits(x)[..., :V], before, rtol=1e-5, atol=1e-6)
    for name in ("wte", "head"):
        np.testing.assert_array_equal(m.param(name)[:V], old[name])
        a, b, _ = merges_for(V, 9)[0]
        np.testing.assert_allclose(m.param(name)[V], (old[name][a] + old[name][b]) / 2, atol=1e-7)
        np.testing.assert_array_equal(ema.model(m.config).param(name)[V:], m.param(name)[V:])
    assert m.params.size == opt.m.size == m.layout.size


def test_a_checkpoint_keeps_the_architecture(tmp_path):
    cfg = engine.tiny.replace(**OPTIONS["all"])
    m = Model(cfg, seed=3)
    tcfg = TrainConfig(lr=1e-3)
    opt = Optimizer(m.layout, tcfg)
    path = tmp_path / "c.safetensors"
    sha = save_checkpoint(path, m, opt, tcfg, step=1, cycle=1, tokenizer_sha256="ab" * 32)
    ck = load_checkpoint(path, expected_tokenizer_sha256="ab" * 32, expected_sha256=sha)
    assert ck.model.config == cfg and ck.model.params.tobytes() == m.params.tobytes()
    x, _ = batch(cfg, 1, 5, seed=2)
    np.testing.assert_array_equal(ck.model.logits(x), m.logits(x))
