"""What a server is told: `ServeConfig` (where it listens, who may ask, which checkpoint) and
its `Limits` (request sizes, generations at once). Their defaults are the serving defaults,
written here only: `cllm serve`'s options (agent/cli/serve.py) take theirs from them.
Plain dataclasses: importable without the `serve` extra.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from agent.generation.checkpoint import DECODE_WEIGHTS


@dataclass
class Limits:
    max_tokens: int = 1024         # the most tokens one request may ask for
    default_max_tokens: int = 128  # when it asks for none
    max_prompt_chars: int = 65536  # prompt (or all messages) length
    max_body_bytes: int = 1 << 20  # a request body (JSON) larger is refused with 413
    max_json_depth: int = 32       # a JSON body nesting deeper is refused with 400
    concurrency: int = 2           # generations at once (Slots; each batcher gets this many rows)
    queue_timeout: float = 10.0    # seconds a request waits for a slot, then 429
    request_timeout: float = 300.0  # seconds a generation may hold its slot, then it ends
    checkpoint_cache: int = 4      # earlier checkpoints requests named, kept loaded (LRU)
    # connections (protocol.py): a client has read_timeout seconds to send a request's head
    # (and again its JSON body); one that reads nothing of a response for send_timeout
    # seconds is dropped; at most max_connections are open at once
    read_timeout: float = 20.0
    send_timeout: float = 30.0
    max_connections: int = 100
    keep_alive: float = 5.0        # seconds an idle connection stays open between requests
    # the dashboard's benchmark (bench.py), run out of process: at most this fraction of
    # the memory available, one run at a time, the next at least bench_interval seconds
    # after the last ended, and stopped after bench_timeout seconds
    bench_memory_fraction: float = 0.5
    bench_interval: float = 10.0
    bench_timeout: float = 900.0


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    # given (--token-file, $CLLM_TOKEN); None: the data directory's own
    # (security.data_dir_token). Never in the repr: a logged config shows no secret
    token: Optional[str] = field(default=None, repr=False)
    auth: str = "token"                  # "none": no token on loopback (never beyond)
    tls_cert: Optional[Path] = None      # TLS (uvicorn's ssl_certfile/ssl_keyfile)
    tls_key: Optional[Path] = None
    allow_http: bool = False             # beyond loopback without TLS, explicitly
    cors: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    cycle: Optional[int] = None          # serve this cycle's checkpoint (no reloading)
    committed: bool = False              # committed checkpoints only, no live snapshots
    limits: Limits = field(default_factory=Limits)
    decode_weights: str = DECODE_WEIGHTS  # the copies decoding reads (engine.decode)
