"""Training batches from the backlog, each sequence accounted to the documents it covers.

The backlog is read as `n_streams` parallel token streams, many more than a batch has rows:
each row takes the next window of a stream drawn at random, so a batch mixes documents and
consecutive steps rarely see the same one (close to the i.i.d. windows of a shuffled
corpus, without giving up exact accounting). A stream reads documents one after another,
each as an end-of-document token (and, read from its start, its file header: fim.py)
followed by its tokens from where its ledger says it stopped (its trained bytes modulo its trainable bytes) up to its budget, cut into
consecutive windows of T+1 tokens with stride T: every token of a pass is a target exactly
once. Passes go breadth first: a document that needs another pass waits until every other
document given to the reader (queued or loaded lazily) has been read; a consolidation
sweep's share (`straight_on`) goes on from the document's start at once, in the same
stream. A replay share of the
rows is drawn at random from documents already learned. A seeded reader given FIM ids
makes a `fim_rate` share of its windows fill-in-the-middle ones (agent/training/fim.py), each
T - 3 tokens of one document, every one a target once, so the accounting is unchanged.

Once nothing is left to give the streams (the queue and the lazily loaded documents read),
a seeded reader draws each window's stream with probability proportional to the tokens it
has left, so the documents still being read finish together. Drawn uniformly to the end,
the stream reading the longest document ran on alone once the others were dry: the end of
every pass and sweep was hundreds of steps whose batches were windows of one long text,
which fitted the weights to it (on CPython's stdlib a checkpoint that closed a sweep scored
1.446 held-out bits per byte against 1.337 for the weights 30 s before; docs/benchmarks.md).
Before that, streams are drawn uniformly: drawn by tokens left all along, batches leaned on
the long documents in flight, and the agent learned less in its first minutes (1.905 against
1.778 held-out bits per byte at one minute on the stdlib).

Nothing is counted until the step that trained it is applied: `Batch.credit` says which
bytes of which documents the batch's targets cover; the trainer adds them up and records
them in the cycle's transaction. Nothing here touches the store or trains.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from agent.training import fim as fim_mod
from agent.training.fim import FimIds


@dataclass
class LedgerDoc:
    """A document to learn: its training text's tokens and its ledger."""
    id: int
    source: str
    ids: np.ndarray                 # tokens of the training text (int64)
    nbytes: np.ndarray              # UTF-8 bytes of each token (int64); sums to trainable
    trained_bytes: int = 0          # committed before this cycle
    budget_bytes: Optional[int] = None   # stop once trained_bytes reaches it; None: no end
    header: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # read before the document's first token (<|file_sep|> name "\n": fim.file_header),
    # targets owned by no document, as its end-of-document token is
    straight_on: bool = False       # at the end of its text with budget left, go on from its
    #                                 start at once, in the same stream (a sweep's share)

    @property
    def trainable_bytes(self) -> int:
        return int(self.nbytes.sum())


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes of every token id of a tokenizer (int64, by id)."""
    return np.fromiter((len(tokenizer.token_bytes(i)) for i in range(len(tokenizer))),
                       np.int64, count=len(tokenizer))


def ledger_doc(doc_id: int, source: str, text: str, tokenizer, lengths: np.ndarray,
               trained_bytes: int = 0, passes: Optional[float] = None,
               name: str = "", budget_bytes: Optional[int] = None) -> LedgerDoc:
    """Tokenise a document's training text for the backlog (budget = passes x its bytes,
    or `budget_bytes`: a consolidation sweep's share, read straight on across the end of its
    text), with its file header when the tokenizer has <|file_sep|> and the document a
    name."""
    ids = np.asarray(tokenizer.encode(text), np.int64)
    nb = lengths[ids] if ids.size else np.zeros(0, np.int64)
    budget = None if passes is None else int(math.ceil(passes * int(nb.sum()) - 1e-9))
    if budget_bytes is not None:
        budget = int(budget_bytes)
    return LedgerDoc(doc_id, source, ids, nb, int(trained_bytes), budget,
                     fim_mod.file_header(tokenizer, name), straight_on=budget_bytes is not None)


@dataclass
class Batch:
    inputs: np.ndarray                          # (B, T) int64
    targets: np.ndarray                         # (B, T) int64, -1 = no target
    new: dict[int, int] = field(default_factory=dict)     # doc id -> backlog bytes covered
    replay: dict[int, int] = field(default_factory=dict)  # doc id -> replayed bytes covered


class _Stream:
    """One row's stream: tokens, the document each target token belongs to (-1 for an
    end-of-document token) and its bytes; `p` is where the next window starts."""

    def __init__(self) -> None:
        self.tok = np.zeros(0, np.int64)
        self.own = np.zeros(0, np.int64)
        self.nb = np.zeros(0, np.int64)
        self.p = 0
        self.ends: deque = deque()      # (absolute end index, doc) of segments not yet read

    def available(self) -> int:
        return len(self.tok) - self.p

    def append(self, tok: np.ndarray, own: np.ndarray, nb: np.ndarray, doc) -> None:
        keep = slice(self.p, None)
        base = self.p
        self.tok = np.concatenate([self.tok[keep], tok])
        self.own = np.concatenate([self.own[keep], own])
        self.nb = np.concatenate([self.nb[keep], nb])
        self.ends = deque((end - base, d) for end, d in self.ends)
        self.p = 0
        self.ends.append((len(self.tok), doc))


class BacklogReader:
    """Windows over the backlog in ledger order (see the module docstring)."""

    def __init__(self, docs: Iterable[LedgerDoc], T: int, n_streams: int, eod: int,
                 more: Optional[Callable[[], Optional[LedgerDoc]]] = None,
                 seed: Optional[int] = None, fim_rate: float = 0.0,
                 fim: Optional[FimIds] = None) -> None:
        self.T = T
        # a `fim_rate` share of windows (seeded readers, T > EXTRA) is fill-in-the-middle
        self.fim = fim if fim is not None and fim_rate > 0 and seed is not None \
            and T > fim_mod.EXTRA else None
        self.fim_rate = fim_rate
        self.eod = eod
        self.queue: deque[LedgerDoc] = deque(d for d in docs if d.ids.size)
        self.next_pass: deque[LedgerDoc] = deque()   # documents waiting for another pass
        self.more = more                 # called when the queue runs dry (lazily loaded docs)
        self.streams = [_Stream() for _ in range(max(1, n_streams))]
        self.live = list(range(len(self.streams)))   # streams that may still have windows
        self.reading: dict[int, int] = {}   # doc id -> bytes handed to streams, this cycle
        self.docs: dict[int, LedgerDoc] = {d.id: d for d in self.queue}
        self.rng = np.random.default_rng(seed) if seed is not None else None
        self._rr = 0

    def _next_doc(self) -> Optional[LedgerDoc]:
        while True:
            if self.queue:
                return self.queue.popleft()
            if self.more is not None:
                d = self.more()
                if d is None:
                    self.more = None
                elif d.ids.size:
                    self.docs[d.id] = d
                    return d
                continue
            if self.next_pass:          # every document read once more: the next pass
                return self.next_pass.popleft()
            return None

    def _segment(self, d: LedgerDoc) -> Optional[tuple[int, int]]:
        """Tokens [start, stop) of d to read next: from its cursor to the end of the pass or
        to its budget. None once the budget is reached."""
        total = d.trainable_bytes
        done = d.trained_bytes + self.reading.get(d.id, 0)
        if total == 0 or (d.budget_bytes is not None and done >= d.budget_bytes):
            return None
        cum = np.cumsum(d.nbytes)
        pos = done % total
        start = int(np.searchsorted(cum, pos, side="right"))
        if start >= len(cum):
            start = 0
        stop = len(cum)
        if d.budget_bytes is not None:
            need = d.budget_bytes - done
            base = cum[start - 1] if start > 0 else 0
            j = int(np.searchsorted(cum[start:] - base, need, side="left"))
            stop = min(len(cum), start + j + 1)
        return start, stop

    def _feed(self, s: _Stream) -> bool:
        """Append the next document segment to stream s; False if the backlog is read."""
        while True:
            d = self._next_doc()
            if d is None:
                return False
            seg = self._segment(d)
            if seg is None:
                continue
            while seg is not None:      # a sweep's share goes on across the end of its text
                a, b = seg
                head = d.header if a == 0 else d.header[:0]     # from its start: its header
                tok = np.concatenate([[self.eod], head, d.ids[a:b]]).astype(np.int64)
                own = np.full(len(tok), d.id, np.int64)
                own[:1 + head.size] = -1
                nb = np.concatenate([np.zeros(1 + head.size), d.nbytes[a:b]]).astype(np.int64)
                self.reading[d.id] = self.reading.get(d.id, 0) + int(nb.sum())
                s.append(tok, own, nb, d)
                seg = self._segment(d) if d.straight_on else None
            return True

    def _done_segments(self, s: _Stream) -> None:
        """Segments whose every token has been a target: the document may read on."""
        while s.ends and s.ends[0][0] <= s.p + 1:
            _, d = s.ends.popleft()
            if self._segment(d) is not None:
                self.next_pass.append(d)

    def window(self) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The next window of a stream (drawn at random when seeded: uniformly, and in
        proportion to the tokens each has left once the queue is read; else round robin):
        inputs, targets, target owners, target bytes; None once every stream and the queue
        are exhausted."""
        T = self.T
        while self.live:
            if self.rng is not None and not (self.queue or self.more or self.next_pass):
                k = self._draw()
                if k is None:
                    return None
            elif self.rng is not None:
                k = int(self.rng.integers(len(self.live)))
            else:
                k = self._rr % len(self.live)
                self._rr += 1
            s = self.streams[self.live[k]]
            while s.available() < T + 1 and self._feed(s):
                pass
            n = s.available()
            if n < 2:
                self.live.pop(k)        # nothing left for it: the queue is empty
                continue
            if self.fim is not None and self.rng.random() < self.fim_rate:
                w = self._fim_window(s)
                if w is not None:
                    return w
            w = _window(s.tok, s.own, s.nb, s.p, T)
            s.p += min(T + 1, n) - 1
            self._done_segments(s)
            return w
        return None

    def _fim_window(self, s: _Stream):
        """The stream's next T - 3 tokens as a fill-in-the-middle window (agent/training/
        fim.py), every one a target; None (a plain window instead) unless they are there and
        all of one document."""
        n = self.T + 1 - fim_mod.EXTRA
        a = s.p + 1
        if s.available() < n + 1:
            return None
        own = s.own[a:a + n]
        if own[0] < 0 or (own != own[0]).any():
            return None
        i, j = fim_mod.cut_points(self.rng, n)
        w = fim_mod.rearrange(s.tok[a:a + n], own, s.nb[a:a + n], i, j, self.fim)
        s.p += n
        self._done_segments(s)
        return w

    def _draw(self) -> Optional[int]:
        """Index into `live` of the stream to read next, in proportion to the tokens each
        has left (every live stream fed first; the dry ones leave `live`)."""
        T = self.T
        left = []
        for i in list(self.live):
            s = self.streams[i]
            while s.available() < T + 1 and self._feed(s):
                pass
            if s.available() < 2:
                self.live.remove(i)     # nothing left for it: the queue is empty
            else:
                left.append(s.available() - 1)      # targets still to read
        if not self.live:
            return None
        cum = np.cumsum(left)
        return int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))


