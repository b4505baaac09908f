"""Scoring text with a model, as llama.cpp's perplexity tool scores a file: the next-token loss
summed in nats over a text, and from it bits per byte, bits per token and perplexity; and the
files a list of paths names, read as the crawler reads them (`cllm eval`).

The loss is the trainer's own. A text is tokenised and packed as the trainer's evaluation packs
a held-out slice (engine.data.pack: its tokens, then end-of-document), cut into consecutive
windows of the model's context (engine.data.eval_windows: the stride is the context, so every
token after the first is predicted once) and summed by engine.model.Model.loss. A file's
nats / tokens is thus the validation loss the trainer reports for the same text
(engine.data.evaluate, without its cap of 64 windows). llama.cpp's default also steps by whole
windows, but scores only the second half of each (and drops a last partial one); here every
token counts, so bits per byte covers every byte of the text.

It loads no checkpoint (the CLI does, through agent/generation/checkpoint.py), writes nothing
and prints nothing.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from agent.inputs.paths import PathFilter, WalkItem, walk_files
from agent.inputs.text import Refused, decode_text, read_file
from engine.data import eval_windows, pack
from engine.errors import ConfigError

EVAL_BATCH = 8          # windows per forward pass (engine.data.evaluate's batch)


@dataclass(frozen=True)
class Score:
    """The loss of a text: `nats` summed over its `tokens` predicted tokens, for `bytes` bytes
    of its UTF-8 encoding. Scores add up (a total over files)."""

    bytes: int
    tokens: int
    nats: float

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes

    @property
    def bits_per_token(self) -> float:
        return self.nats / math.log(2) / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats / self.tokens)

    def __add__(self, other: "Score") -> "Score":
        return Score(self.bytes + other.bytes, self.tokens + other.tokens,
                     self.nats + other.nats)

    def fields(self) -> dict:
        """What `cllm eval` reports of a file and of the total, by name."""
        return {"bytes": self.bytes, "tokens": self.tokens, "nats": self.nats,
                "bits_per_byte": self.bits_per_byte, "bits_per_token": self.bits_per_token,
                "perplexity": self.perplexity}


def score_text(model, tokenizer, text: str, batch_size: int = EVAL_BATCH,
               progress: Optional[Callable[[int, int], None]] = None) -> Score:
    """The model's loss on `text` (non-empty): windows of its context over the tokens and the
    end-of-document id, every target scored once. `progress(windows done, windows)` hears of
    each batch."""
    stream = pack([tokenizer.encode(text)], tokenizer.eod_id)
    x, y = eval_windows(stream, model.config.context)      # (W, T) inputs, targets (-1: none)
    nats, tokens = 0.0, 0
    for i in range(0, len(x), batch_size):
        s, n = model.loss(x[i:i + batch_size], y[i:i + batch_size])
        nats += s
        tokens += n
        if progress is not None:
            progress(min(i + batch_size, len(x)), len(x))
    return Score(len(text.encode("utf-8")), tokens, nats)


@dataclass(frozen=True)
class Scored:
    """A file named by the paths: its score, or the reason it was skipped."""

    path: str
    score: Optional[Score] = None
    reason: Optional[str] = None


def input_files(paths: Sequence[str]) -> list[WalkItem]:
    """The files `paths` name, each once, in order: a file as given, a folder walked as the
    crawler walks it (default excludes, .gitignore; agent/inputs/paths.py). A walk's refused
    entries (a symbolic link, an unreadable folder) come with their reason. Paths are shown as
    given (`docs/a.txt` for `docs`). ConfigError for a path that does not exist."""
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} does not exist" if len(missing) == 1 else
                          f"{', '.join(missing)} do not exist", "give files or folders of text")
    items, seen = [], set()
    for given in paths:
        if os.path.isdir(given):
            root = os.path.abspath(given)
            found = [WalkItem(os.path.join(given, os.path.relpath(it.path, root)), it.reason)
                     for it in walk_files(given, PathFilter(), gitignore=True)]
        else:
            found = [WalkItem(given)]
        for it in found:
            key = os.path.abspath(it.path)
            if key not in seen:
                seen.add(key)
                items.append(it)
    return items


def read_text(item: WalkItem, max_bytes: Optional[int] = None) -> str:
    """A file's text, decoded as ingest decodes it (agent/inputs/text.py: size cap, binary
    refusal, byte-order marks, UTF-8), cut to its first `max_bytes` bytes of UTF-8 at a
    character boundary. Refused with the reason when there is none."""
    if item.reason is not None:
        raise Refused(item.reason)
    text = decode_text(read_file(item.path)).text
    if max_bytes is not None:
        text = text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
        if not text:
            raise Refused(f"no whole character in its first {max_bytes} bytes")
    return text


def score_files(model, tokenizer, items: Sequence[WalkItem], max_bytes: Optional[int] = None,
                progress: Optional[Callable[[str, int, int], None]] = None) -> Iterator[Scored]:
    """Each file's score (score_text of read_text), or the reason it is skipped; one file's
    text is held at a time. `progress(path, windows done, windows)` hears of each batch."""
    for it in items:
        try:
            text = read_text(it, max_bytes)
        except Refused as e:
            yield Scored(it.path, reason=e.reason)
            continue
        hear = None if progress is None else (lambda d, n, p=it.path: progress(p, d, n))
        yield Scored(it.path, score_text(model, tokenizer, text, progress=hear))
