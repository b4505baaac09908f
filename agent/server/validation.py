"""Request bodies checked field by field: `read_json` (every JSON route's body: a size cap,
a time limit to send it, then JSON nested no deeper than a cap), `integer` / `number` (one
field's type and range) and `parse_completion` (an OpenAI completion or chat completion as
a `CompletionRequest`); a bad one is an ApiError 400 (413 when too big, 408 when too slow)
naming the field, never a 500.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import anyio
from starlette.requests import Request

from agent.generation.stream import CHAT_ROLES, CHAT_STOPS, Sampling, chat_prompt
from agent.server.config import Limits
from agent.server.errors import ApiError


def number(v, name: str, lo: float, hi: float) -> Optional[float]:
    """`v` as a float within [lo, hi] (None stays None), else a 400 naming `name`."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ApiError(400, f"'{name}' must be a number within [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def integer(v, name: str, lo: int, hi: Optional[int]) -> Optional[int]:
    """`v` as an integer within [lo, hi] (hi None: no upper bound; None stays None), else a
    400 naming `name`."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bound = f"within [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ApiError(400, f"'{name}' must be an integer {bound}, got {v!r}")
    return v


def _number(body: dict, key: str, lo: float, hi: float, default):
    v = number(body.get(key), key, lo, hi)
    return default if v is None else v


def _integer(body: dict, key: str, lo: int, hi: Optional[int], default):
    v = integer(body.get(key), key, lo, hi)
    return default if v is None else v


def _text(v, what: str) -> str:
    """A string, or OpenAI's list of content parts [{"type": "text", "text": ...}]."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                   and isinstance(p.get("text"), str) for p in v):
        return "".join(p["text"] for p in v)
    raise ApiError(400, f"{what} must be a string (or a list of text parts)")


def parse_messages(messages) -> list[tuple[str, str]]:
    """OpenAI's messages as (role, text) pairs for the chat template
    (agent/generation/stream.py)."""
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
    suffix: Optional[str] = None        # fill in the middle: the text after the cursor
    extra: tuple = ()                   # /infill's input_extra: (filename, text) before the prompt
    parse_special: bool = False         # llama.cpp's /completion: special token names are tokens


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
    suffix = None if chat else body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise ApiError(400, "'suffix' must be a string")
    if len(prompt) + len(suffix or "") > limits.max_prompt_chars:
        raise ApiError(400, f"the prompt has {len(prompt) + len(suffix or '')} characters; "
                       f"this server takes at most {limits.max_prompt_chars}")
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
                             echo and not chat, model, _integer(body, "checkpoint", 0, None, None),
                             suffix or None)


async def read_json(request: Request, limits: Limits):
    """The request's JSON body: at most `limits.max_body_bytes` (413), sent within
    `limits.read_timeout` seconds (408), nested at most `limits.max_json_depth` deep (400)."""
    limit = limits.max_body_bytes
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes")
    data = bytearray()
    with anyio.move_on_after(limits.read_timeout) as late:
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise ApiError(413, f"the request body is over {limit} bytes")
    if late.cancelled_caught:
        raise ApiError(408, f"the request body took over {limits.read_timeout:g} s to arrive",
                       headers={"Connection": "close"})
    deep = ApiError(400, f"the request body nests JSON deeper than {limits.max_json_depth} "
                    "levels")
    try:
        body = json.loads(data)
    except RecursionError:
        raise deep from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    # containers nest at most as deep as there are brackets: most bodies need no walk
    if data.count(b"[") + data.count(b"{") > limits.max_json_depth \
            and json_depth(body) > limits.max_json_depth:
        raise deep
    return body


def json_depth(value) -> int:
    """How deep JSON arrays and objects nest in `value` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest
