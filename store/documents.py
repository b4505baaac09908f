"""Documents in and out: content-addressed ingest and its lifecycle rules, refusals,
deletions, the training queue.

Every function takes a Session and neither commits nor opens one: the caller's
`with store.session() as s:` block is the transaction. Functions return ORM objects, which
belong to that session and its thread.

Content identity is the SHA-256 of the text's UTF-8 bytes. The same content arriving again
(another path, a re-scan, a concurrent ingest in another process) returns the existing row.
On top of that, `record_text` keeps the rules of a uri whose content changes over time:

- a uri has one live version: a new one supersedes the older ones (skipped if never
  trained, deleted if trained: nothing but the live version is trained or replayed);
- content that comes back (a file restored, moved, or reverted) revives its old row
  instead of adding one, because content hashes are unique;
- content live under another uri is recorded as a skipped row that names the row holding
  it (`duplicate_of_id`); when that row's uri is deleted, `mark_deleted_under` names these
  duplicates (the heirs), so one that still exists can take the content over.

Reading files and deciding what exists on disk is the agent's job, not the store's.
"""
from __future__ import annotations

import enum
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from .models import Document, DocumentStatus, utcnow

REFUSED_STATUSES = (DocumentStatus.SKIPPED, DocumentStatus.FAILED)
_CHUNK = 500  # ids per IN (...) list, well under every backend's parameter limit


class Outcome(enum.StrEnum):
    """What one input became (the agent reports it; it is not stored)."""
    ADDED = "added"          # a new pending row
    UNCHANGED = "unchanged"  # the same content as the uri's live row
    RESTORED = "restored"    # content came back: its old row is live again under this uri
    DUPLICATE = "duplicate"  # the content is live under another uri: recorded as skipped
    REFUSED = "refused"      # recorded as skipped with the reason
    DELETED = "deleted"      # rows marked deleted
    IGNORED = "ignored"      # nothing to record


@dataclass(frozen=True)
class Recorded:
    """What record_text did: the outcome, the row it concerns, and why (if anything)."""
    outcome: Outcome
    document_id: int
    sha256: str
    reason: Optional[str] = None
    heirs: tuple[str, ...] = ()  # uris of duplicates of the versions it superseded (see below)


@dataclass(frozen=True)
class Deleted:
    """What mark_deleted_under did: rows marked deleted, and the uris of their duplicates."""
    n_rows: int
    heirs: list[str]


def content_sha256(text: str) -> str:
    """Hex SHA-256 of the UTF-8 bytes of `text` (the dedupe key)."""
    return hashlib.sha256(_utf8(text)).hexdigest()


def _utf8(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not encodable as UTF-8 ({e.reason} at {e.start}):"
                         " decode the bytes without surrogateescape") from None


def add_document(session: Session, *, uri: str, source: str, text: str,
                 encoding: str = "utf-8", target_id: Optional[int] = None,
                 n_tokens: Optional[int] = None) -> tuple[Document, bool]:
    """Record `text` as a pending document; (document, True) when new.

    The same content again returns the existing row and False, without error, whatever its
    uri, also when another process inserts it at the same moment. A row that was marked
    deleted comes back (pending, or trained if a cycle had trained it) under the new uri:
    that is what a moved file looks like. Text with NUL characters is refused (ValueError;
    PostgreSQL cannot store them): record it with record_refused instead.
    """
    doc = _new_document(uri=uri, source=source, text=text, encoding=encoding,
                        target_id=target_id, n_tokens=n_tokens)
    existing = _by_sha(session, doc.sha256)
    if existing is not None:
        _revive(existing, uri)
        return existing, False
    try:
        with session.begin_nested():  # a savepoint: a lost race must not end the transaction
            session.add(doc)
    except IntegrityError:
        existing = _by_sha(session, doc.sha256)  # committed by a concurrent writer
        if existing is None:
            raise  # another constraint (e.g. an unknown target_id)
        _revive(existing, uri)
        return existing, False
    return doc, True


