"""Text embeddings from the served model, for /v1/embeddings and Ollama's /api/embed.

The vector of a text is the mean, over its tokens, of the model's final hidden state (the
output of the last LayerNorm, what the head reads), L2-normalised: d_model numbers. A text
longer than the context is read in consecutive windows of the context, each token once, and
every token's state counts alike. An empty text is the end-of-document token alone. Like
any mean-pooled language model state it places texts of similar tokens and contexts near
each other; it is not a trained sentence encoder.
"""
from __future__ import annotations

import numpy as np


def hidden_states(model, ids: np.ndarray) -> np.ndarray:
    """(n, C) final hidden states of `ids`, in windows of the model's context."""
    T = model.config.context
    out = []
    for a in range(0, len(ids), T):
        out.append(model.hidden_states(np.asarray(ids[a:a + T], np.int64)[None, :])[0])
    return np.concatenate(out) if out else np.zeros((0, model.config.d_model), np.float32)


def embed_ids(model, ids, eod: int) -> np.ndarray:
    """The L2-normalised mean final hidden state of a text's ids (float32, C)."""
    ids = np.asarray(ids, np.int64)
    if ids.size == 0:
        ids = np.asarray([eod], np.int64)
    v = hidden_states(model, ids).astype(np.float64).mean(axis=0)
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32)
