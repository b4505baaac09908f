"""The data every training-quality benchmark shares: CPython's standard library sources, one
file in ten held out, a tokenizer learned on the training files, and held-out bits per byte.

One definition here so bench_recipe.py (engine recipes), torch_twin.py (the PyTorch twin)
and the scoring of the agent's own checkpoints measure the same thing:

- files: every .py under the root except those under test/, site-packages/ or dist-packages/,
  sorted by path (the first `max_files` of them for a smoke run); file i (0-based) is held
  out when i % 10 == 9;
- bits per byte: each held-out file is scored as its own stream [EOD] + ids (so every token
  of the text is predicted, the first from the end-of-document context) in consecutive
  non-overlapping windows of the model's context; bpb = sum of nats / text bytes / ln 2.
  `max_bytes` keeps only the first bytes of each file (cut at a line end) to bound the cost.

Nothing here trains; the model side is a callable loss_sum(x, y) -> (nats, count).
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.data import eval_windows  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/usr/lib/python3.11")
EXCLUDED_DIRS = {"test", "site-packages", "dist-packages", "__pycache__"}
HELD_OUT_EVERY = 10


@dataclass(frozen=True)
class Split:
    train: list[Path]
    heldout: list[Path]


def split_files(root: Path = DEFAULT_ROOT, max_files: Optional[int] = None,
                glob: str = "*.py") -> Split:
    """The sorted files matching `glob` under root (exclusions above; the first `max_files`
    when given); every tenth is held out."""
    root = Path(root)
    files = sorted(p for p in root.rglob(glob)
                   if p.is_file() and not EXCLUDED_DIRS.intersection(p.relative_to(root).parts))
    if not files:
        raise SystemExit(f"no {glob} files under {root}; pass --src pointing at a CPython "
                         f"tree (or --glob)")
    if max_files is not None:
        if max_files < HELD_OUT_EVERY:
            raise SystemExit(f"--max-files {max_files} holds nothing out: use at least "
                             f"{HELD_OUT_EVERY}")
        files = files[:max_files]
    held = [p for i, p in enumerate(files) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [p for i, p in enumerate(files) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return Split(train, held)


def read_text(path: Path, max_bytes: Optional[int] = None) -> str:
    data = path.read_bytes()
    if max_bytes is not None and len(data) > max_bytes:
        cut = data.rfind(b"\n", 0, max_bytes)
        data = data[:cut + 1 if cut > 0 else max_bytes]
    return data.decode("utf-8", "replace")


def learned_tokenizer(texts: Sequence[str], vocab: int, cache: Optional[Path] = None
                      ) -> Tokenizer:
    """Our tokenizer learned on texts up to `vocab` ids (loaded from `cache` when it exists)."""
    if cache is not None and Path(cache).exists():
        tok = Tokenizer.load(cache)
        if len(tok) == vocab:
            return tok
    tok = Tokenizer(max_vocab=vocab)
    while len(tok) < vocab:                      # learn caps a round; repeat until full
        added = tok.learn(texts, max_new_tokens=vocab - len(tok))
        if not added:
            break
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tok.save(cache)
    return tok


@dataclass(frozen=True)
class HeldOut:
    """Windows (N, T) of the held-out files and the bytes of text they predict."""
    x: np.ndarray
    y: np.ndarray
    n_bytes: int


def heldout_windows(tok: Tokenizer, files: Sequence[Path], T: int,
                    max_bytes: Optional[int] = 4096) -> HeldOut:
    xs, ys, n_bytes = [], [], 0
    for p in files:
        text = read_text(p, max_bytes)
        if not text:
            continue
        stream = np.concatenate([[tok.eod_id], tok.encode(text)]).astype(np.int64)
        x, y = eval_windows(stream, T)
        xs.append(x)
        ys.append(y)
        n_bytes += len(text.encode("utf-8", "surrogatepass"))
    return HeldOut(np.concatenate(xs), np.concatenate(ys), n_bytes)


def bits_per_byte(loss_sum: Callable[[np.ndarray, np.ndarray], tuple[float, int]],
                  held: HeldOut, batch: int = 32) -> float:
    """Held-out bits per byte of a model given its loss_sum(x, y) -> (sum of nats, count)."""
    total = 0.0
    for i in range(0, len(held.x), batch):
        s, _ = loss_sum(held.x[i:i + batch], held.y[i:i + batch])
        total += s
    return total / held.n_bytes / math.log(2)
