"""The OpenAI-compatible routes: /health, /v1/models, /v1/completions, /v1/chat/completions.

Requests are checked field by field (`parse_completion`); a bad one gets 400 with one JSON
error body naming the field. At most `concurrency` generations run at once (`Slots`, the one
bound: the batcher gets as many rows); a request that finds every slot taken waits up to
`queue_timeout` seconds for one, else gets 429 with Retry-After. A generation's ids come
from the checkpoint's batcher, whose decoding thread hands each one to the event loop, where
it becomes text and goes to the client: the loop never blocks, and a client that hangs up
ends its generation before the next token.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.errors import CllmError
from agent.generation.checkpoint import ServingCheckpoint
from agent.generation.stream import CHAT_ROLES, CHAT_STOPS, Sampling, TextStream, chat_prompt


class ApiError(Exception):
    """A request the API refuses: status, message, OpenAI error type."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.headers = status, message, type_, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type,
                                       "code": self.status}}, self.status, self.headers)


class Slots:
    """At most `n` generations at once; a thread waits up to `timeout` seconds for a slot.
    A threading primitive (not the event loop's), so tests and in-process callers can hold
    slots too."""

    def __init__(self, n: int) -> None:
        self.n, self.busy = n, 0
        self._cond = threading.Condition()

    def acquire(self, timeout: float) -> bool:
        with self._cond:
            if not self._cond.wait_for(lambda: self.busy < self.n, timeout=timeout):
                return False
            self.busy += 1
            return True

    def release(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify()


@dataclass
class Limits:
    max_tokens: int = 1024         # the most tokens one request may ask for
    default_max_tokens: int = 128  # when it asks for none
    max_prompt_chars: int = 65536  # prompt (or all messages) length
    max_body_bytes: int = 1 << 20
    concurrency: int = 2
    queue_timeout: float = 10.0


# ------------------------------------------------------------------------------ validation

def _number(body: dict, key: str, lo: float, hi: float, default):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be a number within [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _integer(body: dict, key: str, lo: int, hi: Optional[int], default):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bound = f"within [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ApiError(400, f"'{key}' must be an integer {bound}, got {v!r}")
    return v


def _text(v, what: str) -> str:
    """A string, or OpenAI's list of content parts [{"type": "text", "text": ...}]."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                   and isinstance(p.get("text"), str) for p in v):
        return "".join(p["text"] for p in v)
    raise ApiError(400, f"{what} must be a string (or a list of text parts)")


def parse_messages(messages) -> list[tuple[str, str]]:
    """OpenAI's messages as (role, text) pairs for the chat template (agent/generation/stream.py)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise ApiError(400, f"messages[{i}] needs a role among "
                           f"{', '.join(sorted(CHAT_ROLES))}")
        out.append((m["role"], _text(m.get("content", ""), f"messages[{i}].content")))
    return out


@dataclass
class CompletionRequest:
    prompt: str
    sampling: Sampling
    stream: bool
    include_usage: bool
    echo: bool
    model: Optional[str]
    checkpoint: Optional[int] = None    # extension: generate from this cycle's checkpoint


def parse_completion(body: Any, limits: Limits, chat: bool) -> CompletionRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if chat:
        prompt = chat_prompt(parse_messages(body.get("messages")))
    else:
        p = body.get("prompt", "")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str):
            raise ApiError(400, "'prompt' must be a string (batches of prompts are not served)")
        prompt = p
    if len(prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"the prompt has {len(prompt)} characters; this server takes at "
                       f"most {limits.max_prompt_chars}")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = _integer(body, key, 0, limits.max_tokens, limits.default_max_tokens)
    if _integer(body, "n", 1, 1, 1) != 1:
        raise ApiError(400, "'n' must be 1")
    top_k = _integer(body, "top_k", 0, None, None) or None   # 0 or null: no top-k cut
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of at most 4 strings")
    seed = _integer(body, "seed", -(2 ** 63), 2 ** 64 - 1, None)
    if seed is not None and seed < 0:
        seed += 2 ** 64                      # numpy seeds are unsigned
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object")
    stream = body.get("stream", False)
    echo = body.get("echo", False)
    for k, v in (("stream", stream), ("echo", echo)):
        if not isinstance(v, bool):
            raise ApiError(400, f"'{k}' must be true or false")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string")
    sampling = Sampling(max_tokens=max_tokens,
                        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
                        top_k=top_k, top_p=_number(body, "top_p", 0.0, 1.0, None), seed=seed,
                        stop=tuple(stop) + (CHAT_STOPS if chat else ()))
    return CompletionRequest(prompt, sampling, stream, bool(opts.get("include_usage")),
                             echo and not chat, model, _integer(body, "checkpoint", 0, None, None))


async def read_json(request: Request, limit: int):
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------- routes

