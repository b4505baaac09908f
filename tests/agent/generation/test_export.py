"""`cllm export`'s GGUF against what it exports: GPT-2's byte stand-ins, every tensor under
llama.cpp's gpt2 name with our values (linear weights transposed), the tokenizer's tokens,
merges and control tokens read back with the `gguf` package's reader, refusals for the
architectures llama.cpp's gpt2 graph does not compute; and (slow) the file run in real
llama.cpp (llama-cpp-python), whose logits on the same token ids match our forward and whose
greedy continuation is ours."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.generation.export import (ExportError, architecture, byte_chars, export_gguf,
                                     gguf_tensors, token_texts, unsupported)
from engine.config import ModelConfig
from engine.model import Model
from engine.tokenizer import Tokenizer

TEXT = ("def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n"
        "        self.x = x\n        self.y = y\n\n# the sum of the points' coordinates\n") * 20
CFG = ModelConfig(vocab_size=257, context=32, d_model=64, n_layers=2, n_heads=4)


def small_model(seed: int = 0, **arch) -> tuple[Model, Tokenizer]:
    """A tokenizer learned on TEXT and a model at its size with spread-out weights: peaked
    logits, so a greedy continuation does not hang on rounding."""
    tok = Tokenizer()
    tok.learn([TEXT], max_new_tokens=80)
    cfg = dataclasses.replace(CFG, vocab_size=len(tok), **arch)
    model = Model(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    flat = model.params.copy()
    for name, view in model.layout.views(flat).items():
        if name.endswith(".b"):
            view[...] = rng.normal(0, 0.1, view.shape)
        elif ".ln" in name or name.startswith("lnf"):
            view[...] = 1.0 + rng.normal(0, 0.1, view.shape)
        else:
            view[...] = rng.normal(0, 0.4 if name in ("wte", "wpe", "head") else 0.15,
                                   view.shape)
    model.set_params(flat)
    return model, tok


def test_byte_stand_ins_are_gpt2s():
    chars = byte_chars()
    assert len(set(chars)) == 256
    assert chars[ord("A")] == "A" and chars[ord("~")] == "~" and chars[0xE9] == "é"
    # the stand-ins every GPT-2 vocabulary shows: space, newline, tab, byte 0, byte 0x7f
    assert chars[0x20] == "Ġ" and chars[0x0A] == "Ċ" and chars[0x09] == "ĉ"
    assert chars[0] == "Ā" and chars[0x7F] == "ġ" and chars[0xAD] == "Ń"


def test_tokens_are_their_bytes_and_the_end_of_document_token_is_a_control_token():
    _, tok = small_model()
    texts, types = token_texts(tok)
    back = {c: b for b, c in enumerate(byte_chars())}
    for i, (t, ty) in enumerate(zip(texts, types)):
        if i == tok.eod_id:
            assert (t, ty) == ("<|eod|>", 3)
        else:
            assert bytes(back[c] for c in t) == tok.token_bytes(i) and ty == 1


def test_the_file_holds_our_tensors_under_gpt2_names_and_our_tokenizer(tmp_path):
    import gguf     # a core dependency (the writer cllm export uses)
    model, tok = small_model()
    info = export_gguf(model, tok, tmp_path / "m.gguf")
    assert info["tensors"] == 2 + 12 * CFG.n_layers + 2 and info["vocab_size"] == len(tok)
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    field = lambda k: r.fields[k].contents()          # noqa: E731
    assert field("general.architecture") == "gpt2"
    assert field("gpt2.context_length") == CFG.context
    assert field("gpt2.block_count") == CFG.n_layers
    assert field("gpt2.attention.head_count") == CFG.n_heads
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.tokens") == token_texts(tok)[0]
    merges = field("tokenizer.ggml.merges")
    assert len(merges) == len(tok.merges)
    a, b, z = tok.merges[0]
    assert merges[0] == f"{token_texts(tok)[0][a]} {token_texts(tok)[0][b]}"
    assert field("tokenizer.ggml.eos_token_id") == tok.eod_id
    p = model.layout.views(model.params)
    got = {t.name: np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist())))
           for t in r.tensors}
    assert np.array_equal(got["token_embd.weight"], p["wte"])
    assert np.array_equal(got["blk.1.attn_qkv.weight"], p["h.1.attn.qkv.w"].T)
    assert np.array_equal(got["blk.0.ffn_down.weight"], p["h.0.mlp.proj.w"].T)
    assert np.array_equal(got["output_norm.bias"], p["lnf.b"])
    assert "output.weight" not in got                 # tied: llama.cpp reuses token_embd


def test_the_fim_and_file_tokens_are_control_tokens_llama_cpp_infills_with(tmp_path):
    """llama-server's /infill (what llama.vim sends) builds its prompt from these keys."""
    import gguf
    from agent.training.fim import SPECIALS
    model, tok = small_model()
    ids = tok.add_specials(SPECIALS)
    model.grow_vocab(len(tok), merges=tok.merges, specials=tok.specials.values())
    export_gguf(model, tok, tmp_path / "m.gguf")
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    got = [r.fields[f"tokenizer.ggml.fim_{k}_token_id"].contents()
           for k in ("pre", "suf", "mid", "sep")]
    assert got == ids
    texts, types = r.fields["tokenizer.ggml.tokens"].contents(), \
        r.fields["tokenizer.ggml.token_type"].contents()
    assert [texts[i] for i in ids] == list(SPECIALS) and all(types[i] == 3 for i in ids)
    plain, ptok = small_model()
    export_gguf(plain, ptok, tmp_path / "p.gguf")
    assert not any("fim" in k for k in gguf.GGUFReader(tmp_path / "p.gguf").fields)


