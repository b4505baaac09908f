"""The flat parameter layout: one ordered spec table of name -> shape builds every view.

Parameters, gradients, optimizer moments and each worker's gradient row share this layout,
so zeroing, reduction, clipping, the optimizer step and checkpointing are each one pass
over a flat float32 array. Nothing here allocates activations or does math.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.config import ModelConfig


def param_spec(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes in layout order (wte first, so vocabulary growth appends in place).
    The recipe's options add or drop tensors: no wpe with rotary positions, a q and a k gain
    per layer with QK-norm, a separate head (V, C) at the end when it is not tied to wte."""
    V, T, C, L = cfg.vocab_size, cfg.context, cfg.d_model, cfg.n_layers
    spec: list[tuple[str, tuple[int, ...]]] = [("wte", (V, C))]
    if cfg.pos == "learned":
        spec.append(("wpe", (T, C)))
    for i in range(L):
        h = f"h.{i}"
        spec += [
            (f"{h}.ln1.w", (C,)), (f"{h}.ln1.b", (C,)),
            (f"{h}.attn.qkv.w", (C, 3 * C)), (f"{h}.attn.qkv.b", (3 * C,)),
        ]
        if cfg.qk_norm:
            spec += [(f"{h}.attn.q_norm.w", (cfg.head_size,)),
                     (f"{h}.attn.k_norm.w", (cfg.head_size,))]
        spec += [
            (f"{h}.attn.proj.w", (C, C)), (f"{h}.attn.proj.b", (C,)),
            (f"{h}.ln2.w", (C,)), (f"{h}.ln2.b", (C,)),
            (f"{h}.mlp.fc.w", (C, 4 * C)), (f"{h}.mlp.fc.b", (4 * C,)),
            (f"{h}.mlp.proj.w", (4 * C, C)), (f"{h}.mlp.proj.b", (C,)),
        ]
    spec += [("lnf.w", (C,)), ("lnf.b", (C,))]
    if not cfg.tie_head:
        spec.append(("head", (V, C)))
    return spec


VOCAB_ROWS = ("wte", "head")     # tensors with one row per token: they grow with the vocabulary


def is_layernorm(name: str) -> bool:
    """Normalisation gains and biases: h.{i}.ln1.*, h.{i}.ln2.*, lnf.*, and the QK-norm
    gains h.{i}.attn.q_norm.w, h.{i}.attn.k_norm.w."""
    parts = name.split(".")
    return len(parts) >= 2 and (parts[-2].startswith("ln") or parts[-2] in ("q_norm", "k_norm"))


def is_linear_weight(name: str) -> bool:
    """The W of a linear layer (attn.qkv.w, attn.proj.w, mlp.fc.w, mlp.proj.w)."""
    return name.endswith(".w") and not is_layernorm(name)


def is_matrix(name: str) -> bool:
    """Tensors that get decoupled weight decay: embeddings, the untied head and linear
    weights; never a normalisation parameter (lnf.w included) nor a bias."""
    return name in ("wte", "wpe", "head") or is_linear_weight(name)


@dataclass(frozen=True)
class ParamLayout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]   # start of each tensor; offsets[-1] == size
    size: int

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "ParamLayout":
        spec = param_spec(cfg)
        offsets = [0]
        for _, shape in spec:
            offsets.append(offsets[-1] + int(np.prod(shape)))
        return cls(tuple(n for n, _ in spec), tuple(s for _, s in spec), tuple(offsets),
                   offsets[-1])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no parameter named {name!r}") from None

    def view(self, flat: np.ndarray, name: str) -> np.ndarray:
        i = self.index(name)
        return flat[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        if flat.shape != (self.size,):
            raise ValueError(f"flat array has shape {flat.shape}, layout needs ({self.size},)")
        return {n: flat[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])
                for i, n in enumerate(self.names)}

    def starts_array(self) -> np.ndarray:
        return np.asarray(self.offsets, dtype=np.int64)

    def decay_array(self) -> np.ndarray:
        return np.asarray([is_matrix(n) for n in self.names], dtype=np.bool_)

    def accumulated_ranges(self) -> list[tuple[int, int]]:
        """Flat ranges of the tensors whose gradients are accumulated (+=) rather than
        written whole by a matmul: everything except wte and the linear weights. Merged
        where adjacent, so zeroing a gradient row before backward is a few small memsets."""
        out: list[tuple[int, int]] = []
        for i, n in enumerate(self.names):
            if n in VOCAB_ROWS or is_linear_weight(n):
                continue
            lo, hi = self.offsets[i], self.offsets[i + 1]
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        return out

    def segments(self, n: int, align: int = 16) -> list[tuple[int, int]]:
        """Cut [0, size) into n contiguous segments of near-equal length (cache-line aligned)."""
        n = max(1, n)
        bounds = [0]
        for k in range(1, n):
            b = (self.size * k // n) // align * align
            bounds.append(max(bounds[-1], b))
        bounds.append(self.size)
        return [(bounds[k], bounds[k + 1]) for k in range(n)]


def grow_flat(flat: np.ndarray, old: ParamLayout, new: ParamLayout,
              new_rows: "np.ndarray | dict[str, np.ndarray] | None") -> np.ndarray:
    """Copy a flat array into a layout whose vocabulary tensors (wte, and the head when it
    is untied) have more rows. The new rows of each are `new_rows[name]` (shape (added, C);
    an array alone is wte's) or zeros; every other tensor is copied unchanged."""
    if new_rows is not None and not isinstance(new_rows, dict):
        new_rows = {"wte": new_rows}
    out = np.zeros(new.size, dtype=flat.dtype)
    for i, name in enumerate(new.names):
        j = old.index(name)
        src = flat[old.offsets[j]:old.offsets[j + 1]]
        lo = new.offsets[i]
        out[lo:lo + src.size] = src
        rows = (new_rows or {}).get(name)
        if rows is not None:
            out[lo + src.size:new.offsets[i + 1]] = rows.reshape(-1)
    return out
