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

Repository context, as StarCoder and Qwen2.5-Coder lay it out: a fourth special token,
<|file_sep|>, starts every document a plain window reads from its beginning, followed by the
file's name and a newline (`file_header`: the name only, never the folders above it, which
hold the user's name and layout):

    <|eod|> <|file_sep|> name "\n" text ...

so the model learns that a file's name and text follow the token. An editor's other files
(llama.cpp's `input_extra`) go before the fill-in-the-middle prompt the same way
(`infill_prompt`'s `extra`), as llama.cpp lays them out for models with the token.

The four tokens are special (engine/tokenizer.py): appended to the vocabulary when FIM
training first runs (a new model's before its vocabulary is learned, at ids 257-260; a model
trained before <|file_sep|> existed gets it appended after its merges), never produced by
encoding text, never merged, decoded to nothing.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence
from urllib.parse import unquote, urlsplit

import numpy as np

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
FILE_SEP = "<|file_sep|>"
SPECIALS = (*FIM_TOKENS, FILE_SEP)      # what FIM training adds to a vocabulary, in this order
NAME_CHARS = 100    # a header's name is cut here: a header costs a few tokens, not a window
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


def doc_name(uri: str) -> str:
    """The name a document's header gives it: the last part of its path (a file's name, a
    page's last path segment, else its host), never the folders above it."""
    u = urlsplit(uri)
    path = unquote(u.path if u.scheme else uri).rstrip("/")
    return path.rsplit("/", 1)[-1] or u.netloc


def file_header(tok, name: str) -> np.ndarray:
    """<|file_sep|> name "\\n" as token ids (empty when the tokenizer has no <|file_sep|> or
    the name is empty; a name's line breaks become spaces, and it is cut at NAME_CHARS)."""
    sep = tok.special_id(FILE_SEP)
    name = " ".join(name.splitlines()).strip()[:NAME_CHARS]
    if sep is None or not name:
        return np.zeros(0, np.int64)
    return np.concatenate([[sep], tok.encode(name + "\n")]).astype(np.int64)


def context_ids(tok, chunks: Sequence[tuple[str, str]]) -> np.ndarray:
    """Other files given as context (filename, text), each as a document read from its start
    is trained: <|file_sep|> name "\\n" text (<|file_sep|> alone before a chunk without a
    name). A tokenizer without <|file_sep|> gets them as text: a "# name" line, then the text."""
    sep = tok.special_id(FILE_SEP)
    parts = []
    for name, text in chunks:
        if sep is None:
            parts.append(tok.encode(context_text([(name, text)])))
        else:
            head = file_header(tok, name)
            parts += [head if head.size else np.asarray([sep], np.int64), tok.encode(text)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def context_text(chunks: Sequence[tuple[str, str]]) -> str:
    """Context chunks as plain text: a "# name" line (when named), the text, a line break."""
    return "".join((f"# {name}\n" if name else "") + text
                   + ("" if text.endswith("\n") else "\n") for name, text in chunks)


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
                  budget: int, extra_ids: Sequence[int] = ()) -> list[int]:
    """The prompt of an infill request: [extra] <|fim_prefix|> prefix <|fim_suffix|> suffix
    <|fim_middle|>, within `budget` tokens. Text nearest the cursor is kept: when prefix and
    suffix do not fit, the prefix keeps its end and the suffix its start, each given at least
    half of the room (a side that needs less leaves the rest to the other); the extra context
    (other files, farthest from the cursor) gets what room they leave, keeping its end."""
    room = max(0, budget - 3)
    p, s = list(prefix_ids), list(suffix_ids)
    if len(p) + len(s) > room:
        half = room // 2
        keep_s = min(len(s), max(half, room - len(p)))
        keep_p = min(len(p), room - keep_s)
        p, s = p[len(p) - keep_p:], s[:keep_s]
    x = list(extra_ids)
    keep_x = min(len(x), room - len(p) - len(s))
    x = x[len(x) - keep_x:] if keep_x > 0 else []
    return [*x, ids.prefix, *p, ids.suffix, *s, ids.middle]
