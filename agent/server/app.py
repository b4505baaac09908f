"""The Starlette application, the `Service` its routes share (the store, the held checkpoint,
the generation slots, metrics) and the uvicorn server that runs it (its ServeConfig:
config.py).

Starlette + uvicorn: a small, well-kept ASGI stack; streaming responses give Server-Sent
Events without more libraries, and uvicorn runs on a socket bound here (so the port is known,
and connections queue, before the server thread even starts).

    service = Service(store, data_dir, ServeConfig(port=0))
    server = Server(service)
    server.start()          # a thread; server.url is ready at once
    ...
    server.stop()           # uvicorn exits, the checkpoint watcher stops, both joined

`Server.run()` blocks instead (the CLI; Ctrl-C stops it).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from agent.generation.checkpoint import load_serving_checkpoint
from agent.server import api, dashboard, history, infill, ollama, tokens
from agent.server.bench import BenchRunner
from agent.server.config import ServeConfig
from agent.server.errors import HANDLERS
from agent.server.events import EventHub, StoreWatcher
from agent.server.metrics import ServerMetrics
from agent.server.protocol import guarded_protocol
from agent.server.reload import CheckpointWatcher, ModelHolder
from agent.server.security import (AccessGuard, HostGuard, SecurityHeaders, allowed_hosts,
                                   check_binding, own_origins, redact_access_log, server_token,
                                   token_path)
from agent.server.slots import Slots
from engine.errors import CllmError

log = logging.getLogger(__name__)


class Service:
    """What the routes share: the store, the held checkpoint, generation slots, metrics."""

    def __init__(self, store, data_dir: Path, config: ServeConfig,
                 holder: Optional[ModelHolder] = None) -> None:
        self.store, self.data_dir, self.config = store, Path(data_dir), config
        self.limits = config.limits
        self.holder = holder or ModelHolder(store, data_dir, config.cycle,
                                            config.decode_weights, config.committed)
        self.slots = Slots(config.limits.concurrency)    # the bound on generations at once
        self.metrics = ServerMetrics()
        self.metrics.registry.register(history.StoreCollector(self))
        self.loaded_at = time.time()
        self.holder.listeners.append(self._loaded)
        self._pinned: OrderedDict[int, object] = OrderedDict()   # least recently used first
        self.checkpoint_loads = 0             # earlier cycles' checkpoints loaded so far
        self.bench = BenchRunner(config.limits)   # the dashboard's benchmark, out of process
        self._served = weakref.WeakSet()      # checkpoints that generated: closed with us
        self._pinned_lock = threading.Lock()
        self.hub = EventHub()                 # the dashboard's live updates
        self.holder.listeners.append(
            lambda ckpt: self.hub.publish("model", {"cycle": ckpt.cycle}))
        self.store_changed = lambda: None     # set by the Server: re-read the store now
        # called after a control is written (pause, a target added): an agent running this
        # server reads the store's controls at once instead of at its next heartbeat
        self.control_listeners: list = []

    def controls_changed(self) -> None:
        for listener in self.control_listeners:
            listener()
        self.store_changed()

    def checkpoint_of(self, cycle: int):
        """Cycle `cycle`'s checkpoint: the served one, or loaded (its SHA-256 checked) and
        kept, the `Limits.checkpoint_cache` most recently used (each about its file's size
        in memory), so requests that alternate among a few cycles load each once."""
        cur = self.holder.current
        if cur is not None and cur.live is None and cur.cycle == cycle:
            return cur
        with self._pinned_lock:
            ckpt = self._pinned.get(cycle)
            if ckpt is None:
                ckpt = load_serving_checkpoint(self.store, self.data_dir, cycle,
                                               self.config.decode_weights)
                self.checkpoint_loads += 1
                self._pinned[cycle] = ckpt
            self._pinned.move_to_end(cycle)
            while len(self._pinned) > max(1, self.limits.checkpoint_cache):
                self._pinned.popitem(last=False)
            return ckpt

    def batcher(self, ckpt):
        """The checkpoint's batched decoding, one row per generation slot: the slots bound
        the generations, the rows only hold them (a request may wait one step for the row
        of one that just ended)."""
        self._served.add(ckpt)
        return ckpt.batcher(self.limits.concurrency)

    def close(self) -> None:
        """End the generations under way and join the batchers' decoding threads."""
        for ckpt in list(self._served):
            ckpt.close()
        self.bench.kill()

    def _loaded(self, ckpt) -> None:
        self.loaded_at = time.time()
        self.metrics.reloads.inc()


