"""`cllm serve`: an HTTP server over a data directory (the `serve` extra: Starlette, uvicorn,
prometheus_client).

    api.py         /health, /v1/models, /v1/completions, /v1/chat/completions (OpenAI shapes)
    ollama.py      /api/tags, /api/version, /api/generate, /api/chat (Ollama's shapes)
    history.py     /api/status, /api/cycles, ... (the CLI's history rows) and /metrics
    dashboard.py   the page at /, its assets, /api/events (events.py), targets, neighbours,
                   bench (bench.py: run in a child process, bounded by the machine)
    validation.py  request bodies checked field by field (OpenAI's completion requests)
    runs.py        a request's generation: its checkpoint, its slot, its text on the loop
    slots.py       the one bound on generations at once (429 when every slot stays taken;
                   waiting holds no thread)
    errors.py      ApiError and the handlers that give every error one JSON shape
    config.py      ServeConfig and Limits: the serving defaults (no `serve` extra needed)
    app.py         the Starlette app, the Service its routes share and the uvicorn Server
                   (thread or not)
    protocol.py    uvicorn's h11 protocol with deadlines on request heads and stalled
                   readers, and a cap on open connections
    reload.py      the checkpoint held in memory and the watcher that reloads it
    security.py    Host / Origin / token rules as middleware, the token and its file
    metrics.py     the server's own counters
    events.py      the dashboard's live events; wake.py the threads that watch for them

Generation itself is agent/generation/ (shared with `cllm generate` and `cllm chat`): the
decoding thread of a checkpoint's batcher hands each id to the event loop (runs.py reads it).
"""
from __future__ import annotations

import importlib.util

from engine.errors import CllmError

REQUIRED = ("starlette", "uvicorn", "prometheus_client")


def require_serve_extra() -> None:
    """A one-line error with the pip hint when the `serve` extra is not installed."""
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise CllmError(f"cllm serve needs {', '.join(missing)}, which is not installed",
                        "pip install 'crystalline-cllm[serve]'")
