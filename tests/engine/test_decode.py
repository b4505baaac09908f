"""The decoding path (engine.decode, engine.generate.BatchDecoder) against numpy references and
against the training forward: the int8 quantiser, the matrix-vector kernel, one fused step
over every layer, batches of sequences at different positions, and how close int8 decode
weights keep a trained model's predictions (perplexity within 1%, the same greedy tokens)."""
from importlib.resources import files

import numpy as np
import pytest

import engine
from engine import Model, ModelConfig, Optimizer, TrainConfig
from engine.decode import DecodeWeights, _matvec, decode_attend, fingerprint, quantize_columns
from engine.generate import BatchDecoder, KVDecoder

RNG = np.random.default_rng(7)
ODD = ModelConfig(vocab_size=37, context=9, d_model=12, n_layers=3, n_heads=3)  # R % 4 != 0


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def test_quantize_columns_is_symmetric_per_column_int8():
    w = randn(13, 6)
    w[:, 2] = 0.0                                     # an all-zero column keeps scale 1
    q, s = np.empty(w.shape, np.int8), np.empty(6, np.float32)
    quantize_columns(q, s, w)
    mx = np.abs(w).max(0)
    ref_s = np.where(mx > 0, mx / 127, 1).astype(np.float32)
    np.testing.assert_allclose(s, ref_s, rtol=1e-6)
    np.testing.assert_array_equal(q, np.round(w / ref_s).astype(np.int8))
    assert np.abs(q).max() == 127 and (q[:, 2] == 0).all()
    assert np.abs(q * s - w).max() <= s.max() / 2 * (1 + 1e-5)     # round-to-nearest


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("R", [16, 7])
@pytest.mark.parametrize("dtype", [np.int8, np.float32])
def test_matvec_against_numpy(B, R, dtype):
    D = 11
    x, bias = randn(B, R), randn(D)
    w = (RNG.integers(-127, 128, (R, D)) if dtype == np.int8 else randn(R, D)).astype(dtype)
    s = RNG.random(D).astype(np.float32) + 0.5
    y, scratch = np.empty((B, D), np.float32), np.empty((4, D), np.float32)
    _matvec(y, x, w, s, bias, scratch)
    ref = (x.astype(np.float64) @ w.astype(np.float64)) * s + bias
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


