"""Fill in the middle over HTTP, in the shapes editors send: llama.cpp's /infill with the
body llama.vim sends (its response_fields flattened as llama.cpp does; streamed as SSE),
`suffix` on /v1/completions through the real `openai` client, and on Ollama's
/api/generate as Continue's Ollama autocomplete sends it (raw, streamed), each equal to the
same generation made directly; a checkpoint without FIM tokens refuses a suffix with 400."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.generation.stream import Sampling, TextStream
from tests.agent.server.conftest import token_of, wait_loaded

PREFIX, SUFFIX = "every sphere touches ", " neighbours. every sphere"


def direct(ckpt, prefix, suffix, max_tokens, seed, extra=(), top_k=40):
    return TextStream(ckpt, prefix, Sampling(max_tokens=max_tokens, temperature=0.8,
                                             top_k=top_k, seed=seed),
                      suffix=suffix, extra=extra).run()


def test_infill_with_llama_vims_request(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    body = {   # llama.vim's request (autoload/llama.vim, s:fim), a seed added for the check
        "input_prefix": PREFIX, "input_suffix": SUFFIX,
        "input_extra": [{"text": "the crystal lattice hums\n", "time": 0,
                         "filename": "notes/a.txt"}],
        "prompt": "twel", "n_predict": 16, "stop": [], "n_indent": 0, "top_k": 40,
        "top_p": 0.90, "stream": False, "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 60_000,
        "response_fields": ["content", "timings/prompt_n", "timings/prompt_ms",
                            "timings/prompt_per_token_ms", "timings/prompt_per_second",
                            "timings/predicted_n", "timings/predicted_ms",
                            "timings/predicted_per_token_ms", "timings/predicted_per_second",
                            "truncated", "tokens_cached"],
        "seed": 11}
    r = http.post(server.url + "/infill", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == set(body["response_fields"])           # only those, flattened
    want = TextStream(ckpt, PREFIX + "twel", Sampling(max_tokens=16, temperature=0.8,
                                                      top_k=40, top_p=0.9, seed=11),
                      suffix=SUFFIX, extra=[("notes/a.txt", "the crystal lattice hums\n")])
    assert got["content"] == want.run()
    assert got["timings/predicted_n"] == want.completion_tokens
    assert got["timings/prompt_n"] == want.prompt_tokens
    # streamed: SSE pieces, then the final object with stop true
    with http.stream("POST", server.url + "/infill",
                     json={**body, "stream": True, "response_fields": None}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert all(not e["stop"] for e in events[:-1]) and events[-1]["stop"]
    assert "".join(e["content"] for e in events) == got["content"]
    assert events[-1]["timings"]["predicted_n"] == want.completion_tokens
    for bad in ({"input_prefix": 3}, {"input_extra": "x"}, {"n_predict": "5"},
                {"response_fields": "content"}):
        r = http.post(server.url + "/infill", json={"input_prefix": "a", **bad})
        assert r.status_code == 400 and r.json()["error"]["message"], bad


def test_suffix_on_completions_through_the_openai_client(serve, trained):
    openai = pytest.importorskip("openai")   # the [test] extra installs it
    server = serve(trained)
    ckpt = wait_loaded(server)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=token_of(server), max_retries=0)
    res = client.completions.create(model="cllm", prompt=PREFIX, suffix=SUFFIX, max_tokens=12,
                                    seed=5, temperature=0.8, extra_body={"top_k": 40})
    assert res.choices[0].text == direct(ckpt, PREFIX, SUFFIX, 12, 5)
    assert res.usage.prompt_tokens == TextStream(ckpt, PREFIX, Sampling(max_tokens=12),
                                                 suffix=SUFFIX).prompt_tokens


def test_suffix_on_ollama_generate_as_continue_sends_it(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    body = {"model": "cllm", "prompt": PREFIX, "suffix": SUFFIX, "raw": True, "stream": True,
            "keep_alive": 1800, "options": {"temperature": 0.8, "num_predict": 12, "seed": 9,
                                            "top_k": 40, "stop": ["\n\n"], "num_ctx": 2048}}
    with http.stream("POST", server.url + "/api/generate", json=body) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    text = "".join(ln["response"] for ln in lines)
    want = TextStream(ckpt, PREFIX, Sampling(max_tokens=12, temperature=0.8, top_k=40, seed=9,
                                             stop=("\n\n",)), suffix=SUFFIX).run()
    assert text == want and lines[-1]["done"]


def test_a_checkpoint_without_fim_tokens_refuses_a_suffix(serve, corpus, tmp_path, http):
    data = tmp_path / "plain"
    r = CliRunner().invoke(main, ["train", str(corpus), "--data-dir", str(data), "--preset",
                                  "tiny", "--steps", "4", "--batch-size", "4", "--workers", "1",
                                  "--fim-rate", "0"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    server = serve(data)
    ckpt = wait_loaded(server)
    assert "<|fim_prefix|>" not in ckpt.tokenizer.specials
    r = http.post(server.url + "/v1/completions", json={"prompt": "a", "suffix": "b"})
    assert r.status_code == 400 and "fill in the middle" in r.json()["error"]["message"]
    r = http.post(server.url + "/infill", json={"input_prefix": "a", "input_suffix": "b"})
    assert r.status_code == 400
    assert http.post(server.url + "/v1/completions",
                     json={"prompt": "a", "max_tokens": 2}).status_code == 200


def test_tabbys_templated_prompt_on_llama_cpps_completion(serve, trained, http):
    """Tabby's `llama.cpp/completion` model posts its prompt_template filled in to
    /completion: the template's token names are read as the FIM tokens, so the answer is the
    middle /infill gives for the same prefix and suffix."""
    server = serve(trained)
    ckpt = wait_loaded(server)
    prompt = f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    body = {"prompt": prompt, "n_predict": 12, "temperature": 0.8, "seed": 4, "stream": False}
    r = http.post(server.url + "/completion", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    fim = TextStream(ckpt, PREFIX, Sampling(max_tokens=12), suffix=SUFFIX)
    assert ckpt.tokenizer.encode_special(prompt).tolist() == fim.ids    # the FIM prompt
    want = TextStream(ckpt, prompt, Sampling(max_tokens=12, temperature=0.8, top_k=40, seed=4),
                      parse_special=True)
    assert got["content"] == want.run() and got["stop"]
    assert got["tokens_evaluated"] == len(fim.ids)
    with http.stream("POST", server.url + "/completion", json={**body, "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == got["content"] and events[-1]["stop"]
