"""Ollama's routes: tags, version, generate and chat, streamed as newline-delimited JSON by
default (one object per piece, the last with done, counts and durations) or whole; they
share the OpenAI routes' validation and generation."""
from __future__ import annotations

import json

from agent.generation.stream import CHAT_STOPS, Sampling, TextStream, chat_prompt
from tests.agent.server.conftest import wait_loaded


def ndjson(http, server, path, body):
    with http.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def test_tags_and_version(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    models = http.get(server.url + "/api/tags").json()["models"]
    assert [m["name"] for m in models] == [f"cllm-{trained.name}-cycle-2"]
    assert models[0]["digest"] == ckpt.ref.sha256 and models[0]["size"] > 0
    assert http.get(server.url + "/api/version").json()["version"]


def test_generate_streams_ndjson_and_ends_with_counts(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    body = {"model": "x", "prompt": "every sphere", "options": {"num_predict": 10, "seed": 3,
                                                               "temperature": 0.7, "top_k": 20}}
    lines = ndjson(http, server, "/api/generate", body)
    expected = TextStream(ckpt, "every sphere", Sampling(max_tokens=10, seed=3,
                                                         temperature=0.7, top_k=20))
    text = expected.run()
    assert all(not ln["done"] for ln in lines[:-1]) and lines[-1]["done"]
    assert "".join(ln["response"] for ln in lines) == text
    assert lines[-1]["eval_count"] == expected.completion_tokens
    assert lines[-1]["prompt_eval_count"] == expected.prompt_tokens
    assert lines[-1]["done_reason"] == expected.finish_reason
    whole = http.post(server.url + "/api/generate", json={**body, "stream": False}).json()
    assert whole["done"] and whole["response"] == text


def test_chat_and_its_validation(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    msgs = [{"role": "user", "content": "hello"}]
    lines = ndjson(http, server, "/api/chat", {"messages": msgs, "system": "be brief",
                                         "options": {"temperature": 0, "num_predict": 6}})
    expected = TextStream(ckpt, chat_prompt([("system", "be brief"), ("user", "hello")]),
                          Sampling(max_tokens=6, temperature=0, top_k=None, stop=CHAT_STOPS)
                          ).run()
    assert "".join(ln["message"]["content"] for ln in lines) == expected
    assert lines[-1]["done"] and lines[-1]["message"]["role"] == "assistant"
    for path, body in (("/api/chat", {"messages": "hi"}), ("/api/generate", {"prompt": 3}),
                       ("/api/generate", {"prompt": "x", "options": {"temperature": "hot"}}),
                       ("/api/generate", {"prompt": "x", "options": []})):
        r = http.post(server.url + path, json=body)
        assert r.status_code == 400 and r.json()["error"]["message"]
    # num_predict is checked before Ollama's -1 / -2 ("as many as allowed") are mapped: a
    # string or a bool is a 400 naming it, not a 500
    for bad in ("5", True, -3, 1.5):
        r = http.post(server.url + "/api/generate",
                       json={"prompt": "x", "stream": False, "options": {"num_predict": bad}})
        assert r.status_code == 400, r.text
        assert "'options.num_predict' must be an integer" in r.json()["error"]["message"]
    r = http.post(server.url + "/api/generate",
                   json={"prompt": "x", "stream": False, "options": {"num_predict": -1}})
    assert r.status_code == 200 and r.json()["done"]