def test_decode_attend_against_numpy():
    B, L, NH, hs, T, layer = 2, 2, 3, 4, 9, 1
    C = NH * hs
    pos = np.array([3, 5], np.int64)
    qkv = randn(B, 3 * C)
    kc, vc = randn(B, L, NH, T, hs), randn(B, L, NH, T, hs)
    k0, v0 = kc.copy(), vc.copy()
    att = np.empty((B, C), np.float32)
    decode_attend(att, qkv, kc, vc, layer, pos)
    for b, p in enumerate(pos):
        k_new = qkv[b, C:2 * C].reshape(NH, hs)
        v_new = qkv[b, 2 * C:].reshape(NH, hs)
        np.testing.assert_array_equal(kc[b, layer, :, p], k_new)
        np.testing.assert_array_equal(vc[b, layer, :, p], v_new)
        k, v = k0[b, layer].astype(np.float64), v0[b, layer].astype(np.float64)
        k[:, p], v[:, p] = k_new, v_new
        q = qkv[b, :C].reshape(NH, hs).astype(np.float64)
        s = np.einsum("hc,htc->ht", q, k[:, :p + 1]) / np.sqrt(hs)
        w = np.exp(s - s.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        np.testing.assert_allclose(att[b], np.einsum("ht,htc->hc", w, v[:, :p + 1]).reshape(C),
                                   rtol=1e-5, atol=1e-6)
    untouched = np.ones((B, L, NH, T), bool)
    untouched[[0, 1], layer, :, pos] = False
    assert np.array_equal(kc[untouched], k0[untouched])     # only position pos[b] written


@pytest.mark.parametrize("cfg", [engine.tiny, ODD], ids=["tiny", "odd"])
def test_float32_decoding_equals_the_full_forward_at_every_position(cfg):
    m = Model(cfg, seed=3)
    m.params *= 3.0                                  # sharper logits than the init
    ids = list(RNG.integers(0, cfg.vocab_size, cfg.context))
    dec = KVDecoder(m, "float32")
    got = [dec.prefill(ids[:2]).copy()]
    for t in range(2, cfg.context):
        got.append(dec.step(ids[t]).copy())
    assert dec.n == cfg.context
    full = m.logits(np.asarray([ids]))[0]
    np.testing.assert_allclose(np.stack(got), full[1:], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="context length"):
        dec.step(ids[0])


@pytest.mark.parametrize("kind,B", [("float32", 3), ("int8", 3),
                                     ("int8", BatchDecoder.BLAS_BATCH + 1)])
def test_a_batch_of_sequences_at_different_positions_equals_each_decoded_alone(kind, B):
    """Below BatchDecoder.BLAS_BATCH the fused kernel with `kind` weights; from it on, BLAS
    products over the float32 weights (equal to float32 decoding alone)."""
    cfg = ODD
    m = Model(cfg, seed=4)
    m.params *= 3.0
    prompts = [list(RNG.integers(0, cfg.vocab_size, 1 + i % 6)) for i in range(B)]
    nxt = RNG.integers(0, cfg.vocab_size, (3, B))
    batch = BatchDecoder(m, B, kind)
    blas = B >= BatchDecoder.BLAS_BATCH
    first = [batch.prefill(p, row=i).copy() for i, p in enumerate(prompts)]
    steps = [batch.step(nxt[k]).copy() for k in range(3)]
    for i, p in enumerate(prompts):
        alone = KVDecoder(m, "float32" if blas else kind)
        np.testing.assert_array_equal(alone.prefill(p), first[i])
        for k in range(3):
            np.testing.assert_allclose(alone.step(nxt[k, i]), steps[k][i], rtol=1e-5, atol=1e-5)
    assert list(batch.n) == [len(p) + 3 for p in prompts]


def test_stepping_the_leading_rows_leaves_the_others_and_a_moved_row_goes_on_as_it_was():
    cfg = ODD
    m = Model(cfg, seed=6)
    m.params *= 3.0
    dec = BatchDecoder(m, 3)
    for i, p in enumerate(([1, 2], [3], [4, 5, 6])):
        dec.prefill(p, row=i)
    k2 = dec.k[2].copy()
    out = dec.step([7, 8], rows=2)
    assert out.shape == (2, cfg.vocab_size) and list(dec.n) == [3, 2, 3]
    assert np.array_equal(dec.k[2], k2)                      # row 2 untouched
    ref = KVDecoder(m)
    ref.prefill([4, 5, 6])
    want = ref.step(9).copy()
    dec.move(2, 0)                                           # row 2 carries on as row 0
    np.testing.assert_allclose(dec.step([9], rows=1)[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rows"):
        dec.step([1, 2, 3, 4], rows=4)


def test_int8_decoding_is_close_to_float32_on_random_weights():
    cfg = engine.tiny
    m = Model(cfg, seed=5)
    m.params *= 3.0
    ids = list(RNG.integers(0, cfg.vocab_size, cfg.context))
    a, b = KVDecoder(m, "int8"), KVDecoder(m, "float32")
    a.prefill(ids[:3])
    b.prefill(ids[:3])
    for t in ids[3:]:
        la, lb = a.step(t), b.step(t)
        assert np.abs(la - lb).max() < 0.05 * np.abs(lb).max()


def test_decode_weights_are_reused_until_the_parameters_change():
    m = Model(engine.tiny, seed=0)
    w = m.decode_weights("int8")
    assert m.decode_weights("int8") is w and w.matches(m)
    assert m.decode_weights("float32") is not w
    m.params[5] += 1.0                               # an in-place update (an optimizer step)
    assert not w.matches(m)
    fresh = m.decode_weights("int8")
    assert fresh is not w and fresh.matches(m)
    x = RNG.standard_normal(1000).astype(np.float32)
    y = x.copy()
    y[[3, 4]] = y[[4, 3]]                            # a swap changes the fingerprint too
    assert fingerprint(x) != fingerprint(y) and fingerprint(x) == fingerprint(x.copy())
    with pytest.raises(ValueError, match="decode weights"):
        DecodeWeights(m, "bf16")


def _trained_tiny() -> tuple[Model, np.ndarray]:
    """The tiny model trained on bytes of the sample corpus for a few hundred steps (sharp,
    text-like predictions), and held-out byte ids it never saw."""
    root = files("agent.sample_corpus")
    text = b"".join(f.read_bytes() for d in ("datamodel", "expressions", "statements")
                    for f in sorted(root.joinpath(d).iterdir(), key=lambda f: f.name))
    ids = np.frombuffer(text, np.uint8).astype(np.int64)
    train, held = ids[:-4096], ids[-4096:]
    cfg = engine.tiny
    m = Model(cfg, seed=0)
    opt = Optimizer(m.layout, TrainConfig(lr=3e-3, warmup_steps=0))
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = rng.integers(0, train.size - cfg.context - 1, 16)
        x = np.stack([train[i:i + cfg.context] for i in s])
        y = np.stack([train[i + 1:i + cfg.context + 1] for i in s])
        _, grad = m.loss_and_grad(x, y)
        opt.step(m.params, grad, 3e-3)
    return m, held


def test_int8_decoding_keeps_a_trained_models_perplexity_and_greedy_tokens():
    m, held = _trained_tiny()
    T = m.config.context

    def perplexity(kind):
        nats, n = 0.0, 0
        dec = KVDecoder(m, kind)
        for s in range(0, held.size - T, 97):
            w = held[s:s + T]
            logits = dec.prefill([int(w[0])])
            for t in range(1, T):
                z = logits.astype(np.float64)
                nats += np.log(np.exp(z - z.max()).sum()) + z.max() - z[w[t]]
                n += 1
                if t < T - 1:
                    logits = dec.step(int(w[t]))
        return float(np.exp(nats / n))

    p32, p8 = perplexity("float32"), perplexity("int8")
    assert p32 < 40                                  # learned something (uniform is 320)
    assert abs(p8 / p32 - 1) < 0.01, (p8, p32)
    prompts = [list(map(int, held[s:s + 4])) for s in range(0, 2000, 250)]
    for p in prompts:
        assert np.array_equal(m.generate(p, 8, temperature=0, weights="int8"),
                              m.generate(p, 8, temperature=0, weights="float32"))