def model_id(service, ckpt: Optional[ServingCheckpoint]) -> str:
    """What /v1/models lists: the data directory and the served cycle."""
    name = service.data_dir.resolve().name
    return f"cllm-{name}" + (f"-cycle-{ckpt.cycle}" if ckpt is not None else "")


def _ckpt_or_503(service) -> ServingCheckpoint:
    ckpt = service.holder.current
    if ckpt is None:
        raise ApiError(503, f"no model loaded yet: {service.holder.error or 'loading'}",
                       "unavailable_error", {"Retry-After": "5"})
    return ckpt


async def health(request: Request) -> Response:
    service = request.app.state.service
    ckpt = service.holder.current
    if ckpt is None:
        return JSONResponse({"status": "loading", "error": service.holder.error}, 503,
                            {"Retry-After": "5"})
    return JSONResponse({"status": "ok", "model": model_id(service, ckpt), "cycle": ckpt.cycle,
                         "step": ckpt.step, "checkpoint_sha256": ckpt.ref.sha256})


async def models(request: Request) -> Response:
    service = request.app.state.service
    ckpt = service.holder.current
    data = []
    if ckpt is not None:
        data.append({"id": model_id(service, ckpt), "object": "model",
                     "created": int(service.loaded_at), "owned_by": "cllm",
                     "cycle": ckpt.cycle, "step": ckpt.step,
                     "vocab_size": len(ckpt.tokenizer),
                     "context": ckpt.model.config.context,
                     "checkpoint_path": str(ckpt.ref.path), "checkpoint_sha256": ckpt.ref.sha256})
    return JSONResponse({"object": "list", "data": data})


async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


async def chat_completions(request: Request) -> Response:
    return await _complete(request, chat=True)


async def _complete(request: Request, chat: bool) -> Response:
    service = request.app.state.service
    req = parse_completion(await read_json(request, service.limits.max_body_bytes),
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


async def start_generation(service, req: CompletionRequest):
    """(checkpoint, text stream, generation) of a validated request: the checkpoint it names
    (or 503), a generation slot (or 429), the prompt tokenised off the loop."""
    if req.checkpoint is None:
        ckpt = _ckpt_or_503(service)
    else:
        try:
            ckpt = await anyio.to_thread.run_sync(service.checkpoint_of, req.checkpoint)
        except CllmError as e:
            raise ApiError(400, f"'checkpoint': {e.one_line()}") from None
    if not await _acquire(service.slots, service.limits.queue_timeout):
        service.metrics.rejected()
        raise ApiError(429, f"all {service.slots.n} generation slots are busy; retry shortly",
                       "rate_limit_error", {"Retry-After": "1"})
    try:   # tokenising a long prompt takes a while: off the loop too
        ts = await anyio.to_thread.run_sync(TextStream, ckpt, req.prompt, req.sampling, None,
                                            service.batcher(ckpt))
    except BaseException:
        service.slots.release()
        raise
    return ckpt, ts, _Run(service, ts)


async def _acquire(slots: Slots, timeout: float) -> bool:
    """Take a free slot at once, else wait for one on a worker thread; a slot won by a
    request cancelled meanwhile is given back."""
    if slots.acquire(0):
        return True
    got: list[bool] = []

    def take() -> bool:
        got.append(slots.acquire(timeout))
        return got[-1]
    try:
        return await anyio.to_thread.run_sync(take)
    except BaseException:
        if got and got[-1]:
            slots.release()
        raise


class RunResponse(StreamingResponse):
    """A streamed generation whose run is closed when the response ends, however it ends
    (finished, the client hung up, the server stopped)."""

    def __init__(self, run: "_Run", content, **kw) -> None:
        super().__init__(content, **kw)
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()


def _usage(ts: TextStream) -> dict:
    return {"prompt_tokens": ts.prompt_tokens, "completion_tokens": ts.completion_tokens,
            "total_tokens": ts.prompt_tokens + ts.completion_tokens}


class _Run:
    """One generation holding a slot, read on the event loop (`async for` over its
    TextStream: the batcher's thread hands it each id). close() (always called, on the
    loop) ends it if unfinished, frees the slot and counts it in the metrics, once."""

    def __init__(self, service, ts: TextStream) -> None:
        self.service, self.ts = service, ts
        self.t0 = time.perf_counter()
        self.first: Optional[float] = None
        self._open = True

    async def pieces(self):
        try:
            async for piece in self.ts:
                if self.first is None:
                    self.first = time.perf_counter() - self.t0
                yield piece
        finally:
            self.close()

    async def text(self) -> str:
        """The whole text (a response that is not streamed)."""
        return "".join([p async for p in self.pieces()])

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self.ts.close()
        self.service.slots.release()
        finished = self.ts.finish_reason in ("stop", "length")
        self.service.metrics.generated(self.ts.completion_tokens, self.ts.prompt_tokens,
                                       time.perf_counter() - self.t0, self.first, finished)


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _sse(run: _Run, meta: dict, req: CompletionRequest, chat: bool):
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
