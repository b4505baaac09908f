"""Lossless byte-level BPE tokenizer whose vocabulary grows append-only.

Ids 0..255 are the raw bytes, id 256 is the end-of-document special `EOD` (never produced by
encoding text; it decodes to nothing), and every later id is a learned merge of two earlier
ids, or a special token `add_specials` appended (the fill-in-the-middle tokens: like EOD,
never produced by encoding text, never part of a merge, decoded to nothing). `learn` and
`add_specials` append tokens and never renumber: an id keeps its bytes for ever, so a model
trained on earlier ids stays valid as the vocabulary grows.

Encoding runs in compiled code (engine.bpe, numba): a pre-tokeniser suited to prose and source
code, then BPE inside each piece, lowest-rank merge first. The same kernels segment the texts
that `learn` learns from, so learning and encoding can never disagree.

Why numba and not HF `tokenizers` (which could encode with our merge list): the vocabulary
grows while the agent runs, a few hundred merges per cycle, and HF's tokenizer would have to
be rebuilt from the whole merge list after every `learn`; ours extends its tables in place.
Learning and encoding share one scanner here, so they cannot drift apart, and ids are ours to
keep stable. It is also faster on one core (benchmarks/bench_tokenizer.py; the figures are in
docs/benchmarks.md), and one dependency fewer.

Not here: the model's embedding growth (Model.grow_vocab), and recording the vocab delta in
the store (the agent does that with `learn`'s return value and `first_occurrence`).
Thread-safety: encode/decode may run from many threads; `learn` takes a lock and swaps the
encoding tables in one assignment, so a concurrent encode sees the old or the new vocabulary.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from engine import bpe, bpe_learn
from engine.atomic import atomic_write_text
from engine.errors import CllmError

log = logging.getLogger(__name__)

FORMAT = "cllm-tokenizer"
VERSION = 1
PRETOKENIZER = "cllm-code-v1"      # engine.bpe's scanner; bump when its rules change


class TokenizerError(CllmError):
    """A tokenizer file or state is missing, malformed, or does not match its checkpoint."""


def _decode_error(exc: UnicodeDecodeError) -> tuple[str, int]:
    """Undo encode's 'surrogatepass' (lone surrogates round-trip); anything else is U+FFFD."""
    data, i = exc.object, exc.start
    if data[i] == 0xED and i + 2 < len(data) and 0xA0 <= data[i + 1] <= 0xBF and 0x80 <= data[i + 2] <= 0xBF:
        return bytes(data[i:i + 3]).decode("utf-8", "surrogatepass"), i + 3
    return "\ufffd", exc.end


codecs.register_error("cllm-tokenizer", _decode_error)


class _Tables(NamedTuple):
    """Everything encode/decode read, swapped as one object when the vocabulary grows."""
    keys: np.ndarray        # merge table: pair key (a << 32 | b) ...
    vals: np.ndarray        # ... -> rank << 32 | id
    mask: np.int64
    offsets: np.ndarray     # int64[V+1]: token t is arena[offsets[t]:offsets[t+1]]
    arena: np.ndarray       # uint8: all token bytes


