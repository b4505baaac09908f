"""The OpenAI-compatible API against a real uvicorn server on a free port (httpx, and the
openai client): models, health, completions (plain and streamed), chat, validation, the
generation slots."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.generation.stream import Sampling, TextStream
from agent.server.config import Limits
from tests.agent.server.conftest import token_of, train_tiny, wait_loaded


def test_health_and_models_name_the_data_directory_and_cycle(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    h = http.get(server.url + "/health")
    assert h.status_code == 200 and h.json()["cycle"] == ckpt.cycle == 2
    m = http.get(server.url + "/v1/models").json()
    assert m["object"] == "list" and len(m["data"]) == 1
    assert m["data"][0]["id"] == f"cllm-{trained.name}-cycle-2"
    assert m["data"][0]["checkpoint_sha256"] == ckpt.ref.sha256


def test_completion_is_the_shared_generation_with_usage_counts(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    body = {"model": "any", "prompt": "every sphere", "max_tokens": 12, "seed": 7,
            "temperature": 0.9, "top_k": 20, "top_p": 0.95}
    r = http.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    expected = TextStream(ckpt, "every sphere", Sampling(max_tokens=12, temperature=0.9,
                                                         top_k=20, top_p=0.95, seed=7))
    text = expected.run()
    assert out["object"] == "text_completion" and out["choices"][0]["text"] == text
    assert out["usage"] == {"prompt_tokens": expected.prompt_tokens,
                            "completion_tokens": expected.completion_tokens,
                            "total_tokens": expected.prompt_tokens + expected.completion_tokens}
    assert out["usage"]["prompt_tokens"] == len(ckpt.tokenizer.encode("every sphere"))
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    echo = http.post(server.url + "/v1/completions", json={**body, "echo": True}, timeout=60)
    assert echo.json()["choices"][0]["text"] == "every sphere" + text


def test_concurrent_completions_share_the_batch_and_each_is_what_it_would_be_alone(serve,
                                                                                   trained, http):
    server = serve(trained, limits=Limits(concurrency=3))
    ckpt = wait_loaded(server)
    bodies = [{"prompt": p, "max_tokens": 40, "temperature": 0.9, "top_k": 20, "seed": i}
              for i, p in enumerate(["every sphere", "the crystal", "a", "for each"])]
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda b: http.post(server.url + "/v1/completions", json=b,
                                                timeout=60), bodies))
    for body, r in zip(bodies, outs):
        assert r.status_code == 200, r.text
        alone = TextStream(ckpt, body["prompt"], Sampling(max_tokens=40, temperature=0.9,
                                                          top_k=20, seed=body["seed"])).run()
        assert r.json()["choices"][0]["text"] == alone
    batcher = server.service.batcher(ckpt)
    assert batcher.steps > 0 and 1 <= batcher.widest <= 3


def test_a_server_decodes_with_the_weights_it_was_told(serve, trained, http):
    server = serve(trained, decode_weights="float32")
    ckpt = wait_loaded(server)
    assert ckpt.weights == "float32" and server.service.batcher(ckpt).weights == "float32"
    body = {"prompt": "every", "max_tokens": 12, "temperature": 0.9, "top_k": 20, "seed": 5}
    r = http.post(server.url + "/v1/completions", json=body, timeout=60)
    alone = TextStream(ckpt, "every", Sampling(max_tokens=12, temperature=0.9, top_k=20,
                                               seed=5)).run()       # float32, no batcher
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == alone


def test_stream_chunks_arrive_one_by_one_and_end_with_done(serve, trained, script_ids, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    # the served model yields five byte tokens "e", the second one only once the client has
    # read the first chunk: so chunks are sent as they are generated, not at the end
    first_read = threading.Event()
    fixed = _fixed_ids([ord("e")] * 5)

    def gated(*args, **kwargs):
        for i, t in enumerate(fixed(*args, **kwargs)):
            if i == 1:
                assert first_read.wait(30), "the first chunk never reached the client"
            yield t
    script_ids(server.service.batcher(ckpt), gated)     # the server's token source
    events = []
    with http.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"prompt": "every", "max_tokens": 5, "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
                first_read.set()
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["e"] * 5
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"]["completion_tokens"] == 5


def _fixed_ids(ids):
    """A script for the batcher's requests that yields `ids` (to know the text in advance)."""
    def gen(prompt_ids, max_new_tokens, **kw):
        yield from ids[:max_new_tokens]
    return gen


def test_chat_stream_with_the_openai_client(serve, trained):
    openai = pytest.importorskip("openai")   # the [test] extra installs it
    server = serve(trained)
    wait_loaded(server)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=token_of(server), max_retries=0)
    listed = [m.id for m in client.models.list()]
    assert listed == [f"cllm-{trained.name}-cycle-2"]
    c = client.completions.create(model=listed[0], prompt="the crystal", max_tokens=6, seed=3)
    assert c.usage.completion_tokens <= 6 and c.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model=listed[0], messages=[{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "hello"}],
        max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    whole = client.chat.completions.create(
        model=listed[0], messages=[{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "hello"}],
        max_tokens=8, temperature=0)
    assert whole.choices[0].message.content == text      # greedy: the same reply
    assert whole.usage.prompt_tokens > 0


