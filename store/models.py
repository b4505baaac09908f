"""The store's tables as typed SQLAlchemy 2.0 models: everything the agent knows.

Crawl targets and watched roots, documents (content-addressed by SHA-256, with the text kept
for replay), the append-only vocabulary, training cycles with their step metrics, per-source
evaluations and checkpoints, and the crawler's persisted URL dedupe. Times are timezone-aware
UTC on every backend. Constraint names follow one naming convention so that migrations can
drop them later. No behaviour lives here beyond column defaults and `get_row`: the functions in
documents.py, ledger.py, cycles.py, vocab.py, checkpoints.py, frontier.py, targets.py,
controls.py and lease.py do the work.
"""
from __future__ import annotations

import datetime as dt
import enum
from typing import Any, Optional

from sqlalchemy import (JSON, BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, event,
                        Index, LargeBinary, MetaData, String, Text, TypeDecorator, UniqueConstraint)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



class DocumentStatus(enum.StrEnum):
    """A document's place in its life: waiting, being learned (part of its training budget
    trained), learned (its budget reached), refused (with a reason), gone."""
    PENDING = "pending"
    LEARNING = "learning"
    TRAINED = "trained"
    SKIPPED = "skipped"
    FAILED = "failed"
    DELETED = "deleted"


class CycleStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class TargetKind(enum.StrEnum):
    WATCH = "watch"      # a watched folder
    CRAWL = "crawl"      # a crawled URL, folder or file


class UrlStatus(enum.StrEnum):
    """What the crawler did with a URL. FINAL ones are never fetched again; transient failures
    and policy outcomes (options and robots.txt can change) are retried."""
    QUEUED = "queued"            # a link found but not fetched yet (the persisted frontier)
    FETCHED = "fetched"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    ERROR = "error"              # permanent: 4xx, too many redirects, ...
    FAILED = "failed"            # transient: 5xx, timeouts (retried)
    REFUSED = "refused"          # the SSRF guard or a scheme/size/type policy
    DISALLOWED = "disallowed"    # robots.txt


FINAL_URL_STATUSES = frozenset({UrlStatus.FETCHED, UrlStatus.DUPLICATE, UrlStatus.SKIPPED,
                                UrlStatus.ERROR})
DOCUMENT_STATUSES = tuple(DocumentStatus)
CYCLE_STATUSES = tuple(CycleStatus)
TARGET_KINDS = tuple(TargetKind)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, whatever the backend keeps (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[dt.datetime], dialect) -> Optional[dt.datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[dt.datetime], dialect) -> Optional[dt.datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON()}