def build_app(service: Service, port: int, token: Optional[str],
              secure: bool = False) -> Starlette:
    """The app on `port` (its own origins, its cookie's name) requiring `token` (None:
    none, --auth none on loopback); `secure` under TLS."""
    cfg = service.config
    hosts = allowed_hosts(cfg.host, cfg.allowed_hosts)
    middleware = [Middleware(HostGuard, hosts=hosts)]
    if cfg.cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cfg.cors),
                                     allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type"]))
    middleware.append(Middleware(AccessGuard, port=port, token=token, cors_origins=cfg.cors,
                                 origins=own_origins(hosts, port, "https" if secure else "http"),
                                 secure=secure))
    routes = [*api.ROUTES, *ollama.ROUTES, *tokens.ROUTES, *infill.ROUTES, *history.ROUTES,
              *dashboard.ROUTES]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=HANDLERS)
    app.state.service = service
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: a free one)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise CllmError(f"cannot listen on {host}:{port}: {e}", "check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)          # connections queue from now on, before uvicorn runs
    except OSError as e:
        sock.close()
        raise CllmError(f"cannot listen on {host}:{port}: {e.strerror}",
                        "pick another --port, or stop what uses it") from None
    return sock


class Server:
    """uvicorn serving `build_app(service)`, with the checkpoint watcher alongside."""

    def __init__(self, service: Service, watch: bool = True, log_level: str = "warning",
                 on_failure=None) -> None:
        cfg = service.config
        check_binding(cfg)
        self.service = service
        self.token = server_token(cfg, service.data_dir)     # None: --auth none (loopback)
        self.secure = cfg.tls_cert is not None
        self.sock = bind(cfg.host, cfg.port)
        self.port = self.sock.getsockname()[1]
        self.app = build_app(service, self.port, self.token, self.secure)
        self.watcher = CheckpointWatcher(service.holder, observe=watch)
        self.store_watcher = StoreWatcher(service.store, service.data_dir, service.hub)
        service.store_changed = self.store_watcher.notify
        hub = service.hub

        class _Uvicorn(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:     # Ctrl-C: end the event streams
                hub.close()
                super().handle_exit(sig, frame)

        # the security headers outside Starlette's own error middleware: on its 500s too
        limits = service.limits
        self._uv = _Uvicorn(uvicorn.Config(
            SecurityHeaders(self.app), host=cfg.host, port=self.port, log_level=log_level,
            lifespan="off", proxy_headers=False, server_header=False, timeout_graceful_shutdown=5,
            access_log=log_level in ("info", "debug"),
            ssl_certfile=str(cfg.tls_cert) if self.secure else None,
            ssl_keyfile=str(cfg.tls_key) if self.secure else None,
            # h11 with the guards uvicorn lacks: a deadline on a request's head, a cap on
            # connections, a send timeout (protocol.py); uvicorn's own 503 limit stays
            # above that cap, a backstop only
            http=guarded_protocol(limits), limit_concurrency=limits.max_connections + 1,
            timeout_keep_alive=limits.keep_alive))
        redact_access_log()          # after uvicorn's logging set-up: no token in its log
        self._thread: Optional[threading.Thread] = None
        self.failure: Optional[BaseException] = None
        self.on_failure = on_failure          # called with the exception if the thread fails

    @property
    def url(self) -> str:
        host = self.service.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        scheme = "https" if self.secure else "http"
        return (f"{scheme}://[{host}]:{self.port}" if ":" in host
                else f"{scheme}://{host}:{self.port}")

    @property
    def dashboard_url(self) -> str:
        """The link that opens the dashboard logged in: with the data directory's token
        (a secret of that directory's owner, as Jupyter prints its own); a token the user
        gave is not printed back."""
        if self.token is None:
            return self.url + "/"
        if self.service.config.token is not None:
            return self.url + "/?token=<your token>"
        return f"{self.url}/?token={self.token}"

    def token_hint(self) -> str:
        """How clients authenticate, for the start-up message."""
        if self.token is None:
            return "no token required (--auth none): anyone on this machine may use it"
        where = ("the token you gave" if self.service.config.token is not None
                 else f"`cllm token` prints it; it is kept in "
                      f"{token_path(self.service.data_dir)}")
        return f"clients send 'Authorization: Bearer TOKEN' ({where})"

    def run(self) -> None:
        """Serve until stopped (should_exit, or Ctrl-C when on the main thread)."""
        self.watcher.start()
        self.store_watcher.start()
        try:
            self._uv.run(sockets=[self.sock])
        finally:
            self.service.hub.close()
            self.service.close()
            self.store_watcher.stop()
            self.watcher.stop()
            self.sock.close()

    def _run_thread(self) -> None:
        try:
            self.run()
        except BaseException as e:
            self.failure = e
            log.exception("server failed")
            if self.on_failure is not None:
                self.on_failure(e)

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self._run_thread, name="cllm-serve", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        """A checkpoint was committed in this process: reload, and tell the dashboards."""
        self.watcher.notify()
        self.store_watcher.notify()

    def stop(self) -> None:
        self.service.hub.close()           # open event streams end, so shutdown need not wait
        self._uv.should_exit = True
        if self._thread is not None:
            self._thread.join()
        for failure in (self.failure, self.watcher.failure, self.store_watcher.failure):
            if failure is not None:
                raise failure

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
