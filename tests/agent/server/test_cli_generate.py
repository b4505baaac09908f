"""`cllm generate` (prompt as argument, option or standard input; --checkpoint; --json) and
`cllm chat` (the server's chat template; Ctrl-C stops a reply, Ctrl-D quits), both on the
shared generation code and the store's checkpoint record."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.generation.checkpoint import load_serving_checkpoint
from agent.generation.stream import CHAT_STOPS, Sampling, TextStream, chat_prompt
from agent.cli.chat import reply
from engine.model import Model
from engine.warmup import compile_decoding
from store import open_store


@pytest.fixture(scope="module")
def ckpts(trained):
    with open_store(trained) as store:
        return {c: load_serving_checkpoint(store, trained, c) for c in (1, 2)}


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_generate_prompt_from_argument_option_or_stdin(trained, ckpts, monkeypatch):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    opts = ["--data-dir", str(trained), "--seed", "4", "--max-tokens", "12"]
    expected = TextStream(ckpts[2], "every sphere", Sampling(max_tokens=12, seed=4)).run()
    outs = [run("generate", "every sphere", *opts).output,
            run("generate", "--prompt", "every sphere", *opts).output,
            run("generate", *opts, input="every sphere\n").output]
    assert outs == ["every sphere" + expected + "\n"] * 3
    r = CliRunner().invoke(main, ["generate", "a", "--prompt", "b", *opts])
    assert r.exit_code == 2 and "given twice" in r.output


def test_generate_json_checkpoint_and_stop(trained, ckpts, monkeypatch):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    opts = ["--data-dir", str(trained), "--seed", "2", "--max-tokens", "20"]
    out = json.loads(run("generate", "the crystal", *opts, "--checkpoint", "1", "--json").output)
    ts = TextStream(ckpts[1], "the crystal", Sampling(max_tokens=20, seed=2))
    assert out["text"] == ts.run() and out["cycle"] == 1
    assert out["checkpoint_sha256"] == ckpts[1].ref.sha256
    assert out["usage"]["completion_tokens"] == ts.completion_tokens
    assert out["finish_reason"] == ts.finish_reason
    text = out["text"]
    stop = next(text[i:i + 2] for i in range(1, len(text) - 1) if text[i:i + 2].strip())
    cut = json.loads(run("generate", "the crystal", *opts, "--checkpoint", "1", "--stop", stop,
                         "--json").output)
    assert cut["text"] == text[:text.index(stop)] and cut["finish_reason"] == "stop"
    r = CliRunner().invoke(main, ["generate", "x", "--data-dir", str(trained), "--checkpoint",
                                  "9"])
    assert r.exit_code == 2 and "cycles with one: 1, 2" in r.output


def test_decode_weights_choose_the_copies_generation_reads(trained, monkeypatch):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    compile_decoding()                   # its own generations are not the ones counted below
    seen = []
    real = Model.generate_stream

    def spy(self, *args, **kw):
        seen.append(kw.get("weights", "int8"))
        return real(self, *args, **kw)
    monkeypatch.setattr(Model, "generate_stream", spy)
    opts = ["--data-dir", str(trained), "--seed", "3", "--max-tokens", "10", "--json"]
    exact = json.loads(run("generate", "every", *opts, "--decode-weights", "float32").output)
    default = json.loads(run("generate", "every", *opts).output)
    assert seen == ["float32", "int8"]
    with open_store(trained) as store:
        ck32 = load_serving_checkpoint(store, trained, None, "float32")
    assert ck32.weights == "float32"
    assert exact["text"] == TextStream(ck32, "every", Sampling(max_tokens=10, seed=3)).run()
    assert default["usage"]["completion_tokens"] <= 10
    r = CliRunner().invoke(main, ["generate", "x", "--data-dir", str(trained),
                                  "--decode-weights", "bf16"])
    assert r.exit_code == 2 and "bf16" in r.output


def test_chat_turns_use_the_chat_template_and_ctrl_d_quits(trained, ckpts, monkeypatch):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    r = run("chat", "--data-dir", str(trained), "--temperature", "0", "--max-tokens", "6",
            "--system", "be brief", input="hello\n\nagain\n")
    assert r.exit_code == 0
    sp = Sampling(max_tokens=6, temperature=0, top_k=40, stop=CHAT_STOPS)
    first = TextStream(ckpts[2], chat_prompt([("system", "be brief"), ("user", "hello")]),
                       sp).run()
    second = TextStream(ckpts[2], chat_prompt([("system", "be brief"), ("user", "hello"),
                                               ("assistant", first.strip()),
                                               ("user", "again")]), sp).run()
    assert r.stdout.count("cllm> ") == 2                  # the empty line asked nothing
    assert f"cllm> {first}\n" in r.stdout and f"cllm> {second}\n" in r.stdout


def test_ctrl_c_stops_a_reply_and_keeps_what_came(ckpts, monkeypatch):
    ckpt = ckpts[2]

    def interrupted(prompt_ids, max_new_tokens, **kw):
        yield ord("o")
        yield ord("k")
        raise KeyboardInterrupt
    monkeypatch.setattr(ckpt.model, "generate_stream", interrupted)
    shown = []
    text, finished = reply(ckpt, [("user", "hi")], Sampling(max_tokens=50), shown.append)
    assert (text, finished) == ("ok", False) and "".join(shown) == "ok"
