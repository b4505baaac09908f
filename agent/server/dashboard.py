"""The dashboard: the page at `/` with its assets (package data under static/, nothing from
the internet), the live event stream, and the routes only the page needs: crawl targets
(list, add, remove: rows of the store's targets table), a token's crystalline neighbours,
and running the engine benchmark.

Control actions write the store, never the agent's memory, so they work whether the
server runs inside the agent or beside it.
"""
from __future__ import annotations

from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agent import reports
from agent.benchmark import table_lines
from agent.server.bench import parse_bench
from agent.server.errors import ApiError
from agent.server.events import events
from agent.server.history import _int, json_response
from agent.server.validation import read_json
from engine.errors import CllmError
from engine.prime_math import describe_token
from store import StoreError, controls
from store import targets as target_store
from store.models import TargetKind

STATIC = Path(__file__).parent / "static"


async def index(request: Request) -> Response:
    """The page (`/?token=` never reaches here: AccessGuard sets the cookie and redirects)."""
    resp = FileResponse(STATIC / "index.html", media_type="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


async def list_targets(request: Request) -> Response:
    service = request.app.state.service

    def read():
        with service.store.session(read_only=True) as s:
            return reports.target_rows(s)
    return json_response(await anyio.to_thread.run_sync(read))


async def add_target(request: Request) -> Response:
    from agent.crawler import record_target  # the crawler's stack (~40 MiB): only when used

    service = request.app.state.service
    body = await read_json(request, service.limits)
    kinds = [k.value for k in TargetKind]
    if not isinstance(body, dict) or body.get("kind") not in kinds:
        raise ApiError(400, f"'kind' must be one of {', '.join(kinds)}")
    location = body.get("location")
    if not isinstance(location, str) or not location.strip():
        raise ApiError(400, "'location' must be a folder, file or http(s) URL")
    try:
        tid = await anyio.to_thread.run_sync(record_target, service.store, body["kind"],
                                             location.strip())
    except (CllmError, StoreError, ValueError) as e:
        msg = e.one_line() if hasattr(e, "one_line") else str(e)
        raise ApiError(400, f"cannot add {location!r}: {msg}") from None
    service.controls_changed()
    resp = json_response({"id": tid})
    resp.status_code = 201
    return resp


async def remove_target(request: Request) -> Response:
    service = request.app.state.service
    try:
        tid = int(request.path_params["id"])
    except ValueError:
        raise ApiError(400, "the target id must be an integer") from None

    def run():
        with service.store.session() as s:
            return target_store.remove_target(s, tid)
    if not await anyio.to_thread.run_sync(run):
        raise ApiError(404, f"no target with id {tid}", "not_found_error")
    service.controls_changed()
    return Response(status_code=204)


async def training(request: Request) -> Response:
    """Pause or resume training: {"paused": true|false}. A row of the store, so the agent
    obeys whether this server runs inside it or beside it."""
    service = request.app.state.service
    body = await read_json(request, service.limits)
    if not isinstance(body, dict) or not isinstance(body.get("paused"), bool):
        raise ApiError(400, "send {\"paused\": true} or {\"paused\": false}")

    def run():
        with service.store.session() as s:
            controls.set_paused(s, body["paused"], by="dashboard")
    await anyio.to_thread.run_sync(run)
    service.controls_changed()
    return json_response({"paused": body["paused"]})


async def neighbours(request: Request) -> Response:
    service = request.app.state.service
    token = _int(request, "token")
    if token is None:
        raise ApiError(400, "query parameter 'token' is required")
    ckpt = service.holder.current
    vocab = len(ckpt.tokenizer) if ckpt is not None else 10000
    if token >= vocab:
        raise ApiError(400, f"token {token} is outside the vocabulary [0, {vocab})")
    d = await anyio.to_thread.run_sync(describe_token, token, vocab)
    if ckpt is not None:
        def text(t: int) -> str:
            return ckpt.tokenizer.token_bytes(t).decode("utf-8", "backslashreplace")
        d["text"] = text(token)
        for n in d["neighbours"]:
            n["text"] = text(n["token"])
    return json_response(d)


async def bench(request: Request) -> Response:
    """Run `cllm bench` in a child process (bench.py: bounded by this machine's CPUs and
    memory, one at a time, rate-limited) and answer its table."""
    service = request.app.state.service
    req = parse_bench(await read_json(request, service.limits))
    res = await service.bench.run(req)
    res["lines"] = table_lines(res)
    return json_response(res)


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/api/events", events, methods=["GET"]),
    Route("/api/targets", list_targets, methods=["GET"]),
    Route("/api/targets", add_target, methods=["POST"]),
    Route("/api/targets/{id}", remove_target, methods=["DELETE"]),
    Route("/api/training", training, methods=["POST"]),
    Route("/api/neighbours", neighbours, methods=["GET"]),
    Route("/api/bench", bench, methods=["POST"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
