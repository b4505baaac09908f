"""The server's own counters (generation requests, tokens, latency), kept in a registry per
server so several servers in one process (tests, an agent) never share or clash."""
from __future__ import annotations

from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("cllm_generation_requests", "Generation requests served, by "
                                "outcome (finished, cancelled, rejected).", ["outcome"],
                                registry=r)
        self.tokens = Counter("cllm_generated_tokens", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("cllm_prompt_tokens", "Prompt tokens read.", registry=r)
        self.latency = Histogram("cllm_generation_seconds", "Wall time of a generation.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("cllm_time_to_first_token_seconds",
                                     "From the request's slot to its first text.",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.reloads = Counter("cllm_checkpoint_loads", "Checkpoints loaded by the server.",
                               registry=r)

    def rejected(self) -> None:
        self.requests.labels("rejected").inc()

    def generated(self, tokens: int, prompt_tokens: int, seconds: float,
                  first: Optional[float], finished: bool) -> None:
        self.requests.labels("finished" if finished else "cancelled").inc()
        self.tokens.inc(tokens)
        self.prompt_tokens.inc(prompt_tokens)
        self.latency.observe(seconds)
        if first is not None:
            self.first_token.observe(first)
