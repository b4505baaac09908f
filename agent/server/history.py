"""/api/* (the CLI's views as JSON, the same rows as its --json: agent/reports.py) and
/metrics (Prometheus text: the store's state at scrape time plus the server's counters).

Store reads run on worker threads (one read-only session each), never on the event loop.
Query parameters are checked like request bodies: a bad one is a 400 naming it. The views
that grow with what is crawled and learned (/api/documents, /api/urls, /api/steps) answer
one page at a time (`_page`: ?limit= and ?offset=, a default page size, the total count
in a header).
"""
from __future__ import annotations

import json
from typing import Optional

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent import reports
from agent.limits import REASONS
from agent.server.errors import ApiError
from store.models import DocumentStatus, UrlStatus


DEFAULT_PAGE = 1000  # rows a list route answers unless asked for another ?limit=
MAX_PAGE = 10_000   # ... and at most


def _int(request: Request, name: str, lo: int = 0, hi: Optional[int] = None) -> Optional[int]:
    v = request.query_params.get(name)
    if v is None or v == "":
        return None
    try:
        n = int(v)
    except ValueError:
        n = lo - 1
    if n < lo or (hi is not None and n > hi):
        bound = f"within [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ApiError(400, f"query parameter '{name}' must be an integer {bound}, got {v!r}")
    return n


def _choice(request: Request, name: str, choices) -> Optional[str]:
    v = request.query_params.get(name)
    if v is not None and v not in choices:
        raise ApiError(400, f"query parameter '{name}' must be one of {', '.join(choices)}, "
                       f"got {v!r}")
    return v


def _flag(request: Request, name: str) -> bool:
    return _choice(request, name, ("0", "1", "true", "false")) in ("1", "true")


def json_response(data, headers: Optional[dict] = None) -> Response:
    return Response(json.dumps(data, default=reports.jsonable), media_type="application/json",
                    headers=headers)


async def _read(request: Request, fn, *args, **kwargs) -> Response:
    service = request.app.state.service

    def run():
        with service.store.session(read_only=True) as s:
            return fn(s, *args, **kwargs)
    return json_response(await anyio.to_thread.run_sync(run))


async def status(request: Request) -> Response:
    service = request.app.state.service
    return await _read(request, reports.status_view, service.data_dir, service.store.describe())


async def cycles(request: Request) -> Response:
    return await _read(request, reports.cycle_rows)


async def _page(request: Request, rows_fn, total_fn, **filters) -> Response:
    """One page of a list view: `?limit=` rows (DEFAULT_PAGE unless given, at most MAX_PAGE)
    from `?offset=`. The body is the rows' list, as before paging; the paging is in the
    headers: X-Total-Count (rows on all pages, counted in SQL) and, when more follow, a Link
    to the next page (rel="next")."""
    limit = _int(request, "limit", 1, MAX_PAGE) or DEFAULT_PAGE
    offset = _int(request, "offset", 0) or 0
    service = request.app.state.service

    def run():
        with service.store.session(read_only=True) as s:
            return rows_fn(s, limit=limit, offset=offset, **filters), total_fn(s, **filters)
    rows, total = await anyio.to_thread.run_sync(run)
    headers = {"X-Total-Count": str(total)}
    if offset + len(rows) < total:
        nxt = request.url.include_query_params(limit=limit, offset=offset + len(rows))
        headers["Link"] = f'<{nxt.path}?{nxt.query}>; rel="next"'
    return json_response(rows, headers)


async def documents(request: Request) -> Response:
    return await _page(request, reports.document_rows, reports.document_total,
                       status=_choice(request, "status", [s.value for s in DocumentStatus]),
                       source=request.query_params.get("source"), cycle_id=_int(request, "cycle"))


async def urls(request: Request) -> Response:
    return await _page(request, reports.url_rows, reports.url_total,
                       status=_choice(request, "status", [s.value for s in UrlStatus]))