def add_documents(session: Session,
                  items: Iterable[Mapping[str, Any]]) -> list[tuple[Document, bool]]:
    """add_document for many texts at once (mappings of its keyword arguments): one lookup
    and one INSERT batch for the new contents, several times faster for bulk ingest. Same
    results, in order; content repeated within the batch is created once."""
    docs = [_new_document(**item) for item in items]
    found: dict[str, Document] = {}
    shas = sorted({d.sha256 for d in docs})
    for i in range(0, len(shas), _CHUNK):
        found.update((d.sha256, d) for d in session.scalars(
            select(Document).where(Document.sha256.in_(shas[i:i + _CHUNK]))))
    results, new = [], {}
    for doc in docs:
        if doc.sha256 in found:
            _revive(found[doc.sha256], doc.uri)
            results.append((found[doc.sha256], False))
        elif doc.sha256 in new:
            results.append((new[doc.sha256], False))
        else:
            new[doc.sha256] = doc
            results.append((doc, True))
    try:
        with session.begin_nested():
            session.add_all(new.values())
    except IntegrityError:  # a concurrent writer got some of them first: one at a time
        return [add_document(session, uri=d.uri, source=d.source, text=d.text,
                             encoding=d.encoding, target_id=d.target_id, n_tokens=d.n_tokens)
                for d in docs]
    return results


def _new_document(*, uri: str, source: str, text: str, encoding: str = "utf-8",
                  target_id: Optional[int] = None, n_tokens: Optional[int] = None) -> Document:
    data = _utf8(text)
    if "\x00" in text:
        raise ValueError(f"{uri}: text contains NUL characters; record it with record_refused")
    return Document(uri=uri, source=source, sha256=hashlib.sha256(data).hexdigest(),
                    size_bytes=len(data), n_tokens=n_tokens, encoding=encoding,
                    status=DocumentStatus.PENDING, text=text, target_id=target_id)


def _by_sha(session: Session, digest: str) -> Optional[Document]:
    doc_id = session.scalar(select(Document.id).where(Document.sha256 == digest))
    return None if doc_id is None else session.get(Document, doc_id)


def _revive(doc: Document, uri: str) -> None:
    if doc.status == DocumentStatus.DELETED:
        doc.status = DocumentStatus.TRAINED if doc.cycle_id is not None else DocumentStatus.PENDING
        doc.uri = uri
        doc.reason = None


def record_refused(session: Session, *, uri: str, source: str, reason: str,
                   status: str = DocumentStatus.SKIPPED, size_bytes: Optional[int] = None,
                   target_id: Optional[int] = None,
                   duplicate_of_id: Optional[int] = None) -> Document:
    """Record an input that was not taken (binary, too large, undecodable, a duplicate...)
    and why; `duplicate_of_id` names the row that holds the content of a duplicate.

    Refused documents have no text and no hash. Refusing the same uri again with the same
    status updates that row (reason, size, duplicate link, time) instead of adding one, so
    re-scans do not pile up rows.
    """
    if status not in REFUSED_STATUSES:
        raise ValueError(f"status must be one of {', '.join(REFUSED_STATUSES)}, not {status!r}")
    doc = session.scalars(
        select(Document).where(Document.uri == uri, Document.status == status,
                               Document.sha256.is_(None)).limit(1)).first()
    if doc is None:
        doc = Document(uri=uri, source=source, status=status)
        session.add(doc)
    doc.reason = reason
    doc.size_bytes = size_bytes
    doc.target_id = target_id
    doc.duplicate_of_id = duplicate_of_id
    doc.updated = utcnow()
    session.flush()
    return doc


# Why a version left the live set when a newer one arrived under its uri: never trained
# (skipped: nothing of it is in the model), or after (part of) it was trained (deleted: kept
# for history with its cycle, never trained or replayed again).
SUPERSEDED_BEFORE_TRAINING = "superseded by document {} before training"
SUPERSEDED_AFTER_TRAINING = "superseded by document {} after training"
_SUPERSEDED_BY = re.compile(r"superseded by document (\d+)")

# Run once per input: built once (building a statement costs more than running it).
_HOLDER_OF = select(Document.uri, Document.status).where(Document.sha256 == bindparam("sha"))
_OLDER_VERSION = (Document.uri == bindparam("u"), Document.id != bindparam("keep"),
                  Document.sha256.is_not(None))
_LIVE_OLDER = select(Document.id).where(*_OLDER_VERSION, Document.status.in_(
    (DocumentStatus.PENDING, DocumentStatus.LEARNING, DocumentStatus.TRAINED)))
_SUPERSEDE_UNTRAINED = (
    update(Document).where(*_OLDER_VERSION, Document.status == DocumentStatus.PENDING,
                           func.coalesce(Document.trained_bytes, 0) == 0)
    .values(status=DocumentStatus.SKIPPED, reason=bindparam("before"), updated=bindparam("now"))
    .execution_options(synchronize_session=False))
_SUPERSEDE_TRAINED = (
    update(Document).where(*_OLDER_VERSION, Document.status.in_(
        (DocumentStatus.PENDING, DocumentStatus.LEARNING, DocumentStatus.TRAINED)))
    .values(status=DocumentStatus.DELETED, reason=bindparam("after"), updated=bindparam("now"))
    .execution_options(synchronize_session=False))


