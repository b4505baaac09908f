"""The routes beside completions, in their peers' shapes: llama.cpp's /tokenize and
/detokenize, OpenAI's /v1/embeddings (through the real `openai` client, which asks for
base64), Ollama's /api/embed, /api/embeddings and /api/show (through the real `ollama`
client); each against the checkpoint's own tokenizer and the embedding computed directly."""
from __future__ import annotations

import numpy as np
import pytest

from agent.generation.embed import embed_ids
from tests.agent.server.conftest import token_of, wait_loaded

CODE = "def mean(xs):\n    return sum(xs) / len(xs)\n"


def test_tokenize_and_detokenize_round_trip_in_llama_cpps_shapes(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    tok = ckpt.tokenizer
    r = http.post(server.url + "/tokenize", json={"content": CODE})
    assert r.status_code == 200
    ids = r.json()["tokens"]
    assert ids == tok.encode(CODE).tolist()
    assert http.post(server.url + "/detokenize", json={"tokens": ids}).json() == {"content": CODE}
    special = http.post(server.url + "/tokenize",
                        json={"content": CODE, "add_special": True}).json()["tokens"]
    assert special == [tok.eod_id] + ids
    pieces = http.post(server.url + "/tokenize",
                       json={"content": "é" + CODE, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tok.encode("é" + CODE).tolist()
    for p in pieces:       # text, or the bytes of part of a character
        b = bytes(p["piece"]) if isinstance(p["piece"], list) else p["piece"].encode()
        assert b == tok.token_bytes(p["id"])
    for path, body in (("/tokenize", {"content": 3}), ("/tokenize", {"content": "x",
                                                                      "with_pieces": "yes"}),
                       ("/detokenize", {"tokens": "abc"}),
                       ("/detokenize", {"tokens": [len(tok) + 5]}), ("/tokenize", [1])):
        r = http.post(server.url + path, json=body)
        assert r.status_code == 400 and r.json()["error"]["message"], (path, body)


def test_embeddings_through_the_openai_client(serve, trained):
    openai = pytest.importorskip("openai")   # the [test] extra installs it
    server = serve(trained)
    ckpt = wait_loaded(server)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=token_of(server), max_retries=0)
    texts = [CODE, "every sphere has twelve neighbours", ""]
    res = client.embeddings.create(model="cllm", input=texts)      # base64 on the wire
    assert [d.index for d in res.data] == [0, 1, 2]
    assert res.usage.prompt_tokens == sum(max(1, len(ckpt.tokenizer.encode(t))) for t in texts)
    for d, t in zip(res.data, texts):
        want = embed_ids(ckpt.model, ckpt.tokenizer.encode(t), ckpt.tokenizer.eod_id)
        got = np.asarray(d.embedding, np.float32)
        assert got.shape == (ckpt.model.config.d_model,)
        assert np.allclose(got, want, atol=1e-6) and abs(np.linalg.norm(got) - 1) < 1e-5
    as_floats = client.embeddings.create(model="cllm", input=CODE, encoding_format="float")
    assert np.allclose(as_floats.data[0].embedding, res.data[0].embedding, atol=1e-6)
    ids = ckpt.tokenizer.encode(CODE).tolist()
    by_ids = client.embeddings.create(model="cllm", input=ids)      # token ids as input
    assert np.allclose(by_ids.data[0].embedding, res.data[0].embedding, atol=1e-6)
    short = client.embeddings.create(model="cllm", input=CODE, dimensions=8)
    v = np.asarray(short.data[0].embedding)
    assert v.shape == (8,) and abs(np.linalg.norm(v) - 1) < 1e-5
    assert np.allclose(v, np.asarray(res.data[0].embedding[:8]) /
                       np.linalg.norm(res.data[0].embedding[:8]), atol=1e-5)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="cllm", input=CODE, dimensions=100_000)


def test_a_text_longer_than_the_context_is_embedded_in_windows(trained):
    from agent.generation.checkpoint import load_serving_checkpoint
    from store import open_store

    with open_store(trained) as store:
        ckpt = load_serving_checkpoint(store, trained, committed=True)
    model, tok = ckpt.model, ckpt.tokenizer
    T = model.config.context
    ids = tok.encode(CODE * 40)
    assert len(ids) > 2 * T
    states = np.concatenate([model.hidden_states(ids[a:a + T][None, :])[0]
                             for a in range(0, len(ids), T)])
    want = states.astype(np.float64).mean(0)
    assert np.allclose(embed_ids(model, ids, tok.eod_id), want / np.linalg.norm(want), atol=1e-6)


def test_show_and_embed_through_the_ollama_client(serve, trained, http):
    ollama = pytest.importorskip("ollama")   # the [test] extra installs it
    server = serve(trained)
    ckpt = wait_loaded(server)
    token = token_of(server)
    client = ollama.Client(host=server.url,
                           headers={"Authorization": f"Bearer {token}"} if token else {})
    name = f"cllm-{trained.name}-cycle-2"
    info = client.show(name)
    cfg = ckpt.model.config
    assert info.modelinfo["general.architecture"] == "gpt2"
    assert info.modelinfo["gpt2.context_length"] == cfg.context
    assert info.modelinfo["gpt2.embedding_length"] == cfg.d_model
    assert info.details.family == "gpt2" and "completion" in info.capabilities
    assert "{{ .Prompt }}" in info.template
    res = client.embed(model=name, input=[CODE, "x"])
    assert len(res.embeddings) == 2 and res.prompt_eval_count >= 2
    want = embed_ids(ckpt.model, ckpt.tokenizer.encode(CODE), ckpt.tokenizer.eod_id)
    assert np.allclose(res.embeddings[0], want, atol=1e-6)
    old = client.embeddings(model=name, prompt=CODE)
    assert np.allclose(old.embedding, want, atol=1e-6)
    for bad in ({"input": 7}, {"input": ["a", 2]}, {"input": "a", "dimensions": 0},
                {"input": "a", "truncate": "no"}):
        r = http.post(server.url + "/api/embed", json={"model": name, **bad})
        assert r.status_code == 400 and r.json()["error"]["message"], bad