async def vocab(request: Request) -> Response:
    cycle = _int(request, "cycle")
    return await _read(request, lambda s: reports.vocab_rows(s, cycle)[0])


async def forgetting(request: Request) -> Response:
    return await _read(request, reports.forgetting_rows, source=request.query_params.get("source"))


async def checkpoints(request: Request) -> Response:
    return await _read(request, reports.checkpoint_rows, verify=_flag(request, "verify"))


async def steps(request: Request) -> Response:
    return await _page(request, reports.step_rows, reports.step_total, cycle_id=_int(request, "cycle"))


# ---------------------------------------------------------------------------------- metrics

class StoreCollector:
    """Prometheus gauges read from the store at each scrape (what `cllm status` shows)."""

    def __init__(self, service) -> None:
        self.service = service

    def describe(self):
        return []        # collected on demand only: no store read at registration

    def collect(self):
        svc = self.service
        with svc.store.session(read_only=True) as s:
            st = reports.status_view(s, svc.data_dir, svc.store.describe())
            by_status: dict[str, int] = {}
            for c in reports.cycle_rows(s):
                by_status[c["status"]] = by_status.get(c["status"], 0) + 1
        g = GaugeMetricFamily("cllm_cycles", "Training cycles by status.", labels=["status"])
        for k, v in sorted(by_status.items()):
            g.add_metric([k], v)
        yield g
        g = GaugeMetricFamily("cllm_documents", "Documents by status.", labels=["status"])
        for k, v in st["documents"].items():
            g.add_metric([k], v)
        yield g
        b = st["backlog"]
        yield GaugeMetricFamily("cllm_backlog_documents", "Documents still to learn.",
                                value=b.get("documents") or 0)
        yield GaugeMetricFamily("cllm_backlog_bytes", "Bytes still to learn.",
                                value=b.get("bytes") or 0)
        if b.get("eta_s") is not None:
            yield GaugeMetricFamily("cllm_backlog_eta_seconds", "Estimated time to learn the "
                                    "backlog.", value=b["eta_s"])
        if b.get("tokens_per_s") is not None:
            yield GaugeMetricFamily("cllm_training_tokens_per_second", "Training tokens/s of "
                                    "the last completed cycle.", value=b["tokens_per_s"])
        yield GaugeMetricFamily("cllm_agent_running", "1 while an agent holds the data "
                                "directory.", value=int(st["agent_running"]))
        g = GaugeMetricFamily("cllm_training_paused", "1 for each reason training is paused "
                              "(user, battery, load); the sentences are in /api/status.",
                              labels=["reason"])
        for reason in REASONS:
            g.add_metric([reason], int(reason in st["paused_by"]))
        yield g
        phase = st["training_phase"]
        if phase is not None:
            g = GaugeMetricFamily("cllm_training_phase", "1 for the trainer's phase (learning, "
                                  "consolidating, converged, waiting, idle, paused); the reason is in "
                                  "/api/status.", labels=["phase"])
            g.add_metric([phase["phase"]], 1)
            yield g
        cur = st["current_cycle"]
        if cur is not None:
            yield GaugeMetricFamily("cllm_current_cycle_step", "Step of the running cycle.",
                                    value=cur["step"] or 0)
            if cur["loss"] is not None:
                yield GaugeMetricFamily("cllm_current_cycle_loss", "Latest sampled loss of "
                                        "the running cycle.", value=cur["loss"])
        ckpt = svc.holder.current
        if ckpt is not None and ckpt.cycle is not None:
            yield GaugeMetricFamily("cllm_served_cycle", "The cycle whose checkpoint is "
                                    "served.", value=ckpt.cycle)


async def metrics(request: Request) -> Response:
    service = request.app.state.service
    body = await anyio.to_thread.run_sync(generate_latest, service.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


ROUTES = [Route(f"/api/{fn.__name__}", fn, methods=["GET"])
          for fn in (status, cycles, documents, urls, vocab, forgetting, checkpoints, steps)]
ROUTES.append(Route("/metrics", metrics, methods=["GET"]))