class CrawlTarget(Base):
    """A watched root (kind "watch": a folder) or a crawl target (kind "crawl": a URL or tree)."""

    __tablename__ = "crawl_targets"
    __table_args__ = (
        UniqueConstraint("kind", "location"),
        CheckConstraint(_one_of("kind", TARGET_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    location: Mapped[str] = mapped_column(String(2048))  # absolute path or URL
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # patterns, depth, limits...
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_scan: Mapped[Optional[dt.datetime]]

    def __repr__(self) -> str:
        return f"CrawlTarget(id={self.id}, kind={self.kind!r}, location={self.location!r})"


class Cycle(Base):
    """One training cycle: what started it, what it learned from, and how it went."""

    __tablename__ = "cycles"
    __table_args__ = (CheckConstraint(_one_of("status", CYCLE_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trigger: Mapped[str] = mapped_column(String(32))  # "tokens", "age", "manual", "train", ...
    status: Mapped[str] = mapped_column(String(16), default=CycleStatus.RUNNING, index=True)
    started: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished: Mapped[Optional[dt.datetime]]
    docs_new: Mapped[int] = mapped_column(default=0)
    docs_replayed: Mapped[int] = mapped_column(default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)  # tokens trained on
    steps: Mapped[int] = mapped_column(default=0)
    schedule: Mapped[Optional[dict[str, Any]]]  # lr, warmup, decay, batch, replay fraction...
    loss_start: Mapped[Optional[float]]
    loss_end: Mapped[Optional[float]]
    val_loss: Mapped[Optional[float]]  # mean validation loss over sources
    forgetting_mean: Mapped[Optional[float]]  # mean over sources of (loss now - after learned)
    forgetting_max: Mapped[Optional[float]]
    tokens_per_s: Mapped[Optional[float]]
    workers: Mapped[Optional[int]]
    vocab_size_before: Mapped[Optional[int]]
    vocab_size_after: Mapped[Optional[int]]
    skipped_steps: Mapped[int] = mapped_column(default=0)  # non-finite steps, never applied
    bytes_new: Mapped[Optional[int]] = mapped_column(BigInteger)     # backlog text trained
    bytes_replay: Mapped[Optional[int]] = mapped_column(BigInteger)  # replayed text trained
    error: Mapped[Optional[str]] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"Cycle(id={self.id}, trigger={self.trigger!r}, status={self.status!r})"


class Document(Base):
    """A piece of text the agent met: learned, waiting, or refused (with the reason).

    `sha256` is the hex SHA-256 of the UTF-8 text and unique: the same content is one row.
    Refused inputs have no text and no hash; a refused duplicate names the row that holds
    its content (`duplicate_of_id`). `text` is deferred: it loads on first access inside a
    session (pending_documents and replay loads undefer it).
    """

    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint(_one_of("status", DOCUMENT_STATUSES), name="status"),
        Index(None, "source", "status"),
        # A hash index on PostgreSQL: a btree entry is limited to ~2.7 KB and URLs can be longer.
        Index(None, "uri", postgresql_using="hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(255))  # e.g. the root or host it came from
    sha256: Mapped[Optional[str]] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger)
    n_tokens: Mapped[Optional[int]]
    encoding: Mapped[Optional[str]] = mapped_column(String(32))  # how the bytes were decoded
    status: Mapped[str] = mapped_column(String(16), default=DocumentStatus.PENDING, index=True)
    reason: Mapped[Optional[str]] = mapped_column(Text)  # why skipped / failed / deleted
    text: Mapped[Optional[str]] = mapped_column(Text, deferred=True)
    first_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    cycle_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("cycles.id", ondelete="SET NULL"), index=True)  # the last cycle that trained it
    # the ledger: bytes of the training text (the held-out tail cut off) and how many of them
    # trained sequences have covered, summed over cycles; passes = trained / trainable
    trainable_bytes: Mapped[Optional[int]] = mapped_column(BigInteger)
    trained_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    target_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("crawl_targets.id", ondelete="SET NULL"), index=True)
    duplicate_of_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("documents.id", ondelete="SET NULL"), index=True)  # a skipped duplicate: who holds it
    # the machine whose agent recorded it (Store.origin, set on insert by the session)
    origin: Mapped[Optional[str]] = mapped_column(String(255))

    cycle: Mapped[Optional[Cycle]] = relationship(lazy="raise")
    target: Mapped[Optional[CrawlTarget]] = relationship(lazy="raise")

    def __repr__(self) -> str:
        return f"Document(id={self.id}, uri={self.uri!r}, status={self.status!r})"


class VocabEntry(Base):
    """One token of the append-only vocabulary: ids are never reused or renumbered.

    The base byte tokens have no cycle; merges learned later record the cycle and the
    document where they first appeared, and the pair they merge.
    """

    __tablename__ = "vocab_entries"

    token_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    token_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    left_id: Mapped[Optional[int]]  # the merged pair, for merge tokens
    right_id: Mapped[Optional[int]]
    cycle_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("cycles.id", ondelete="SET NULL"), index=True)
    document_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("documents.id", ondelete="SET NULL"), index=True)
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"VocabEntry(token_id={self.token_id}, token_bytes={self.token_bytes!r})"


class StepMetric(Base):
    """A sampled training step of a cycle."""

    __tablename__ = "step_metrics"
    __table_args__ = (UniqueConstraint("cycle_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"))
    step: Mapped[int]
    loss: Mapped[Optional[float]]  # None for a skipped (non-finite) step
    lr: Mapped[Optional[float]]
    grad_norm: Mapped[Optional[float]]
    tokens_per_s: Mapped[Optional[float]]
    recorded: Mapped[dt.datetime] = mapped_column(default=utcnow)


class EvalResult(Base):
    """Validation loss on one source's held-out slice after a cycle, and its forgetting:
    loss now minus the loss right after that source was last learned (`baseline_loss`)."""

    __tablename__ = "eval_results"
    __table_args__ = (UniqueConstraint("cycle_id", "source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(255), index=True)
    val_loss: Mapped[float]
    baseline_loss: Mapped[Optional[float]]
    forgetting: Mapped[Optional[float]]
    n_tokens: Mapped[Optional[int]]
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    """A checkpoint file the engine wrote; at most one row is the latest (a partial unique
    index enforces it)."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        Index("uq_checkpoints_latest", "is_latest", unique=True,
              sqlite_where=sql_text("is_latest = 1"),
              postgresql_where=sql_text("is_latest")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(4096))
    sha256: Mapped[str] = mapped_column(String(64))
    step: Mapped[int]
    cycle_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("cycles.id", ondelete="SET NULL"), index=True)
    vocab_size: Mapped[int]
    size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger)
    is_latest: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)
    pruned: Mapped[Optional[dt.datetime]]  # when the retention rule deleted its file

    def __repr__(self) -> str:
        return f"Checkpoint(id={self.id}, path={self.path!r}, latest={self.is_latest})"


class CycleDocument(Base):
    """What one cycle trained of one document: bytes of its training text covered by the
    cycle's trained sequences, as backlog (counted toward its passes) and as replay."""

    __tablename__ = "cycle_documents"
    __table_args__ = (UniqueConstraint("cycle_id", "document_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"))
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"),
                                             index=True)
    new_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    replay_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class FetchedUrl(Base):
    """A canonical URL the crawler has handled, so a restart does not fetch it again, or
    found and not fetched yet (status queued, with its `depth`: the persisted frontier).

    Unique by `url_sha256` (the hex SHA-256 of the canonical URL): URLs can be longer than
    a PostgreSQL btree entry allows.
    """

    __tablename__ = "fetched_urls"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    url_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(32))  # a UrlStatus
    http_status: Mapped[Optional[int]]
    document_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("documents.id", ondelete="SET NULL"), index=True)
    reason: Mapped[Optional[str]] = mapped_column(Text)
    depth: Mapped[Optional[int]]  # links from the crawl's start URL, where it was found (the frontier)
    # a crawler fetching it now (several agents share one frontier): who, and until when the
    # claim holds unless renewed by recording the outcome (a dead agent's claims expire)
    claimed_by: Mapped[Optional[str]] = mapped_column(String(200))
    claim_expires: Mapped[Optional[dt.datetime]]
    fetched_at: Mapped[dt.datetime] = mapped_column(default=utcnow)  # the last fetch (a 304 included)
    etag: Mapped[Optional[str]] = mapped_column(Text)  # validators of the stored page (re-crawls
    last_modified: Mapped[Optional[str]] = mapped_column(Text)  # ask conditionally with them)

    def __repr__(self) -> str:
        return f"FetchedUrl(url={self.url!r}, status={self.status!r})"