def superseded_before_training(reason: Optional[str]) -> Optional[str]:
    """The other way (the training it had was rolled back): None if `reason` is no
    "superseded ... after training"."""
    m = _SUPERSEDED_BY.match(reason or "")
    return (SUPERSEDED_BEFORE_TRAINING.format(m.group(1))
            if m and (reason or "").endswith(" after training") else None)


def superseded_after_training(reason: Optional[str]) -> str:
    """The reason of a version found trained after it was superseded before training (its
    cycle was running when the newer version arrived): the same successor, after training."""
    m = _SUPERSEDED_BY.match(reason or "")
    return SUPERSEDED_AFTER_TRAINING.format(m.group(1)) if m else "superseded after training"


def record_text(session: Session, *, uri: str, source: str, text: str, encoding: str = "utf-8",
                target_id: Optional[int] = None, size_bytes: Optional[int] = None) -> Recorded:
    """Record decoded text that arrived under `uri`, by the rules of a changing source.

    - new content: a pending row (ADDED);
    - the content of the uri's live row again: nothing changes (UNCHANGED);
    - content that is live nowhere (its row deleted, or skipped as superseded) comes back
      under this uri: its old row, pending again or trained if a cycle trained it, with the
      reason "content moved here from <uri>" when it was elsewhere (RESTORED);
    - content live under another uri: a skipped row for this uri whose `duplicate_of_id`
      names the row that holds it (DUPLICATE; `document_id` is the skipped row).
    After ADDED and RESTORED the uri's older versions leave the live set, so a uri has one
    live version (the only one trained or replayed): one never trained is skipped with the
    reason "superseded by document N before training"; one (partly) trained is deleted with
    "superseded by document N after training", keeping its cycle for history (a cycle that
    was training it when N arrived makes it so when it commits: ledger.record_cycle_credits).
    `heirs` names the skipped duplicates of the superseded versions, as mark_deleted_under
    does: their content is live nowhere now, and one whose file still exists can take it over.
    Text that UTF-8 cannot hold or with NUL characters raises ValueError (record_refused).
    """
    sha = content_sha256(text)
    holder = session.execute(_HOLDER_OF, {"sha": sha}).first()  # before add_document revives it
    doc, created = add_document(session, uri=uri, source=source, text=text, encoding=encoding,
                                target_id=target_id)
    reason = None
    if created:
        outcome = Outcome.ADDED
    elif holder is not None and holder.status in (DocumentStatus.DELETED, DocumentStatus.SKIPPED):
        if doc.status == DocumentStatus.SKIPPED:  # add_document revives deleted rows itself
            doc.status = DocumentStatus.TRAINED if doc.cycle_id is not None else DocumentStatus.PENDING
        doc.uri, doc.source = uri, source
        doc.reason = reason = None if holder.uri == uri else f"content moved here from {holder.uri}"
        outcome = Outcome.RESTORED
    elif doc.uri == uri:
        return Recorded(Outcome.UNCHANGED, doc.id, sha)
    else:
        reason = f"duplicate content of {doc.uri}"
        dup = record_refused(session, uri=uri, source=source, reason=reason, size_bytes=size_bytes,
                             target_id=target_id, duplicate_of_id=doc.id)
        return Recorded(Outcome.DUPLICATE, dup.id, sha, reason)
    session.flush()
    params = {"u": uri, "keep": doc.id, "now": utcnow(),
              "before": SUPERSEDED_BEFORE_TRAINING.format(doc.id),
              "after": SUPERSEDED_AFTER_TRAINING.format(doc.id)}
    older = list(session.scalars(_LIVE_OLDER, params))
    if not older:
        return Recorded(outcome, doc.id, sha, reason)
    session.execute(_SUPERSEDE_UNTRAINED, params)
    session.execute(_SUPERSEDE_TRAINED, params)
    session.expire_all()  # rows of this session may have changed status
    return Recorded(outcome, doc.id, sha, reason, tuple(_heirs_of(session, older)))


def mark_deleted(session: Session, uri: str, *, reason: str = "removed from its source") -> int:
    """Mark every document at `uri` deleted (it is then neither trained nor replayed);
    returns how many rows changed. `cycle_id` is kept: history still shows what a cycle
    trained on. The same content added again later revives the row."""
    result = session.execute(
        update(Document).where(Document.uri == uri, Document.status != DocumentStatus.DELETED)
        .values(status=DocumentStatus.DELETED, reason=reason, updated=utcnow())
        .execution_options(synchronize_session="fetch"))
    return result.rowcount


