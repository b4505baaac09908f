"""What a cycle reads from the store: its documents in backlog order (the first ones loaded,
the rest loaded lazily), the replay sample of documents already learned, and the held-out
slice of every source it is evaluated on.

Each document's text is split into training text and held-out tail (learn.split_heldout);
a document with no training text left is listed as refused, for the trainer to record.
Everything here reads the store in short read-only sessions and writes nothing: which
backlog a cycle takes, and what it records, are agent/continuous_trainer.py's.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from agent.settings import TrainerSettings
from agent.training.learn import PlanDoc, split_heldout
from store.documents import list_documents, replay_sample
from store.ledger import BacklogEntry, document_texts
from store.models import DocumentStatus

MORE_DOCS = 32                  # backlog documents loaded at a time once a cycle's plan runs out
HELDOUT_CHARS_PER_SOURCE = 6000  # held-out text evaluated per source (keeps evaluation short)


class CyclePlan(NamedTuple):
    docs: list[PlanDoc]         # the documents the cycle starts with, texts loaded
    more: Optional[Callable[[], Optional[PlanDoc]]]   # the next one, loaded lazily; None: none
    refused: list[int]          # ids with no training text (the lazily loaded ones added later)
    tails: dict[int, str]       # held-out tails of `docs`


def plan_documents(store, entries: Sequence[BacklogEntry], settings: TrainerSettings,
                   capacity: float, *, wrap: bool = False, extra_pass: bool = False,
                   texts: Optional[dict[int, str]] = None) -> CyclePlan:
    """The documents of `entries` (backlog order) a cycle starts with: texts loaded for
    about 1.5 x `capacity` bytes still to learn (at least one document), the rest by
    `more()`. Each is read to its budget (settings.passes), round and round with `wrap`, or
    with `extra_pass` (consolidation) to one pass more than it has completed. `texts` (id:
    text) stands in for the store's when given (`cllm train`)."""
    st = settings

    def passes_of(e: BacklogEntry) -> Optional[float]:
        if wrap:
            return None
        if extra_pass and e.trainable_bytes:
            return float(e.trained_bytes // e.trainable_bytes + 1)
        return st.passes

    first, rest, planned = [], list(entries), 0
    while rest and (planned < 1.5 * capacity or not first):
        e = rest.pop(0)
        first.append(e)
        planned += e.left_bytes(passes_of(e) or st.passes, st.val_fraction) or e.size_bytes
    refused: list[int] = []
    tails: dict[int, str] = {}

    def load(chunk) -> list[PlanDoc]:
        if texts is not None:
            got = {e.id: texts[e.id] for e in chunk if e.id in texts}
        else:
            with store.session(read_only=True) as s:
                got = document_texts(s, [e.id for e in chunk])
        out = []
        for e in chunk:
            head, tail = split_heldout(got.get(e.id, ""), st.val_fraction)
            if not head:
                refused.append(e.id)
                continue
            out.append(PlanDoc(e.id, e.source, head, e.trained_bytes, passes_of(e)))
            tails[e.id] = tail
        return out

    docs = load(first)
    first_tails = dict(tails)   # held-out tails of the documents the cycle starts with
    queue: list[PlanDoc] = []

    def more() -> Optional[PlanDoc]:
        while not queue and rest:
            chunk, rest[:] = rest[:MORE_DOCS], rest[MORE_DOCS:]
            queue.extend(load(chunk))
        return queue.pop(0) if queue else None

    return CyclePlan(docs, more if rest else None, refused, first_tails)


def sample_replay(store, settings: TrainerSettings, cycle_id: int,
                  exclude: set[int]) -> list[PlanDoc]:
    """A sample of trained documents for replay (their training text), seeded by the
    settings' seed and the cycle; none with replay_fraction 0."""
    if settings.replay_fraction <= 0:
        return []
    rng = np.random.default_rng(settings.seed * 1_000_003 + cycle_id)

    def draw(ids: list[int], k: int) -> list[int]:
        return rng.choice(ids, size=k, replace=False).tolist()

    vf = settings.val_fraction
    with store.session(read_only=True) as s:
        return [PlanDoc(d.id, d.source, split_heldout(d.text or "", vf)[0])
                for d in replay_sample(s, settings.replay_docs, exclude_ids=sorted(exclude),
                                       draw=draw)]


def heldout_texts(store, val_fraction: float, new_tails: dict[str, list[str]]
                  ) -> dict[str, str]:
    """Held-out text per source: the tails of its earliest documents already read (by id),
    then of this cycle's (`new_tails`), up to HELDOUT_CHARS_PER_SOURCE. Earlier documents
    come first so a source's slice stays the same from cycle to cycle once it is full."""
    vf = val_fraction
    budget: dict[str, float] = {}
    chosen: list[int] = []
    with store.session(read_only=True) as s:
        for status in (DocumentStatus.TRAINED, DocumentStatus.LEARNING):
            for d in list_documents(s, status=status):
                if budget.get(d.source, 0.0) < HELDOUT_CHARS_PER_SOURCE:
                    budget[d.source] = budget.get(d.source, 0.0) + (d.size_bytes or 0) * vf
                    chosen.append(d.id)
        texts: dict[str, list[str]] = {}
        for d in list_documents(s, ids=sorted(chosen), with_text=True):
            texts.setdefault(d.source, []).append(split_heldout(d.text or "", vf)[1])
    for source, items in new_tails.items():
        for t in items:
            if sum(map(len, texts.get(source, []))) < HELDOUT_CHARS_PER_SOURCE:
                texts.setdefault(source, []).append(t)
    return {src: "\n".join(parts) for src, parts in texts.items() if "".join(parts).strip()}