@event.listens_for(Session, "before_flush")
def _stamp_origin(session: Session, flush_context, instances) -> None:
    origin = session.info.get("origin")
    if origin is not None:
        for obj in session.new:
            if isinstance(obj, Document) and obj.origin is None:
                obj.origin = origin


class Lease(Base):
    """A named lease of the store held by one process at a time ("trainer": the one agent
    that trains the model). Kept by heartbeats: `expires_at` moves forward with each
    renewal, and a lease whose holder stopped renewing can be taken over (store/lease.py).
    Times come from the database's clock, so agents on several machines agree."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))      # host:pid:random, one per run
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    data_dir: Mapped[Optional[str]] = mapped_column(Text)
    acquired_at: Mapped[dt.datetime]
    renewed_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]

    def __repr__(self) -> str:
        return f"Lease(name={self.name!r}, holder={self.holder!r})"


class Control(Base):
    """A control a user set for the agents of a store, e.g. "paused" (training paused from the
    dashboard or `cllm pause`): rows of the store, so they reach the agent whether the
    server runs inside it or beside it, and outlive restarts."""

    __tablename__ = "controls"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def get_row(session: Session, model, ident: int):
    """The row of `model` with primary key `ident`, or a LookupError naming it."""
    obj = session.get(model, ident)
    if obj is None:
        raise LookupError(f"no {model.__tablename__[:-1].replace('_', ' ')} with id {ident}")
    return obj