def mark_deleted_under(session: Session, uri: str, *, reason: str = "removed from its source",
                       below: bool = True) -> Deleted:
    """Mark the rows at `uri`, and every live row under `uri/` (a deleted folder), deleted;
    with `below=False` only the rows at `uri` (a file that a folder replaced: the folder's
    files are live rows under it).

    Returns how many rows changed and the heirs: the uris of skipped duplicates of any row at
    those uris (`duplicate_of_id`), oldest first, each once. One whose file still exists can
    take the content over (record_text revives the deleted row under its uri); checking what
    exists is the caller's part.
    """
    uris = {uri} | (live_uris_under(session, uri) if below else set())
    n = sum(mark_deleted(session, u, reason=reason) for u in sorted(uris))
    originals: list[int] = []
    ordered = sorted(uris)
    for i in range(0, len(ordered), _CHUNK):
        originals += session.scalars(select(Document.id).where(Document.uri.in_(ordered[i:i + _CHUNK])))
    return Deleted(n, _heirs_of(session, originals))


def _heirs_of(session: Session, originals: Sequence[int]) -> list[str]:
    """Uris of the skipped duplicates of the given rows, oldest first, each once."""
    heirs: dict[str, None] = {}
    for i in range(0, len(originals), _CHUNK):
        heirs.update(dict.fromkeys(session.scalars(
            select(Document.uri).where(Document.status == DocumentStatus.SKIPPED,
                                       Document.duplicate_of_id.in_(originals[i:i + _CHUNK]))
            .order_by(Document.id))))
    return list(heirs)


def is_duplicate(session: Session, uri: str) -> bool:
    """Whether the uri's newest row records it as a duplicate of content held elsewhere (so
    it has nothing of its own that a hand-over would overwrite)."""
    latest = session.scalars(select(Document.duplicate_of_id).where(Document.uri == uri)
                             .order_by(Document.updated.desc(), Document.id.desc()).limit(1)).first()
    return latest is not None


def live_uris_under(session: Session, uri: str) -> set[str]:
    """The uris under `uri/` (a folder) that have a row not marked deleted."""
    return set(session.scalars(select(Document.uri).where(
        Document.uri.startswith(uri + "/", autoescape=True),
        Document.status != DocumentStatus.DELETED)))


def pending_documents(session: Session, limit: Optional[int] = None) -> list[Document]:
    """Documents waiting to be trained, oldest first, with their text loaded."""
    q = (select(Document).where(Document.status == DocumentStatus.PENDING).order_by(Document.id)
         .options(undefer(Document.text)))
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def pending_summary(session: Session) -> dict:
    """{"documents", "bytes", "tokens" (None where unknown), "oldest" (aware datetime or
    None)} of the pending queue: what decides when the next cycle starts."""
    row = session.execute(
        select(func.count(Document.id), func.sum(Document.size_bytes),
               func.sum(Document.n_tokens), func.min(Document.first_seen))
        .where(Document.status == DocumentStatus.PENDING)).one()
    return {"documents": row[0], "bytes": int(row[1] or 0),
            "tokens": int(row[2]) if row[2] is not None else None, "oldest": row[3]}


def mark_trained(session: Session, doc_ids: Iterable[int], cycle_id: int, *,
                 retrain: bool = False,
                 n_tokens: Optional[Mapping[int, int]] = None) -> int:
    """Mark pending documents trained by `cycle_id`; returns how many were marked.

    Documents already trained keep the cycle that first trained them (replay does not
    change it). A document deleted while its cycle ran stays deleted, but records the cycle.
    With `retrain` (a cycle that was given these documents to learn, e.g. `cllm train` on
    content seen before), every listed document records `cycle_id` whatever its status and
    earlier cycle; only pending ones change status. `n_tokens`: {document id: tokens} to
    record with the listed documents (their count under the tokenizer that trained them).
    """
    ids = sorted(set(doc_ids))
    now = utcnow()
    marked = 0
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        marked += session.execute(
            update(Document).where(Document.id.in_(chunk), Document.status == DocumentStatus.PENDING)
            .values(status=DocumentStatus.TRAINED, cycle_id=cycle_id, updated=now)
            .execution_options(synchronize_session="fetch")).rowcount
        others = (update(Document).where(Document.id.in_(chunk)) if retrain else
                  update(Document).where(Document.id.in_(chunk), Document.status == DocumentStatus.DELETED,
                                         Document.cycle_id.is_(None)))
        session.execute(others.values(cycle_id=cycle_id, updated=now)
                        .execution_options(synchronize_session="fetch"))
        counted = [d for d in chunk if n_tokens is not None and d in n_tokens]
        if counted:
            for doc in session.scalars(select(Document).where(Document.id.in_(counted))):
                doc.n_tokens = n_tokens[doc.id]
    if n_tokens is not None:
        session.flush()
    return marked