def test_an_untied_head_is_the_output_tensor():
    model, _ = small_model(tie_head=False)
    t = gguf_tensors(model.layout.views(model.params), model.config)
    assert np.array_equal(t["output.weight"], model.layout.views(model.params)["head"])


@pytest.mark.parametrize("arch, named", [({"mlp": "relu2"}, "mlp=relu2 with learned positions"),
                                         ({"pos": "rope"}, "pos=rope with the gelu MLP"),
                                         ({"qk_norm": True}, "qk_norm"),
                                         ({"softcap": 15.0}, "softcap=15"),
                                         ({"mlp": "relu2", "pos": "rope", "qk_norm": True},
                                          "qk_norm")])
def test_architectures_llama_cpp_does_not_compute_are_refused(tmp_path, arch, named):
    model, tok = small_model(**arch)
    assert unsupported(model.config) == [named]
    with pytest.raises(ExportError, match=named):
        export_gguf(model, tok, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    assert unsupported(dataclasses.replace(model.config, **{k: getattr(CFG, k) for k in arch})) == []


NEMOTRON = {"mlp": "relu2", "pos": "rope", "tie_head": False, "zero_proj": True}


def test_the_recipe_is_nemotron_with_q_k_v_apart_and_its_own_head(tmp_path):
    import gguf
    for arch in (NEMOTRON, {**NEMOTRON, "tie_head": True}):
        model, tok = small_model(**arch)
        assert architecture(model.config) == "nemotron" and unsupported(model.config) == []
        info = export_gguf(model, tok, tmp_path / "n.gguf")
        r = gguf.GGUFReader(tmp_path / "n.gguf")
        assert info["architecture"] == r.fields["general.architecture"].contents() == "nemotron"
        assert r.fields["nemotron.rope.dimension_count"].contents() == CFG.d_model // CFG.n_heads
        assert r.fields["nemotron.rope.freq_base"].contents() == model.config.rope_base
        got = {t.name: np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist())))
               for t in r.tensors}
        p = model.layout.views(model.params)
        C = CFG.d_model
        assert "position_embd.weight" not in got and "blk.0.attn_qkv.weight" not in got
        assert np.array_equal(got["blk.1.attn_k.weight"], p["h.1.attn.qkv.w"][:, C:2 * C].T)
        assert np.array_equal(got["blk.1.attn_v.bias"], p["h.1.attn.qkv.b"][2 * C:])
        assert np.array_equal(got["output.weight"], p["head"] if "head" in p else p["wte"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype, arch", [("f32", {}), ("f16", {}), ("q8_0", {}),
                                         ("f32", NEMOTRON), ("q8_0", NEMOTRON)])
def test_llama_cpp_runs_the_export_with_our_logits_and_our_greedy_continuation(tmp_path, dtype,
                                                                               arch):
    """Real llama.cpp (llama-cpp-python) on the exported file, fed our token ids: f32 logits
    within 2e-3 of ours (llama.cpp's CPU GELU reads a float16 table; the recipe's relu^2
    model in nemotron's graph agrees to ~1e-6), f16 and q8_0 within what their rounding
    allows; the greedy continuation equal to ours token for token."""
    from llama_cpp import Llama

    model, tok = small_model(**arch)
    path = tmp_path / f"m-{dtype}-{architecture(model.config)}.gguf"
    export_gguf(model, tok, path, dtype=dtype)
    ids = [int(i) for i in tok.encode(TEXT[:200])][:CFG.context // 2]
    llm = Llama(model_path=str(path), n_ctx=CFG.context, n_batch=CFG.context, n_threads=2,
                logits_all=True, verbose=False, type_k=0, type_v=0)   # f32 KV cache
    assert llm.n_vocab() == len(tok) and llm.n_ctx() >= CFG.context
    llm.eval(ids)
    theirs = np.asarray(llm.scores[:len(ids)], np.float32)
    ours = model.logits(np.asarray([ids]))[0]
    tol = {"f32": 2e-3, "f16": 2e-2, "q8_0": 6e-2}[dtype] * float(np.abs(ours).max())
    assert np.abs(theirs - ours).max() < tol
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= (1.0 if dtype == "f32" else 0.9)
    if dtype != "f32":
        return
    want = model.generate(ids, CFG.context - len(ids), temperature=0.0, weights="float32")
    got = []
    for _ in range(len(want)):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        got.append(nxt)
        llm.eval([nxt])
    assert got == want.tolist()


@pytest.mark.slow
def test_llama_cpp_knows_the_fim_and_file_tokens(tmp_path):
    """Real llama.cpp reads the FIM and file-separator ids its /infill builds prompts with,
    and reads their names in a prompt as those tokens (parse_special), never from text."""
    import llama_cpp
    from agent.training.fim import SPECIALS

    model, tok = small_model()
    pre, suf, mid, sep = tok.add_specials(SPECIALS)
    model.grow_vocab(len(tok), merges=tok.merges, specials=tok.specials.values())
    export_gguf(model, tok, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=CFG.context,
                          verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert (llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
            llama_cpp.llama_vocab_fim_mid(vocab), llama_cpp.llama_vocab_fim_sep(vocab)) == \
        (pre, suf, mid, sep)
    assert llm.tokenize(b"<|fim_prefix|>def<|file_sep|>", add_bos=False, special=True) == \
        [pre, *tok.encode("def").tolist(), sep]
    assert pre not in llm.tokenize(b"<|fim_prefix|>", add_bos=False, special=False)
