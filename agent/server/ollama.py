"""Ollama's routes where they fit: `GET /api/tags`, `GET /api/version`, `POST /api/generate`
and `POST /api/chat` (streamed by default as newline-delimited JSON, as Ollama does; the
last line has "done": true with the token counts and durations in nanoseconds).

The request is mapped onto the OpenAI one (validation.parse_completion) so both share
validation, caps, slots and generation (runs.py): `options.num_predict` -> max_tokens,
`options.temperature`, `top_p`, `top_k`, `seed`, `stop`; `system` becomes a system message
(chat) or a prefix line (generate); `suffix` (generate) asks for the middle between the
prompt and it, as OpenAI's does (agent/training/fim.py).
"""
from __future__ import annotations

import datetime as dt
import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.server.api import model_id
from agent.server.errors import ApiError
from agent.server.runs import RunResponse, start_generation
from agent.server.validation import integer, parse_completion, read_json

VERSION = "0.1.0-cllm"
OPTION_KEYS = {"num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p",
               "top_k": "top_k", "seed": "seed", "stop": "stop"}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def to_openai(body, chat: bool) -> dict:
    """An Ollama request as the equivalent OpenAI request body."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    opts = body.get("options")
    opts = {} if opts is None else opts
    if not isinstance(opts, dict):
        raise ApiError(400, "'options' must be an object")
    out = {OPTION_KEYS[k]: v for k, v in opts.items() if k in OPTION_KEYS}
    # Ollama's -1 ("until it stops") and -2 ("fill the context"): as many as allowed here;
    # the other options are checked by parse_completion under their OpenAI names
    if (integer(opts.get("num_predict"), "options.num_predict", -2, None) or 0) < 0:
        out.pop("max_tokens")
    out["temperature"] = out.get("temperature", 0.8)       # Ollama's default
    out["stream"] = body.get("stream", True)               # streamed unless told not to
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise ApiError(400, "'system' must be a string")
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list):
            raise ApiError(400, "'messages' must be a list of {role, content} objects")
        out["messages"] = ([{"role": "system", "content": system}] if system else []) + msgs
    else:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string")
        out["prompt"] = f"{system}\n{prompt}" if system else prompt
        if body.get("suffix") is not None:     # fill in the middle (Ollama's `suffix`)
            out["suffix"] = body["suffix"]
    return out


async def tags(request: Request) -> Response:
    service = request.app.state.service
    ckpt = service.holder.current
    models = []
    if ckpt is not None:
        name = model_id(service, ckpt)
        cfg = ckpt.model.config
        models.append({"name": name, "model": name,
                       "modified_at": dt.datetime.fromtimestamp(
                           service.loaded_at, dt.timezone.utc).isoformat(),
                       "size": ckpt.path.stat().st_size if ckpt.path.exists() else 0,
                       "digest": ckpt.sha256,
                       "details": {"format": "safetensors", "family": "gpt2",
                                   "parameter_size": str(ckpt.model.params.size),
                                   "context_length": cfg.context}})
    return JSONResponse({"models": models})


async def version(request: Request) -> Response:
    return JSONResponse({"version": VERSION})


async def generate(request: Request) -> Response:
    return await _run(request, chat=False)


async def chat(request: Request) -> Response:
    return await _run(request, chat=True)


async def _run(request: Request, chat: bool) -> Response:
    service = request.app.state.service
    body = to_openai(await read_json(request, service.limits), chat)
    req = parse_completion(body, service.limits, chat)
    t0 = time.perf_counter_ns()
    ckpt, ts, run = await start_generation(service, req)
    name = model_id(service, ckpt)

    def piece(text: str, done: bool) -> dict:
        d = {"model": name, "created_at": _now()}
        if chat:
            d["message"] = {"role": "assistant", "content": text}
        else:
            d["response"] = text
        d["done"] = done
        return d

    def final(text: str) -> dict:
        total = time.perf_counter_ns() - t0
        return {**piece(text, True), "done_reason": ts.finish_reason,
                "total_duration": total, "prompt_eval_count": ts.prompt_tokens,
                "eval_count": ts.completion_tokens,
                "eval_duration": int(total - 1e9 * (run.first or 0))}

    if not req.stream:
        return JSONResponse(final(await run.text()))

    async def lines():
        try:
            async for p in run.pieces():
                yield json.dumps(piece(p, False)).encode() + b"\n"
            yield json.dumps(final("")).encode() + b"\n"
        finally:
            run.close()
    return RunResponse(run, lines(), media_type="application/x-ndjson")


ROUTES = [
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
]