def mark_failed(session: Session, doc_ids: Iterable[int], reason: str) -> int:
    """Take pending documents out of the queue with a reason (e.g. they cannot be tokenised)."""
    ids = sorted(set(doc_ids))
    n = 0
    for i in range(0, len(ids), _CHUNK):
        n += session.execute(
            update(Document).where(Document.id.in_(ids[i:i + _CHUNK]),
                                   Document.status == DocumentStatus.PENDING)
            .values(status=DocumentStatus.FAILED, reason=reason, updated=utcnow())
            .execution_options(synchronize_session="fetch")).rowcount
    return n


def replay_sample(session: Session, n: int, *, exclude_ids: Sequence[int] = (),
                  seed: Optional[int] = None, source: Optional[str] = None,
                  draw: Optional[Callable[[list[int], int], Iterable[int]]] = None
                  ) -> list[Document]:
    """Up to `n` trained documents drawn uniformly at random (seeded), with their text, by id.

    Deleted documents are never replayed. Ids are drawn in Python so the sample is the same
    on every backend for the same seed and the same rows. `draw(ids, k)` replaces the
    drawing (random.Random(seed).sample): it picks k of the candidate ids (ascending).
    """
    q = select(Document.id).where(Document.status == DocumentStatus.TRAINED).order_by(Document.id)
    if source is not None:
        q = q.where(Document.source == source)
    skip = set(exclude_ids)
    ids = [i for i in session.scalars(q) if i not in skip]
    if n <= 0 or not ids:
        return []
    k = min(n, len(ids))
    chosen = sorted(draw(ids, k) if draw is not None else random.Random(seed).sample(ids, k))
    out: list[Document] = []
    for i in range(0, len(chosen), _CHUNK):
        out += session.scalars(select(Document).where(Document.id.in_(chosen[i:i + _CHUNK]))
                               .order_by(Document.id).options(undefer(Document.text)))
    return out


# ----------------------------------------------------------------------------- reading

def _documents_where(q, status: Optional[str], source: Optional[str], cycle_id: Optional[int]):
    if status is not None:
        q = q.where(Document.status == status)
    if source is not None:
        q = q.where(Document.source == source)
    if cycle_id is not None:
        q = q.where(Document.cycle_id == cycle_id)
    return q


def list_documents(session: Session, status: Optional[str] = None,
                   source: Optional[str] = None, cycle_id: Optional[int] = None,
                   limit: Optional[int] = None, *, ids: Optional[Iterable[int]] = None,
                   with_text: bool = False, offset: int = 0) -> list[Document]:
    """Documents by id, filtered; their text is not loaded (it loads on access) unless
    `with_text`. `ids`: only documents with these ids (any number of them). Without `ids`,
    a page of them with `limit` and `offset`."""
    q = _documents_where(select(Document).order_by(Document.id), status, source, cycle_id)
    if with_text:
        q = q.options(undefer(Document.text))
    if ids is None:
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        return list(session.scalars(q))
    wanted = sorted(set(ids))
    out: list[Document] = []
    for i in range(0, len(wanted), _CHUNK):  # chunks in id order: their rows are too
        if limit is not None and len(out) >= limit:
            break
        out += session.scalars(q.where(Document.id.in_(wanted[i:i + _CHUNK])))
    return out if limit is None else out[:limit]


def count_documents(session: Session, status: Optional[str] = None,
                    source: Optional[str] = None, cycle_id: Optional[int] = None) -> int:
    """How many documents list_documents lists with these filters: counted in SQL."""
    return session.scalar(_documents_where(select(func.count(Document.id)), status, source, cycle_id))


def document_counts(session: Session) -> list[dict]:
    """[{"source", "status", "documents", "bytes", "tokens"}] ordered by source, status."""
    q = (select(Document.source, Document.status, func.count(Document.id),
                func.sum(Document.size_bytes), func.sum(Document.n_tokens))
         .group_by(Document.source, Document.status).order_by(Document.source, Document.status))
    return [{"source": s, "status": st, "documents": n, "bytes": int(b or 0),
             "tokens": int(t or 0)} for s, st, n, b, t in session.execute(q)]
