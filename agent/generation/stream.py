"""Text generation from a served checkpoint: `Sampling` (how tokens are drawn), `TextStream`
(the one generation loop: stop strings, whole UTF-8 characters, usage counts, cancelling)
and the plain chat template. Used by `cllm generate`, `cllm chat` and `cllm serve`.
"""
from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from agent.generation.batcher import DecodeBatcher
from agent.generation.checkpoint import ServingCheckpoint


@dataclass(frozen=True)
class Sampling:
    """How to draw tokens: temperature 0 is greedy; top_k/top_p None keep everything."""
    max_tokens: int = 120
    temperature: float = 0.8
    top_k: Optional[int] = 40
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()


class TextStream:
    """Generate text from a checkpoint, one decoded piece at a time.

    Iterating yields text: whole UTF-8 characters, never a piece of a stop string (text
    that could still become one is held back until it cannot), stopping at the end-of-text
    token, at a stop string (not included) or after `max_tokens` tokens. With a `batcher`
    (a server's) the tokens come from its batched decoding, shared with other requests.
    After the loop, `finish_reason` is "stop" or "length" (OpenAI's names) and
    `prompt_tokens` / `completion_tokens` count tokens. A set `cancel` event ends it before
    the next token.
    """

    def __init__(self, ckpt: ServingCheckpoint, prompt: str, sampling: Sampling,
                 cancel: Optional[threading.Event] = None,
                 batcher: Optional[DecodeBatcher] = None) -> None:
        tok = ckpt.tokenizer
        self.ckpt, self.sampling, self.cancel, self.batcher = ckpt, sampling, cancel, batcher
        self.ids = list(tok.encode(prompt)) if prompt else []
        self.prompt_tokens = len(self.ids)
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self.text = ""                    # everything produced (including held-back text)

    def __iter__(self) -> Iterator[str]:
        tok, sp = self.ckpt.tokenizer, self.sampling
        stops = [s for s in sp.stop if s]
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sent = 0
        self.finish_reason = "length"
        ids = self.ids or [tok.eod_id]
        source = (self.batcher.stream if self.batcher is not None
                  else self.ckpt.model.generate_stream)
        kw = {} if self.batcher is not None else {"weights": self.ckpt.weights}
        gen = source(ids, sp.max_tokens, temperature=sp.temperature, top_k=sp.top_k,
                     top_p=sp.top_p, seed=sp.seed, **kw)
        try:
            for t in gen:
                if self.cancel is not None and self.cancel.is_set():
                    self.finish_reason = "cancelled"
                    return
                if t == tok.eod_id:
                    self.finish_reason = "stop"
                    break
                self.completion_tokens += 1
                self.text += dec.decode(tok.token_bytes(t))
                hit = _first_stop(self.text, stops, sent)
                if hit is not None:
                    self.text = self.text[:hit]
                    self.finish_reason = "stop"
                    break
                end = len(self.text) - _held_back(self.text, stops)
                if end > sent:
                    yield self.text[sent:end]
                    sent = end
            else:
                self.text += dec.decode(b"", final=True)
                hit = _first_stop(self.text, stops, sent)
                if hit is not None:
                    self.text, self.finish_reason = self.text[:hit], "stop"
        finally:
            gen.close()
        if len(self.text) > sent:
            yield self.text[sent:]

    def run(self) -> str:
        """The whole completion at once."""
        return "".join(self)


CHAT_ROLES = {"system": "System", "developer": "System", "user": "User",
              "assistant": "Assistant"}
CHAT_STOPS = ("\nUser:", "\nSystem:")   # the model going on with the conversation by itself


def chat_prompt(messages: Sequence[tuple[str, str]]) -> str:
    """The plain chat template: one "Role: text" line per (role, text) message, then
    "Assistant:" for the model to continue. Generate with CHAT_STOPS among the stops."""
    return "\n".join(f"{CHAT_ROLES[role]}: {text}" for role, text in messages) + "\nAssistant:"


def _first_stop(text: str, stops: Sequence[str], start: int) -> Optional[int]:
    """Where the earliest stop string begins at or after `start`, if any (text before
    `start` was sent, and what was sent never ends with the start of a stop string)."""
    found = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could be the start of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