@pytest.mark.parametrize("body, fragment", [
    ({"prompt": 3}, "'prompt'"),
    ({"prompt": "x", "max_tokens": -1}, "'max_tokens'"),
    ({"prompt": "x", "max_tokens": 10 ** 6}, "'max_tokens'"),
    ({"prompt": "x", "temperature": "hot"}, "'temperature'"),
    ({"prompt": "x", "temperature": 9}, "'temperature'"),
    ({"prompt": "x", "top_p": 1.5}, "'top_p'"),
    ({"prompt": "x", "top_k": True}, "'top_k'"),
    ({"prompt": "x", "seed": 1.5}, "'seed'"),
    ({"prompt": "x", "stop": [1]}, "'stop'"),
    ({"prompt": "x", "stop": ["a"] * 5}, "'stop'"),
    ({"prompt": "x", "n": 2}, "'n'"),
    ({"prompt": "x", "stream": "yes"}, "'stream'"),
    ({"prompt": "x" * 70000}, "characters"),
    ([1, 2], "JSON object"),
])
def test_bad_completion_requests_get_400_json(serve, trained, body, fragment, http):
    server = serve(trained)
    r = http.post(server.url + "/v1/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"


def test_bad_chat_and_transport_errors_get_json(serve, trained, http):
    server = serve(trained)
    u = server.url
    for messages in (None, [], [{"role": "robot", "content": "x"}], [{"role": "user",
                                                                     "content": 5}]):
        r = http.post(u + "/v1/chat/completions", json={"messages": messages})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    as_json = {"Content-Type": "application/json"}
    r = http.post(u + "/v1/completions", content=b"{not json", headers=as_json)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = http.post(u + "/v1/completions", content=b"x" * (2 << 20), headers=as_json)
    assert r.status_code == 413 and r.json()["error"]["message"]
    r = http.get(u + "/v1/completions")
    assert r.status_code == 405 and "POST" in r.json()["error"]["message"]
    r = http.get(u + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_busy_slots_give_429_with_retry_after_and_a_hang_up_frees_its_slot(serve, trained,
                                                                          script_ids, http):
    server = serve(trained, limits=Limits(concurrency=1, queue_timeout=0))
    ckpt = wait_loaded(server)
    slots = server.service.slots
    assert slots.acquire(0)                    # every slot busy
    r = http.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "rate_limit_error"
    slots.release()
    assert http.post(server.url + "/v1/completions",
                      json={"prompt": "x", "max_tokens": 2}).status_code == 200
    # a client that hangs up mid-stream: its generation ends and the slot comes back
    hang_up = threading.Event()
    ended = threading.Event()

    def endless(prompt_ids, max_new_tokens, **kw):
        try:
            yield ord("a")
            hang_up.wait(30)
            while True:
                yield ord("a")
        finally:
            ended.set()
    script_ids(server.service.batcher(ckpt), endless)
    with http.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"prompt": "x", "max_tokens": 1000, "stream": True}) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    hang_up.set()
    assert slots.acquire(30), "the slot of a closed stream was never released"
    slots.release()
    assert ended.wait(30)


def test_a_request_can_pick_an_earlier_checkpoint(serve, trained, http):
    server = serve(trained)
    wait_loaded(server)
    body = {"prompt": "every", "max_tokens": 4, "seed": 1}
    r = http.post(server.url + "/v1/completions", json={**body, "checkpoint": 1})
    assert r.status_code == 200 and r.json()["model"].endswith("-cycle-1")
    assert http.post(server.url + "/v1/completions", json=body).json()["model"].endswith(
        "-cycle-2")
    bad = http.post(server.url + "/v1/completions", json={**body, "checkpoint": 9})
    assert bad.status_code == 400 and "cycles with one: 1, 2" in bad.json()["error"]["message"]


def test_json_nested_too_deep_is_a_400_on_every_json_route(serve, trained, http):
    server = serve(trained, limits=Limits(max_json_depth=32))
    wait_loaded(server)
    routes = ("/v1/completions", "/v1/chat/completions", "/api/generate", "/api/chat",
              "/api/targets", "/api/training", "/api/bench")
    bodies = (b"[" * 100_000 + b"]" * 100_000,          # deeper than Python's JSON parser goes
              json.dumps({"prompt": "x", "extra": nested(33)}).encode())
    for path in routes:
        for body in bodies:
            r = http.post(server.url + path, content=body,
                           headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (path, r.text)
            assert "deeper than 32 levels" in r.json()["error"]["message"]
    ok = http.post(server.url + "/v1/completions", timeout=60,
                    json={"prompt": "x", "max_tokens": 1, "extra": nested(31)})
    assert ok.status_code == 200, ok.text


def nested(depth: int):
    """A JSON value whose arrays nest `depth` deep."""
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


def test_alternating_checkpoints_load_each_once(serve, corpus, tmp_path, monkeypatch, http):
    import agent.server.app as app_module

    data = tmp_path / "data"
    for _ in range(4):
        train_tiny(corpus, data, steps=2)
    loads = []
    real = app_module.load_serving_checkpoint

    def counted(store, data_dir, cycle=None, *a, **kw):
        loads.append(cycle)
        return real(store, data_dir, cycle, *a, **kw)
    monkeypatch.setattr(app_module, "load_serving_checkpoint", counted)
    server = serve(data)
    assert wait_loaded(server).cycle == 4
    for cycle in [1, 2, 3] * 3:                 # the served cycle 4 is not one of them
        r = http.post(server.url + "/v1/completions", timeout=60,
                       json={"prompt": "x", "max_tokens": 1, "checkpoint": cycle})
        assert r.status_code == 200 and r.json()["model"].endswith(f"-cycle-{cycle}")
    assert [c for c in loads if c is not None] == [1, 2, 3]
    assert server.service.checkpoint_loads == 3
