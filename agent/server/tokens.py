"""The routes peers serve beside completions: llama.cpp's `/tokenize` and `/detokenize`, the
OpenAI `/v1/embeddings`, Ollama's `/api/embed` (and its older `/api/embeddings`) and
`/api/show`, in their request and response shapes.

Tokens are the served checkpoint's ids. An embedding is the mean of the model's final hidden
states over the text's tokens, L2-normalised (agent/generation/embed.py). Embedding holds a
generation slot while it runs (a forward pass over the text), off the event loop, so it is
bounded like a generation; tokenising is not (it is fast and bounded by the body's size).
"""
from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Optional

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.generation.checkpoint import ServingCheckpoint
from agent.generation.embed import embed_ids
from agent.server.api import model_id
from agent.server.errors import ApiError
from agent.server.runs import served_or_503, take_slot
from agent.training.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, fim_ids
from agent.server.validation import integer, read_json


def _body(v) -> dict:
    if not isinstance(v, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return v


def _flag(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if not isinstance(v, bool):
        raise ApiError(400, f"'{key}' must be true or false, got {v!r}")
    return v


def _ids(v, name: str, vocab: int) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                          for i in v):
        raise ApiError(400, f"'{name}' must be a list of token ids")
    bad = [i for i in v if not 0 <= i < vocab]
    if bad:
        raise ApiError(400, f"'{name}' holds ids outside this model's vocabulary "
                       f"[0, {vocab}): {bad[:5]}")
    return v


def _piece(tok, i: int):
    """llama.cpp's `with_pieces` form: the token's text, or its bytes when they are not
    UTF-8 on their own (part of a character)."""
    b = tok.token_bytes(i)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return list(b)


async def tokenize(request: Request) -> Response:
    """llama.cpp: {"content": str, "add_special"?: bool, "with_pieces"?: bool} ->
    {"tokens": [id, ...]} (or [{"id", "piece"}, ...] with pieces). add_special puts the
    end-of-document token first, as training reads a document."""
    service = request.app.state.service
    body = _body(await read_json(request, service.limits))
    content = body.get("content", "")
    if not isinstance(content, str):
        raise ApiError(400, "'content' must be a string")
    if len(content) > service.limits.max_prompt_chars:
        raise ApiError(400, f"'content' is longer than {service.limits.max_prompt_chars} "
                       "characters (cllm serve's limit)")
    add_special = _flag(body, "add_special", False)
    with_pieces = _flag(body, "with_pieces", False)
    ckpt = served_or_503(service)
    tok = ckpt.tokenizer
    ids = [int(i) for i in await anyio.to_thread.run_sync(tok.encode, content)]
    if add_special:
        ids = [tok.eod_id] + ids
    if with_pieces:
        return JSONResponse({"tokens": [{"id": i, "piece": _piece(tok, i)} for i in ids]})
    return JSONResponse({"tokens": ids})


async def detokenize(request: Request) -> Response:
    """llama.cpp: {"tokens": [id, ...]} -> {"content": str} (special tokens decode to
    nothing)."""
    service = request.app.state.service
    body = _body(await read_json(request, service.limits))
    ckpt = served_or_503(service)
    ids = _ids(body.get("tokens", []), "tokens", len(ckpt.tokenizer))
    return JSONResponse({"content": ckpt.tokenizer.decode(ids)})


def _inputs(v, name: str, vocab: int) -> list:
    """A string, a list of strings, a list of ids, or a list of lists of ids (OpenAI's
    `input`), as a list of str | list[int]."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return list(v)
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                         for x in v):
        return [_ids(v, name, vocab)]
    if isinstance(v, list) and v and all(isinstance(x, list) for x in v):
        return [_ids(x, name, vocab) for x in v]
    raise ApiError(400, f"'{name}' must be a string, a list of strings, or token ids")


async def _embed(service, ckpt: ServingCheckpoint, inputs: list
                 ) -> tuple[list[np.ndarray], int]:
    """The vectors of `inputs` (texts or id lists) by `ckpt` (the checkpoint the request was
    validated against) and how many tokens they took, computed holding a generation slot,
    off the loop."""
    limit = service.limits.max_prompt_chars
    if sum(len(x) for x in inputs) > limit:
        raise ApiError(400, f"the input is longer than {limit} characters or tokens in all "
                       "(cllm serve's limit)")
    await take_slot(service)
    try:
        def work():
            tok, model = ckpt.tokenizer, ckpt.model
            out, n = [], 0
            for x in inputs:
                ids = tok.encode(x) if isinstance(x, str) else np.asarray(x, np.int64)
                n += max(1, len(ids))
                out.append(embed_ids(model, ids, tok.eod_id))
            return out, n
        vectors, n = await anyio.to_thread.run_sync(work)
    finally:
        service.slots.release()
    return vectors, n


def _dimensions(body: dict, ckpt: ServingCheckpoint) -> Optional[int]:
    return integer(body.get("dimensions"), "dimensions", 1, ckpt.model.config.d_model)


def _shorten(v: np.ndarray, dims: Optional[int]) -> np.ndarray:
    """The first `dims` numbers, normalised again (OpenAI's and Ollama's `dimensions`)."""
    if dims is None or dims >= v.size:
        return v
    w = v[:dims].astype(np.float64)
    n = float(np.linalg.norm(w))
    return (w / n if n > 0 else w).astype(np.float32)


async def embeddings(request: Request) -> Response:
    """OpenAI: {"input", "model"?, "encoding_format"?: "float" | "base64", "dimensions"?}
    -> {"object":
    "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}."""
    service = request.app.state.service
    body = _body(await read_json(request, service.limits))
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'")
    ckpt = served_or_503(service)
    dims = _dimensions(body, ckpt)
    inputs = _inputs(body.get("input"), "input", len(ckpt.tokenizer))
    vectors, n = await _embed(service, ckpt, inputs)
    vectors = [_shorten(v, dims) for v in vectors]

    def enc(v: np.ndarray):
        if fmt == "base64":
            return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
        return [float(x) for x in v]
    return JSONResponse({"object": "list", "model": model_id(service, ckpt),
                         "data": [{"object": "embedding", "index": i, "embedding": enc(v)}
                                  for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


async def ollama_embed(request: Request) -> Response:
    """Ollama: {"model", "input": str | [str], "truncate"?} -> {"model", "embeddings",
    "total_duration", "load_duration", "prompt_eval_count"}. A text longer than the context
    is read in windows of it, never truncated."""
    service = request.app.state.service
    body = _body(await read_json(request, service.limits))
    v = body.get("input")
    if not (isinstance(v, str) or (isinstance(v, list) and v
                                   and all(isinstance(x, str) for x in v))):
        raise ApiError(400, "'input' must be a string or a list of strings")
    _flag(body, "truncate", True)
    ckpt = served_or_503(service)
    dims = _dimensions(body, ckpt)
    t0 = time.perf_counter_ns()
    vectors, n = await _embed(service, ckpt, [v] if isinstance(v, str) else v)
    vectors = [_shorten(v, dims) for v in vectors]
    return JSONResponse({"model": model_id(service, ckpt),
                         "embeddings": [[float(x) for x in e] for e in vectors],
                         "total_duration": time.perf_counter_ns() - t0, "load_duration": 0,
                         "prompt_eval_count": n})


async def ollama_embeddings(request: Request) -> Response:
    """Ollama's older route: {"model", "prompt"} -> {"embedding": [...]}."""
    service = request.app.state.service
    body = _body(await read_json(request, service.limits))
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string")
    vectors, _ = await _embed(service, served_or_503(service), [prompt])
    return JSONResponse({"embedding": [float(x) for x in vectors[0]]})


def model_info(ckpt: ServingCheckpoint) -> dict:
    """GGUF's keys for the served model, as Ollama's /api/show gives them (editor plugins
    read `<architecture>.context_length`)."""
    cfg = ckpt.model.config
    return {"general.architecture": "gpt2", "general.parameter_count": int(ckpt.model.params.size),
            "gpt2.context_length": cfg.context, "gpt2.embedding_length": cfg.d_model,
            "gpt2.feed_forward_length": 4 * cfg.d_model, "gpt2.block_count": cfg.n_layers,
            "gpt2.attention.head_count": cfg.n_heads, "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.eos_token_id": ckpt.tokenizer.eod_id,
            "tokenizer.ggml.vocab_size": len(ckpt.tokenizer)}


def template(ckpt: ServingCheckpoint) -> str:
    """The prompt template, in Ollama's syntax: the prompt as it is, or with a suffix the
    fill-in-the-middle layout (agent/training/fim.py) when the model was trained for it."""
    if fim_ids(ckpt.tokenizer) is None:
        return "{{ .Prompt }}"
    return (f"{{{{- if .Suffix }}}}{FIM_PREFIX}{{{{ .Prompt }}}}{FIM_SUFFIX}{{{{ .Suffix }}}}"
            f"{FIM_MIDDLE}{{{{- else }}}}{{{{ .Prompt }}}}{{{{- end }}}}")


async def show(request: Request) -> Response:
    """Ollama: {"model" (or "name")} -> the served model's modelfile, parameters, template,
    details, model_info and capabilities. This server holds one model: any name shows it."""
    service = request.app.state.service
    body = _body(await read_json(request, service.limits))
    name: Optional[str] = body.get("model", body.get("name"))
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "'model' must be a string")
    ckpt = served_or_503(service)
    cfg = ckpt.model.config
    served = model_id(service, ckpt)
    return JSONResponse({
        "license": "",
        "modelfile": f"# the model cllm serves: {served}\n# a GGUF of it: cllm export "
                     f"--checkpoint {ckpt.ref.cycle_id} -o model.gguf\nFROM model.gguf\n"
                     f"PARAMETER num_ctx {cfg.context}\nPARAMETER stop <|eod|>\n",
        "parameters": f"num_ctx {cfg.context}\nstop <|eod|>",
        "template": template(ckpt),
        "details": {"parent_model": "", "format": "gguf", "family": "gpt2",
                    "families": ["gpt2"], "parameter_size": str(int(ckpt.model.params.size)),
                    "quantization_level": "F32"},
        "model_info": model_info(ckpt),
        "capabilities": ["completion", "embedding"]
        + (["insert"] if fim_ids(ckpt.tokenizer) is not None else []),
        "modified_at": dt.datetime.fromtimestamp(service.loaded_at, dt.timezone.utc)
        .isoformat()})


ROUTES = [
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/api/embed", ollama_embed, methods=["POST"]),
    Route("/api/embeddings", ollama_embeddings, methods=["POST"]),
    Route("/api/show", show, methods=["POST"]),
]
