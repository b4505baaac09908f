"""Text generation from a served checkpoint: `Sampling` (how tokens are drawn), `TextStream`
(the one generation loop: stop strings, whole UTF-8 characters, usage counts, cancelling;
`for` on the caller's thread, `async for` over a batcher on an event loop) and the plain chat
template. Used by `cllm generate`, `cllm chat` and `cllm serve`.
"""
from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Iterator, Optional, Sequence

from agent.generation.batcher import DecodeBatcher, LoopStream
from agent.generation.checkpoint import ServingCheckpoint
from agent.training.fim import context_ids, fim_ids, infill_prompt
from engine.errors import CllmError


@dataclass(frozen=True)
class Sampling:
    """How to draw tokens: temperature 0 is greedy; top_k/top_p None keep everything. The
    defaults are `cllm generate`'s and `cllm chat`'s (agent/cli/model.py reads them)."""
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
    token, at a stop string (not included) or after `max_tokens` tokens. `for` decodes on
    the caller's thread (or reads a `batcher`'s thread through a blocking queue); `async for`
    reads a `batcher` (a server's, shared with other requests) on the event loop, which its
    decoding thread hands each id to. After the loop, `finish_reason` is "stop" or "length"
    (OpenAI's names) and `prompt_tokens` / `completion_tokens` count tokens. A set `cancel`
    event, or close() where it is read, ends it before the next token ("cancelled").
    """

    def __init__(self, ckpt: ServingCheckpoint, prompt: str, sampling: Sampling,
                 cancel: Optional[threading.Event] = None,
                 batcher: Optional[DecodeBatcher] = None,
                 suffix: Optional[str] = None, extra: Sequence[tuple[str, str]] = (),
                 parse_special: bool = False) -> None:
        tok = ckpt.tokenizer
        self.ckpt, self.sampling, self.cancel, self.batcher = ckpt, sampling, cancel, batcher
        self.max_tokens = sampling.max_tokens
        if suffix is not None:          # fill in the middle: prompt | cursor | suffix
            self.ids = fim_prompt(ckpt, prompt, suffix, sampling.max_tokens, extra)
            # a middle ends within the context: sliding it would cut the prompt's layout
            self.max_tokens = min(self.max_tokens,
                                  ckpt.model.config.context - len(self.ids))
        elif parse_special:             # a prompt in a template: "<|fim_prefix|>" is the token
            self.ids = tok.encode_special(prompt).tolist()
        else:
            self.ids = list(tok.encode(prompt)) if prompt else []
        self.prompt_tokens = len(self.ids)
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self.text = ""                    # everything produced (including held-back text)
        self._ids: Optional[LoopStream] = None      # what `async for` reads, for close()
        self._closed = False
        self._complete = False            # the ids ran out, or the text ended

    def __iter__(self) -> Iterator[str]:
        if self.batcher is not None:
            gen = self.batcher.stream(self._prompt_ids(), self.max_tokens, **self._drawing())
        else:
            gen = self.ckpt.model.generate_stream(self._prompt_ids(), self.max_tokens,
                                                  weights=self.ckpt.weights, **self._drawing())
        self._begin()
        try:
            for t in gen:
                if self._closed or (self.cancel is not None and self.cancel.is_set()):
                    self.finish_reason = "cancelled"
                    return
                piece = self._take(t)
                if piece:
                    yield piece
                if self._ended:
                    break
            else:
                self._flush()
        finally:
            gen.close()
        self._complete = True
        rest = self._rest()
        if rest:
            yield rest

    async def __aiter__(self) -> AsyncIterator[str]:
        if self.batcher is None:
            raise TypeError("`async for` reads a batcher's ids: give the TextStream one")
        ids = self._ids = self.batcher.astream(self._prompt_ids(), self.max_tokens,
                                               **self._drawing())
        self._begin()
        try:
            async for t in ids:
                piece = self._take(t)
                if piece:
                    yield piece
                if self._ended:
                    break
            else:
                if self._closed:
                    self.finish_reason = "cancelled"
                    return
                self._flush()
        finally:
            ids.close()
        self._complete = True
        rest = self._rest()
        if rest:
            yield rest

    def run(self) -> str:
        """The whole completion at once."""
        return "".join(self)

    def close(self) -> None:
        """End the generation before its next token ("cancelled" unless it had ended); where
        it is read (on the event loop for `async for`; another thread sets `cancel`)."""
        self._closed = True
        if not self._complete:
            self.finish_reason = "cancelled"
        if self._ids is not None:
            self._ids.close()

    # ------------------------------------------------------------------ ids to text
    def _prompt_ids(self) -> list[int]:
        return self.ids or [self.ckpt.tokenizer.eod_id]

    def _drawing(self) -> dict:
        sp = self.sampling
        return {"temperature": sp.temperature, "top_k": sp.top_k, "top_p": sp.top_p,
                "seed": sp.seed}

    def _begin(self) -> None:
        self.finish_reason = "length"
        self._stops = [s for s in self.sampling.stop if s]
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._sent = 0                    # text[:_sent] was yielded
        self._ended = False               # by the end-of-text token or a stop string

    def _take(self, t: int) -> str:
        """Add id `t` to the text; returns what can be sent now."""
        tok = self.ckpt.tokenizer
        if tok.is_special(t):           # end of document (or of a middle, or a FIM token)
            self.finish_reason, self._ended = "stop", True
            return ""
        self.completion_tokens += 1
        self.text += self._utf8.decode(tok.token_bytes(t))
        hit = _first_stop(self.text, self._stops, self._sent)
        if hit is not None:
            self.text, self.finish_reason, self._ended = self.text[:hit], "stop", True
            return ""
        return self._send(len(self.text) - _held_back(self.text, self._stops))

    def _flush(self) -> None:
        """The ids ran out: the decoder's last bytes, and a stop string they complete."""
        self.text += self._utf8.decode(b"", final=True)
        hit = _first_stop(self.text, self._stops, self._sent)
        if hit is not None:
            self.text, self.finish_reason = self.text[:hit], "stop"

    def _rest(self) -> str:
        """At the end: whatever was held back."""
        return self._send(len(self.text))

    def _send(self, end: int) -> str:
        if end <= self._sent:
            return ""
        piece, self._sent = self.text[self._sent:end], end
        return piece


class NoInfill(CllmError):
    """The checkpoint was not trained to fill in the middle."""


def fim_prompt(ckpt: ServingCheckpoint, prefix: str, suffix: str, max_tokens: int,
               extra: Sequence[tuple[str, str]] = ()) -> list[int]:
    """The fill-in-the-middle prompt of `prefix` | cursor | `suffix` (agent/training/fim.py)
    within the context less the room kept for the middle: a quarter of the context, or
    `max_tokens` when fewer. What does not fit is cut away from the cursor: the prefix keeps
    its end, the suffix its start, each with at least half of the room; other files
    (`extra`: (filename, text) pairs, llama.cpp's input_extra) go first, in what room is
    left, each after <|file_sep|> and its name (fim.context_ids)."""
    tok = ckpt.tokenizer
    ids = fim_ids(tok)
    if ids is None:
        raise NoInfill("this checkpoint was not trained to fill in the middle (its "
                       "vocabulary has no FIM tokens)",
                       "train with --fim-rate above 0 (the default is 0.5) and serve a "
                       "checkpoint made since")
    T = ckpt.model.config.context
    budget = T - max(1, min(max_tokens, T // 4))
    return infill_prompt(tok.encode(prefix).tolist(), tok.encode(suffix).tolist(), ids, budget,
                         context_ids(tok, extra).tolist())


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