class Tokenizer:
    """Byte-level BPE with an append-only vocabulary; `max_vocab` caps the total size."""

    N_BYTES = 256
    EOD = 256
    SPECIALS = {"<|eod|>": EOD}     # every tokenizer's; `specials` adds those appended since

    def __init__(self, max_vocab: int | None = None) -> None:
        if max_vocab is not None and (not isinstance(max_vocab, int) or max_vocab < self.EOD + 1):
            raise TokenizerError(f"max_vocab={max_vocab!r} is too small",
                                 hint=f"use None or an int >= {self.EOD + 1} (bytes and specials)")
        self.max_vocab = max_vocab
        self._tokens: list[bytes] = [bytes([i]) for i in range(self.N_BYTES)] + [b""]
        self._merges: list[tuple[int, int, int]] = []     # (a, b, z) in rank order
        self._specials: dict[str, int] = dict(self.SPECIALS)
        self._lock = threading.Lock()
        self._tables = self._build_tables()

    # ------------------------------------------------------------------ vocabulary

    @property
    def eod_id(self) -> int:
        return self.EOD

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab={len(self)}, merges={len(self._merges)}, max_vocab={self.max_vocab})"

    @property
    def specials(self) -> dict[str, int]:
        """Special tokens by name: "<|eod|>" and those `add_specials` appended."""
        return dict(self._specials)

    def special_id(self, name: str) -> int | None:
        return self._specials.get(name)

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._specials.values()

    def add_specials(self, names: Sequence[str]) -> list[int]:
        """Append the special tokens of `names` this tokenizer lacks (in that order) and
        return their ids; those it has keep theirs. A name is "<|...|>"."""
        for name in names:
            if not (isinstance(name, str) and name.startswith("<|") and name.endswith("|>")
                    and len(name) > 4):
                raise TokenizerError(f"special token name {name!r} is not of the form <|name|>")
        with self._lock:
            new = [n for n in dict.fromkeys(names) if n not in self._specials]
            if self.max_vocab is not None and len(self._tokens) + len(new) > self.max_vocab:
                raise TokenizerError(f"no room for {len(new)} special tokens in max_vocab="
                                     f"{self.max_vocab} (the vocabulary has {len(self._tokens)})")
            for n in new:
                self._specials[n] = len(self._tokens)
                self._tokens.append(b"")
            if new:
                self._tables = self._build_tables()
            return [self._specials[n] for n in names]

    @property
    def merges(self) -> list[tuple[int, int, int]]:
        """The merge list (a, b, z) in rank order; z is new, or an earlier token with bytes a + b."""
        return list(self._merges)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (b"" for EOD and the other specials)."""
        if not 0 <= int(token_id) < len(self._tokens):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (size {len(self)})")
        return self._tokens[int(token_id)]

    def _build_tables(self) -> _Tables:
        m = np.array(self._merges, np.int64).reshape(-1, 3)
        keys, vals, mask = bpe.build_merge_table(m[:, 0], m[:, 1], m[:, 2])
        lens = np.fromiter((len(t) for t in self._tokens), np.int64, len(self._tokens))
        offsets = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        arena = np.frombuffer(b"".join(self._tokens), np.uint8).copy()
        return _Tables(keys, vals, mask, offsets, arena)

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32) of a string; lone surrogates are kept (UTF-8 'surrogatepass')."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__} (use encode_bytes)")
        return self.encode_bytes(text.encode("utf-8", "surrogatepass"))

    def encode_special(self, text: str) -> np.ndarray:
        """encode(), except that the names of this tokenizer's special tokens in `text`
        ("<|fim_prefix|>", "<|eod|>", ...) become their ids: for prompts written in a
        template (llama.cpp's `parse_special`), never for training text."""
        names = sorted(self._specials, key=len, reverse=True)
        out: list[np.ndarray] = []
        i = start = 0
        while i < len(text):
            hit = next((n for n in names if text.startswith(n, i)), None) \
                if text[i] == "<" else None
            if hit is None:
                i += 1
                continue
            if start < i:
                out.append(self.encode(text[start:i]))
            out.append(np.asarray([self._specials[hit]], np.int32))
            i = start = i + len(hit)
        if start < len(text):
            out.append(self.encode(text[start:]))
        return np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)

    def encode_bytes(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Token ids (int32) of any byte string; decode_bytes gives it back exactly."""
        buf = np.frombuffer(data, np.uint8)
        t = self._tables
        ids, _ = bpe.encode_docs(buf, np.array([len(buf)], np.int64), bpe.char_classes(),
                                 t.keys, t.vals, t.mask)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """encode() of each text, in one compiled call."""
        buf, ends = _concat(texts)
        t = self._tables
        ids, counts = bpe.encode_docs(buf, ends, bpe.char_classes(), t.keys, t.vals, t.mask)
        return np.split(ids, counts[:-1]) if len(counts) else []

    def decode_bytes(self, ids: Iterable[int] | np.ndarray) -> bytes:
        """The bytes of a token sequence (EOD adds none)."""
        arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        if arr.size == 0:
            return b""
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise TypeError(f"decode takes a 1-D sequence of ints, got {arr.dtype} with shape {arr.shape}")
        arr = arr.astype(np.int64, copy=False)
        t = self._tables
        size = len(t.offsets) - 1
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= size:
            raise TokenizerError(f"token id {lo if lo < 0 else hi} is outside the vocabulary (size {size})",
                                 hint="decode ids with the tokenizer they were encoded with")
        return bpe.decode_ids(arr, t.offsets, t.arena).tobytes()

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of a token sequence: decode(encode(s)) == s for every str s.

        Bytes that are not UTF-8 (a cut character, say) become U+FFFD; a lone surrogate that
        encode() wrote ('surrogatepass') comes back as that surrogate.
        """
        return self.decode_bytes(ids).decode("utf-8", "cllm-tokenizer")

    # ------------------------------------------------------------------ learning

    def learn(self, texts: Iterable[str], max_new_tokens: int, min_frequency: int = 2,
              max_seconds: float | None = None) -> list[int]:
        """Learn up to max_new_tokens new tokens from texts; returns their ids (the vocab delta).

        Texts are pre-tokenised and segmented with the merges already known; then the most
        frequent adjacent pair (seen at least min_frequency times) is merged, again and again.
        The new ids follow the current ones; max_vocab is never exceeded. With max_seconds,
        merging stops once that long has passed since the call (checked every
        bpe_learn.DEADLINE_EVERY merges): the tokens learned by then are kept, the first ones
        an unbounded call would learn.
        """
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise TokenizerError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
        if not isinstance(min_frequency, (int, np.integer)) or min_frequency < 1:
            raise TokenizerError(f"min_frequency={min_frequency!r} must be an int >= 1")
        if max_seconds is not None and not max_seconds >= 0:
            raise TokenizerError(f"max_seconds={max_seconds!r} must be >= 0 or None")
        start = time.perf_counter()
        deadline = np.inf if max_seconds is None else start + float(max_seconds)
        texts = list(texts)
        with self._lock:
            budget = int(max_new_tokens)
            if self.max_vocab is not None:
                budget = min(budget, self.max_vocab - len(self))
            buf, ends = _concat(texts)
            if budget <= 0 or len(buf) == 0:
                return []
            words = self._words(buf, ends)
            if words is None:
                return []
            sym, wstart, wlen, wcount = words
            budget = min(budget, len(sym))          # each new token takes one merge
            n = len(self._tokens)
            tok_off = np.zeros(n + budget, np.int64)
            tok_off[:n] = self._tables.offsets[:-1]
            tok_len = np.zeros(n + budget, np.int64)
            tok_len[:n] = np.diff(self._tables.offsets)
            ma, mb, mz = bpe_learn.learn_merges(sym, wstart, wlen, wcount, tok_off, tok_len,
                                          self._tables.arena.copy(), np.int64(n),
                                          np.int64(budget), np.int64(min_frequency),
                                          np.float64(deadline))
            new_ids = self._append(ma, mb, mz)
            late = len(new_ids) < budget and time.perf_counter() >= deadline
            log.info("learned %s new tokens (%s merges) from %s texts, %s bytes, in %.2fs%s",
                     len(new_ids), len(ma), len(texts), len(buf), time.perf_counter() - start,
                     f" (stopped at its {max_seconds:g} s bound)" if late else "")
            return new_ids

    def _words(self, buf: np.ndarray, ends: np.ndarray):
        """Distinct pieces of the texts, segmented by the current merges, with their counts."""
        starts, lens, counts = bpe_learn.count_pieces(buf, ends, bpe.char_classes())
        keep = lens > 1
        starts, lens, counts = starts[keep], lens[keep], counts[keep]
        t = self._tables
        ids, ntok = bpe.encode_pieces(buf, starts, lens, t.keys, t.vals, t.mask)
        keep = ntok > 1                               # a word of one token holds no pair
        if not keep.any():
            return None
        sel = np.repeat(keep, ntok)
        sym = ids[sel].astype(np.int64)
        wlen = ntok[keep].astype(np.int64)
        wstart = np.zeros(len(wlen), np.int64)
        np.cumsum(wlen[:-1], out=wstart[1:])
        return sym, wstart, wlen, counts[keep].astype(np.int64)

    def _append(self, ma: np.ndarray, mb: np.ndarray, mz: np.ndarray) -> list[int]:
        """Append learned merges (validated) and swap in the new encoding tables."""
        new_ids: list[int] = []
        tokens = self._tokens
        for a, b, z in zip(ma.tolist(), mb.tolist(), mz.tolist()):
            merged = tokens[a] + tokens[b]
            if z == len(tokens):
                tokens.append(merged)
                new_ids.append(z)
            elif not (z < len(tokens) and tokens[z] == merged):
                raise AssertionError(f"learn_merges returned merge ({a}, {b}) -> {z} that does not add up")
            self._merges.append((a, b, z))
        self._tables = self._build_tables()
        return new_ids

    def first_occurrence(self, new_ids: Iterable[int], texts: Sequence[str]) -> dict[int, int]:
        """For each id, the index of the first text whose encoding uses it (absent if none).

        A token "is used" where it appears, or where a longer token built from it appears (BPE
        absorbs many learned tokens into longer ones), so every token learned from `texts` is found.
        """
        want = {int(i) for i in new_ids}
        parts: dict[int, list[int]] = {}
        for a, b, z in self._merges:
            parts.setdefault(z, []).extend((a, b))
        found: dict[int, int] = {}
        for d, text in enumerate(texts):
            if not want:
                break
            stack = np.unique(self.encode(text)).tolist()
            seen = set(stack)
            while stack:
                x = stack.pop()
                if x in want:
                    found[x] = d
                    want.discard(x)
                for y in parts.get(x, ()):
                    if y not in seen:
                        seen.add(y)
                        stack.append(y)
        return found

    # ------------------------------------------------------------------ state

    def _state(self) -> dict:
        """What defines the ids: hashed into sha256 (max_vocab, a policy, is not)."""
        return {"format": FORMAT, "version": VERSION, "pretokenizer": PRETOKENIZER,
                "max_piece_bytes": bpe.MAX_PIECE, "specials": dict(self._specials),
                "merges": [list(m) for m in self._merges]}

    @property
    def sha256(self) -> str:
        """Hash of the canonical vocabulary state; checkpoints record it."""
        with self._lock:                   # never a half-learned vocabulary
            state = self._state()
        return hashlib.sha256(_canonical(state).encode()).hexdigest()

    def to_json(self) -> str:
        with self._lock:
            state = {**self._state(), "max_vocab": self.max_vocab, "vocab_size": len(self)}
        return _canonical(state)

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer state") -> "Tokenizer":
        """Rebuild a tokenizer from to_json(); refuses anything malformed or from another scheme."""
        try:
            state = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{source} is not valid JSON: {e}",
                                 hint="the file is truncated or not a tokenizer file") from e
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise TokenizerError(f"{source} is not a {FORMAT} file")
        expect = {"version": VERSION, "pretokenizer": PRETOKENIZER, "max_piece_bytes": bpe.MAX_PIECE}
        for field, value in expect.items():
            if state.get(field) != value:
                raise TokenizerError(f"{source} has {field}={state.get(field)!r}, this code reads {value!r}",
                                     hint="use the code version that wrote it")
        specials = state.get("specials")
        if not (isinstance(specials, dict) and specials.get("<|eod|>") == cls.EOD
                and all(isinstance(k, str) and type(v) is int and v > cls.EOD
                        for k, v in specials.items() if k != "<|eod|>")
                and len(set(specials.values())) == len(specials)):
            raise TokenizerError(f"{source} has specials={specials!r}, this code reads "
                                 f"<|eod|> at {cls.EOD} and later ones above it",
                                 hint="use the code version that wrote it")
        tok = cls(max_vocab=state.get("max_vocab"))
        tokens = tok._tokens
        special_ids = set(specials.values())

        def place_specials() -> None:       # a special holds its id: appended when it was added
            while len(tokens) in special_ids:
                tokens.append(b"")
        for m in state.get("merges", []):
            place_specials()
            if not (isinstance(m, list) and len(m) == 3 and all(type(x) is int and x >= 0 for x in m)):
                raise TokenizerError(f"{source} has a malformed merge {m!r}")
            a, b, z = m
            if a >= len(tokens) or b >= len(tokens) or a in special_ids or b in special_ids:
                raise TokenizerError(f"{source}: merge {m} uses an id that does not exist yet"
                                     if max(a, b) >= len(tokens) else
                                     f"{source}: merge {m} uses a special token")
            merged = tokens[a] + tokens[b]
            if z == len(tokens):
                tokens.append(merged)
            elif z > len(tokens) or tokens[z] != merged:
                raise TokenizerError(f"{source}: merge {m} does not produce the next id nor an equal token")
            tok._merges.append((a, b, z))
        place_specials()
        if max(special_ids) >= len(tokens):
            raise TokenizerError(f"{source}: a special token's id {max(special_ids)} is past "
                                 f"the vocabulary ({len(tokens)})")
        tok._specials = dict(specials)
        if state.get("vocab_size", len(tokens)) != len(tokens):
            raise TokenizerError(f"{source} says vocab_size={state.get('vocab_size')}, its merges give {len(tokens)}")
        tok._tables = tok._build_tables()
        return tok

    def __getstate__(self) -> dict:       # pickling (e.g. to worker processes) goes through JSON
        return {"json": self.to_json()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(Tokenizer.from_json(state["json"]).__dict__)

    def save(self, path: str | os.PathLike) -> None:
        """Write to_json() atomically and durably (engine.atomic: `.NAME.<random>.tmp` in the
        same folder, fsync, rename, fsync the folder)."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike, expected_sha256: str | None = None) -> "Tokenizer":
        """Read a saved tokenizer; with expected_sha256 (from a checkpoint), refuse any other."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise TokenizerError(f"tokenizer file {path} does not exist",
                                 hint="it is saved next to the checkpoint; copy both together") from e
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from e
        tok = cls.from_json(text, source=f"tokenizer file {path}")
        if expected_sha256 is not None and tok.sha256 != expected_sha256:
            raise TokenizerError(
                f"tokenizer file {path} has sha256 {tok.sha256[:16]}..., but the checkpoint was "
                f"trained with {expected_sha256[:16]}...",
                hint="load the tokenizer file saved with this checkpoint; token ids differ between them")
        return tok


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _concat(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 ('surrogatepass') bytes of all texts and the end offset of each."""
    parts = []
    for t in texts:
        if isinstance(t, str):
            parts.append(t.encode("utf-8", "surrogatepass"))
        elif isinstance(t, (bytes, bytearray, memoryview)):
            parts.append(bytes(t))
        else:
            raise TypeError(f"texts must be str or bytes, got {type(t).__name__}")
    ends = np.cumsum([len(p) for p in parts], dtype=np.int64) if parts else np.zeros(0, np.int64)
    return np.frombuffer(b"".join(parts), np.uint8), ends
