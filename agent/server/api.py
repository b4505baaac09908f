"""The OpenAI-compatible routes: /health, /v1/models, /v1/completions, /v1/chat/completions.

A completion is validated (validation.py), given a slot and generated (runs.py), then sent
whole or as Server-Sent Events; errors are one JSON body (errors.py).
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.generation.checkpoint import ServingCheckpoint
from agent.generation.stream import TextStream
from agent.server.runs import Run, RunResponse, start_generation
from agent.server.validation import CompletionRequest, parse_completion, read_json


def model_id(service, ckpt: Optional[ServingCheckpoint]) -> str:
    """What /v1/models lists: the data directory and the served cycle (`-live` for the
    running cycle's live snapshot)."""
    name = service.data_dir.resolve().name
    if ckpt is None:
        return f"cllm-{name}"
    return f"cllm-{name}-cycle-{ckpt.cycle}" + ("-live" if ckpt.live is not None else "")


async def health(request: Request) -> Response:
    service = request.app.state.service
    ckpt = service.holder.current
    if ckpt is None:
        return JSONResponse({"status": "loading", "error": service.holder.error}, 503,
                            {"Retry-After": "5"})
    return JSONResponse({"status": "ok", "model": model_id(service, ckpt), "cycle": ckpt.cycle,
                         "step": ckpt.step, "checkpoint_sha256": ckpt.sha256,
                         "live": ckpt.live is not None})


def described(ckpt: ServingCheckpoint) -> dict:
    """What the checkpoint says of itself (`cllm generate --json`'s fields), with its file's
    name instead of its absolute path: clients learn the cycle and file, not the layout of
    the server's disk."""
    out = ckpt.describe()
    out["checkpoint_file"] = Path(out.pop("checkpoint_path")).name
    return out


async def models(request: Request) -> Response:
    service = request.app.state.service
    ckpt = service.holder.current
    data = []
    if ckpt is not None:
        data.append({"id": model_id(service, ckpt), "object": "model",
                     "created": int(service.loaded_at), "owned_by": "cllm",
                     "vocab_size": len(ckpt.tokenizer),
                     "context": ckpt.model.config.context, **described(ckpt)})
    return JSONResponse({"object": "list", "data": data})


async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


async def chat_completions(request: Request) -> Response:
    return await _complete(request, chat=True)


async def _complete(request: Request, chat: bool) -> Response:
    service = request.app.state.service
    req = parse_completion(await read_json(request, service.limits),
                           service.limits, chat)
    ckpt, ts, run = await start_generation(service, req)
    meta = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "created": int(time.time()), "model": model_id(service, ckpt)}
    if req.stream:
        return RunResponse(run, _sse(run, meta, req, chat), media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text = await run.text()
    if req.echo:
        text = req.prompt + text
    usage = _usage(ts)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": ts.finish_reason}
        return JSONResponse({**meta, "object": "chat.completion", "choices": [choice],
                             "usage": usage})
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": ts.finish_reason}
    return JSONResponse({**meta, "object": "text_completion", "choices": [choice],
                         "usage": usage})


def _usage(ts: TextStream) -> dict:
    return {"prompt_tokens": ts.prompt_tokens, "completion_tokens": ts.completion_tokens,
            "total_tokens": ts.prompt_tokens + ts.completion_tokens}


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _sse(run: Run, meta: dict, req: CompletionRequest, chat: bool):
    ts = run.ts
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: Optional[str], finish: Optional[str], first: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else (
                {"content": piece} if piece is not None else {})
            return {**meta, "object": obj,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return {**meta, "object": obj, "choices": [{"index": 0, "text": piece or "",
                                                    "logprobs": None, "finish_reason": finish}]}

    try:
        if chat:
            yield _event(chunk(None, None, first=True))
        elif req.echo and req.prompt:
            yield _event(chunk(req.prompt, None))
        async for piece in run.pieces():
            yield _event(chunk(piece, None))
        yield _event(chunk(None, ts.finish_reason))
        if req.include_usage:
            yield _event({**meta, "object": obj, "choices": [], "usage": _usage(ts)})
        yield b"data: [DONE]\n\n"
    finally:
        run.close()


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
]
