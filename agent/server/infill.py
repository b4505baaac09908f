"""llama.cpp's `/infill`, the route llama.vim and llama.vscode complete code through, and its
`/completion`, which Tabby's `llama.cpp/completion` model sends a templated FIM prompt to, in
their request and response shapes (llama.cpp's tools/server/README.md):

    {"input_prefix", "input_suffix", "input_extra": [{"filename", "text"}], "prompt",
     "n_predict", "temperature", "top_k", "top_p", "seed", "stop", "stream",
     "t_max_predict_ms", "response_fields", ...}

The text before the cursor is input_prefix, then prompt (llama.cpp puts `prompt` after the prefix: the part of the line
already typed); after the cursor, input_suffix. The fill-in-the-middle prompt is built as
for `suffix` on /v1/completions (agent/generation/stream.py's fim_prompt: the text nearest
the cursor kept when it does not fit), input_extra's chunks (other files) before it, each as
training reads a file: <|file_sep|>, its name, a line break, its text (agent/training/fim.py;
as text after a "# filename" line for a checkpoint trained before that token existed). The answer is one JSON object, or with "stream" Server-
Sent Events of {"content", "stop": false} pieces ending with {"content": "", "stop": true}
and the counts and timings. `response_fields` keeps only the fields named, "a/b" for a
nested one, flattened under that key as llama.cpp does. Options llama.cpp has and this
server does not (n_indent, samplers, cache_prompt, t_max_prompt_ms, ...) are accepted and
ignored; t_max_predict_ms ends the generation that many milliseconds after the request.
"""
from __future__ import annotations

import asyncio
import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.server.api import model_id
from agent.server.errors import ApiError
from agent.server.runs import RunResponse, start_generation
from agent.server.validation import integer, parse_completion, read_json


def _text(body: dict, key: str) -> str:
    v = body.get(key, "")
    if not isinstance(v, str):
        raise ApiError(400, f"'{key}' must be a string")
    return v


def _extra(v) -> tuple[tuple[str, str], ...]:
    """input_extra's chunks as (filename, text) pairs."""
    if v is None:
        return ()
    if not isinstance(v, list) or not all(
            isinstance(c, dict) and isinstance(c.get("text", ""), str)
            and isinstance(c.get("filename", ""), str) for c in v):
        raise ApiError(400, "'input_extra' must be a list of {\"filename\", \"text\"} objects")
    return tuple((c.get("filename", ""), c.get("text", "")) for c in v)


def _fields(obj: dict, names) -> dict:
    """llama.cpp's response_fields: only the named fields, "a/b" read from obj["a"]["b"]."""
    if names is None:
        return obj
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "'response_fields' must be a list of strings")
    out = {}
    for name in names:
        v = obj
        for part in name.split("/"):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            out[name] = v
    return out


async def infill(request: Request) -> Response:
    return await _native(request, fim=True)


async def completion(request: Request) -> Response:
    """llama.cpp's /completion: {"prompt", "n_predict", ...}, the prompt's special token
    names ("<|fim_prefix|>", ...) read as those tokens, as llama.cpp does: how Tabby's
    `llama.cpp/completion` model asks for a middle, with its prompt_template."""
    return await _native(request, fim=False)


async def _native(request: Request, fim: bool) -> Response:
    service = request.app.state.service
    body = await read_json(request, service.limits)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if fim:
        prefix = _text(body, "input_prefix") + _text(body, "prompt")
        suffix = _text(body, "input_suffix")
        extra = _extra(body.get("input_extra"))
    else:
        prefix, suffix, extra = _text(body, "prompt"), None, ()
    n_predict = integer(body.get("n_predict"), "n_predict", -1, None)
    t_max = integer(body.get("t_max_predict_ms"), "t_max_predict_ms", 0, None)
    names = body.get("response_fields")
    _fields({}, names)                                   # checked before generating
    openai = {"prompt": prefix, "suffix": suffix, "stream": body.get("stream", False),
              "temperature": body.get("temperature", 0.8), "top_p": body.get("top_p"),
              "top_k": body.get("top_k", 40), "seed": body.get("seed"),
              "stop": body.get("stop") or None}
    if n_predict is not None and n_predict >= 0:
        openai["max_tokens"] = min(n_predict, service.limits.max_tokens)
    if sum(len(n) + len(t) for n, t in extra) > service.limits.max_prompt_chars:
        raise ApiError(400, f"'input_extra' is longer than {service.limits.max_prompt_chars} "
                       "characters (cllm serve's limit)")
    if suffix is None:
        del openai["suffix"]
    req = parse_completion(openai, service.limits, chat=False)
    req.extra, req.parse_special = extra, not fim
    t0 = time.perf_counter()
    ckpt, ts, run = await start_generation(service, req)
    timer = (asyncio.get_running_loop().call_later(t_max / 1000.0, run.close)
             if t_max else None)
    t_prompt = time.perf_counter() - t0

    def final(content: str) -> dict:
        t_pred = max(time.perf_counter() - t0 - t_prompt, 1e-9)
        stop_type = {"stop": "eos" if not ts.sampling.stop or ts.finish_reason != "stop"
                     else "word", "length": "limit"}.get(ts.finish_reason, "limit")
        return {"index": 0, "content": content, "tokens": [], "id_slot": 0, "stop": True,
                "model": model_id(service, ckpt), "tokens_predicted": ts.completion_tokens,
                "tokens_evaluated": ts.prompt_tokens, "tokens_cached": 0,
                "truncated": False, "stop_type": stop_type, "stopping_word": "",
                "timings": {"prompt_n": ts.prompt_tokens, "prompt_ms": 1000 * t_prompt,
                            "prompt_per_token_ms": 1000 * t_prompt / max(ts.prompt_tokens, 1),
                            "prompt_per_second": ts.prompt_tokens / max(t_prompt, 1e-9),
                            "predicted_n": ts.completion_tokens, "predicted_ms": 1000 * t_pred,
                            "predicted_per_token_ms":
                                1000 * t_pred / max(ts.completion_tokens, 1),
                            "predicted_per_second": ts.completion_tokens / t_pred}}

    if not req.stream:
        try:
            text = await run.text()
        finally:
            if timer is not None:
                timer.cancel()
        return JSONResponse(_fields(final(text), names))

    async def events():
        try:
            async for piece in run.pieces():
                yield b"data: " + json.dumps(_fields(
                    {"index": 0, "content": piece, "tokens": [], "stop": False, "id_slot": 0,
                     "tokens_predicted": ts.completion_tokens,
                     "tokens_evaluated": ts.prompt_tokens}, names)).encode() + b"\n\n"
            yield b"data: " + json.dumps(_fields(final(""), names)).encode() + b"\n\n"
        finally:
            if timer is not None:
                timer.cancel()
            run.close()
    return RunResponse(run, events(), media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


ROUTES = [Route("/infill", infill, methods=["POST"]),
          Route("/completion", completion, methods=["POST"])]
