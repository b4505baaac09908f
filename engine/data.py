"""Token streams and batches: documents packed into streams (separated by end-of-document),
random training windows drawn from a weighted mixture of streams (new text and replay),
and deterministic evaluation over a stream's consecutive windows.

Inputs are (B, T) int64; targets are the inputs shifted by one, with -1 where a window runs
past the end of its stream (ignored by the loss). Nothing here trains or touches files.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np


def pack(token_arrays: Iterable[np.ndarray], eod: int) -> np.ndarray:
    """Concatenate documents' ids, each followed by the end-of-document id."""
    parts: list[np.ndarray] = []
    for a in token_arrays:
        a = np.asarray(a, dtype=np.int64)
        if a.size:
            parts.append(a)
            parts.append(np.asarray([eod], np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def window(stream: np.ndarray, start: int, T: int, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs stream[start:start+T] and targets shifted by one; padded past the end."""
    x = np.full(T, pad, np.int64)
    y = np.full(T, -1, np.int64)
    seg = stream[start:start + T + 1]
    n = max(0, len(seg) - 1)
    x[:min(T, len(seg))] = seg[:T]
    y[:n] = seg[1:n + 1]
    return x, y


class WindowSampler:
    """Random (B, T) training batches from a weighted mixture of token streams."""

    def __init__(self, streams: Sequence[np.ndarray], T: int, B: int,
                 weights: Optional[Sequence[float]] = None, seed: int = 0) -> None:
        keep = [i for i, s in enumerate(streams) if len(s) >= 2]
        if not keep:
            raise ValueError("no stream has the two tokens a training window needs")
        self.streams = [np.asarray(streams[i], np.int64) for i in keep]
        w = np.asarray([1.0 if weights is None else float(weights[i]) for i in keep])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("mixture weights must be >= 0 with a positive sum")
        self.p = w / w.sum()
        self.T, self.B = T, B
        self.rng = np.random.default_rng(seed)
        self.drawn = np.zeros(len(self.streams), np.int64)   # sequences per stream

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((self.B, self.T), np.int64)
        y = np.empty((self.B, self.T), np.int64)
        which = self.rng.choice(len(self.streams), size=self.B, p=self.p)
        for b, k in enumerate(which):
            s = self.streams[k]
            hi = max(1, len(s) - self.T)          # windows fully inside when possible
            x[b], y[b] = window(s, int(self.rng.integers(0, hi)), self.T)
            self.drawn[k] += 1
        return x, y


def eval_windows(stream: np.ndarray, T: int, max_windows: Optional[int] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive non-overlapping windows covering the stream (deterministic)."""
    if len(stream) < 2:
        return np.zeros((0, T), np.int64), np.zeros((0, T), np.int64)
    starts = list(range(0, len(stream) - 1, T))
    if max_windows is not None:
        starts = starts[:max_windows]
    xs, ys = zip(*(window(stream, s, T) for s in starts))
    return np.stack(xs), np.stack(ys)


def evaluate(model, stream: np.ndarray, batch_size: int = 8, max_windows: Optional[int] = 64
             ) -> Optional[float]:
    """Mean per-token loss of the model on a stream (None when it has no targets)."""
    x, y = eval_windows(stream, model.config.context, max_windows)
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        s, n = model.loss(x[i:i + batch_size], y[i:i + batch_size])
        total += s
        count += n
    return total / count if count else None
