"""`cllm serve`: an HTTP server over a data directory (the `serve` extra: Starlette, uvicorn,
prometheus_client).

    api.py       /health, /v1/models, /v1/completions, /v1/chat/completions (OpenAI shapes)
    ollama.py    /api/tags, /api/version, /api/generate, /api/chat (Ollama's shapes)
    history.py   /api/status, /api/cycles, ... (the CLI's history rows) and /metrics
    dashboard.py the page at /, its assets, /api/events (events.py), targets, neighbours, bench
    app.py       the Starlette app, ServeConfig, Service and the uvicorn Server (thread or not)
    reload.py    the checkpoint held in memory and the watcher that reloads it
    security.py  Host / Origin / token rules as middleware
    metrics.py   the server's own counters

Generation itself is agent/generation/ (shared with `cllm generate` and `cllm chat`).
"""
from __future__ import annotations

from engine.errors import CllmError

REQUIRED = ("starlette", "uvicorn", "prometheus_client")


def require_serve_extra() -> None:
    """A one-line error with the pip hint when the `serve` extra is not installed."""
    import importlib.util

    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise CllmError(f"cllm serve needs {', '.join(missing)}, which is not installed",
                        "pip install 'crystalline-cllm[serve]'")
