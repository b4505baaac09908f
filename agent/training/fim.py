"""Fill-in-the-middle: training windows rearranged so the model learns to write the middle of
a text given what comes before and after it (Bavarian et al. 2022, "Efficient Training of
Language Models to Fill in the Middle"), and the prompt an editor's request becomes.

A share of the backlog's windows (`fim_rate`) is taken as n = T - 3 consecutive tokens of one
document, cut at two random token positions into prefix, middle and suffix, and trained in
prefix-suffix-middle order:

    <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle <|eod|>

T + 1 tokens, every one of the n a target exactly once (the specials are targets too, owned
by no document): the ledger's accounting is the same as for a plain window. The end-of-
document token after the middle teaches where to stop. At inference the same layout up to
<|fim_middle|> is the prompt, and generation stops at <|eod|> (`infill_prompt`).

The three tokens are special (engine/tokenizer.py): appended to the vocabulary when FIM
training first runs (a new model's before its vocabulary is learned, at ids 257-259), never
produced by encoding text, never merged, decoded to nothing.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
EXTRA = 4           # tokens a FIM window adds: three specials and the end-of-document token


class FimIds(NamedTuple):
    prefix: int
    suffix: int
    middle: int
    eod: int


def fim_ids(tok) -> FimIds | None:
    """The tokenizer's FIM ids (None when it has none)."""
    ids = [tok.special_id(n) for n in FIM_TOKENS]
    return None if None in ids else FimIds(*ids, tok.eod_id)


def rearrange(tok: np.ndarray, own: np.ndarray, nb: np.ndarray, i: int, j: int, ids: FimIds
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A window (inputs, targets, target owners, target bytes; each of length len(tok) + 3)
    of the n tokens `tok` (their owners and bytes alongside) cut at 0 <= i <= j <= n into
    prefix tok[:i], middle tok[i:j], suffix tok[j:], in prefix-suffix-middle order."""
    n = len(tok)
    if not 0 <= i <= j <= n:
        raise ValueError(f"cut points {i}, {j} are not within [0, {n}] in order")
    none = np.asarray([-1], np.int64)
    zero = np.zeros(1, np.int64)

    def special(t: int) -> np.ndarray:
        return np.asarray([t], np.int64)
    parts = [(special(ids.prefix), none, zero), (tok[:i], own[:i], nb[:i]),
             (special(ids.suffix), none, zero), (tok[j:], own[j:], nb[j:]),
             (special(ids.middle), none, zero), (tok[i:j], own[i:j], nb[i:j]),
             (special(ids.eod), none, zero)]
    seq = np.concatenate([p[0] for p in parts]).astype(np.int64)
    owners = np.concatenate([p[1] for p in parts]).astype(np.int64)
    nbytes = np.concatenate([p[2] for p in parts]).astype(np.int64)
    return seq[:-1], seq[1:], owners[1:], nbytes[1:]


def cut_points(rng: np.random.Generator, n: int) -> tuple[int, int]:
    """Two token positions in [0, n], uniform, in order (the middle may be empty)."""
    a, b = (int(x) for x in rng.integers(0, n + 1, size=2))
    return (a, b) if a <= b else (b, a)


def infill_prompt(prefix_ids: Sequence[int], suffix_ids: Sequence[int], ids: FimIds,
                  budget: int) -> list[int]:
    """The prompt of an infill request: <|fim_prefix|> prefix <|fim_suffix|> suffix
    <|fim_middle|>, within `budget` tokens. Text nearest the cursor is kept: when the two do
    not fit, the prefix keeps its end and the suffix its start, each given at least half of
    the room (a side that needs less leaves the rest to the other)."""
    room = max(0, budget - 3)
    p, s = list(prefix_ids), list(suffix_ids)
    if len(p) + len(s) > room:
        half = room // 2
        keep_s = min(len(s), max(half, room - len(p)))
        keep_p = min(len(p), room - keep_s)
        p, s = p[len(p) - keep_p:], s[:keep_s]
    return [ids.prefix, *p, ids.suffix, *s, ids.middle]