class ReplayReader:
    """Random windows over documents already learned (packed, each after an EOD token)."""

    def __init__(self, docs: Sequence[LedgerDoc], T: int, eod: int, seed: int) -> None:
        parts_t, parts_o, parts_b = [], [], []
        for d in docs:
            if d.ids.size:
                k = 1 + d.header.size
                parts_t += [np.asarray([eod], np.int64), d.header, d.ids]
                parts_o += [np.full(k, -1, np.int64), np.full(d.ids.size, d.id, np.int64)]
                parts_b += [np.zeros(k, np.int64), d.nbytes]
        self.tok = np.concatenate(parts_t) if parts_t else np.zeros(0, np.int64)
        self.own = np.concatenate(parts_o) if parts_o else np.zeros(0, np.int64)
        self.nb = np.concatenate(parts_b) if parts_b else np.zeros(0, np.int64)
        self.T = T
        self.rng = np.random.default_rng(seed)

    def __bool__(self) -> bool:
        return len(self.tok) >= 2

    def window(self):
        T = self.T
        hi = max(1, len(self.tok) - T)
        return _window(self.tok, self.own, self.nb, int(self.rng.integers(0, hi)), T)


class Batcher:
    """(B, T) batches: each row replayed with probability `replay_fraction` (when anything
    can be replayed), else the backlog's next window; at least one row of every batch is
    the backlog's. `next()` is None once the backlog is read."""

    def __init__(self, backlog: BacklogReader, replay: Optional[ReplayReader], B: int,
                 replay_fraction: float, seed: int) -> None:
        self.backlog = backlog
        self.replay = replay if replay else None
        self.B = B
        self.f = replay_fraction if self.replay is not None else 0.0
        self.rng = np.random.default_rng(seed)

    def next(self) -> Optional[Batch]:
        B, T = self.B, self.backlog.T
        x = np.zeros((B, T), np.int64)
        y = np.full((B, T), -1, np.int64)
        batch = Batch(x, y)
        use_replay = self.rng.random(B) < self.f
        if use_replay.all():            # every batch moves the backlog on
            use_replay[int(self.rng.integers(B))] = False
        backlog_rows = 0
        for r in range(B):
            w = self.replay.window() if use_replay[r] else self.backlog.window()
            if w is None:
                continue
            x[r], y[r], owners, nbytes = w
            into = batch.replay if use_replay[r] else batch.new
            backlog_rows += int(not use_replay[r])
            for doc, n in _sum_by_owner(owners, nbytes):
                into[doc] = into.get(doc, 0) + n
        if backlog_rows == 0:
            return None
        return batch


def _window(tok: np.ndarray, own: np.ndarray, nb: np.ndarray, a: int, T: int):
    """The window of T+1 tokens from `a`: inputs, targets (-1 past the end), the document
    of each target and its bytes."""
    seg = slice(a, a + T + 1)
    t, o_, n_ = tok[seg], own[seg], nb[seg]
    x = np.zeros(T, np.int64)
    y = np.full(T, -1, np.int64)
    o = np.full(T, -1, np.int64)
    b = np.zeros(T, np.int64)
    k = len(t) - 1
    x[:min(T, len(t))] = t[:T]
    y[:k], o[:k], b[:k] = t[1:k + 1], o_[1:k + 1], n_[1:k + 1]
    return x, y, o, b


def _sum_by_owner(owners: np.ndarray, nbytes: np.ndarray) -> list[tuple[int, int]]:
    m = owners >= 0
    if not m.any():
        return []
    o, b = owners[m], nbytes[m]
    uniq, inv = np.unique(o, return_inverse=True)
    sums = np.bincount(inv, weights=b).astype(np.int64)
    return [(int(u), int(s)) for u, s in zip(uniq, sums)]
