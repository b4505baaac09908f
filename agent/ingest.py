"""Ingest: turn files and fetched text into pending documents, or into recorded refusals.

Holds the pieces both the file monitor and the crawler use: text decoding (UTF-8; a BOM,
a declared charset or a configured fallback encoding, recorded on the row), binary
detection, the per-file size cap, file selection (include/exclude patterns, `.gitignore`
rules, a walk that does not follow symlinks unless asked and then detects loops), and the
`Ingestor`, which writes rows through the store in short sessions of its own.

It does not watch folders (file_monitor.py) or fetch URLs (crawler.py), and it never
raises for a bad input: every refused input becomes a row with its reason, and the caller
gets an `IngestResult` back. Sessions and ORM objects stay inside one call, so an Ingestor
belongs to one thread at a time (the daemon's ingest thread, or the CLI).

Rules kept on top of the store's dedupe by content (store.documents.add_document):
- a uri has at most one pending row: a new version supersedes the older pending ones;
- content that comes back (a file restored, moved, or reverted) revives its old row
  instead of adding one, because content hashes are unique;
- a file that duplicated deleted content and still exists takes that content over.
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import functools
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator
from urllib.parse import unquote_to_bytes, urlsplit

import pathspec

if TYPE_CHECKING:  # pragma: no cover
    import threading

    from store import Store

log = logging.getLogger(__name__)

DEFAULT_MAX_FILE_BYTES = 4 * 1024 * 1024  # per-file cap; larger files are refused unread
BATCH_INPUTS = 200  # inputs per transaction in Ingestor.batch (a folder walk)
BINARY_SAMPLE_BYTES = 8192  # how much of the start is sniffed for binary content
MAX_CONTROL_FRACTION = 0.10  # more control bytes than this in the sample means binary

# Temp, swap and partial files, VCS folders and build outputs: never documents.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    # editors' temp and swap files, partial downloads
    "*~", "*.swp", "*.swo", "*.swx", ".*.sw?", "*.tmp", "*.temp", "*.bak", "*.part",
    "*.partial", "*.crdownload", "*.download", ".#*", "#*#", "4913", ".goutputstream-*",
    "*.kate-swp", ".~lock.*", "~$*", ".DS_Store", "Thumbs.db",
    # version control
    ".git/", ".hg/", ".svn/", ".bzr/", "CVS/", "_darcs/", ".jj/",
    # build outputs and caches
    "__pycache__/", "*.py[cod]", "build/", "dist/", "node_modules/", "target/", ".tox/",
    ".nox/", ".venv/", "venv/", ".mypy_cache/", ".pytest_cache/", ".ruff_cache/",
    "*.egg-info/", ".gradle/", ".idea/", ".cache/",
    # our own store, should a data directory sit inside a watched folder
    "*.sqlite3", "*.sqlite3-*", "cllm.lock",
)

_TEXT_BYTES = bytes([7, 8, 9, 10, 11, 12, 13, 27]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


class Refused(Exception):
    """An input that will not become a document; `reason` is what gets recorded."""

    def __init__(self, reason: str, size_bytes: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.size_bytes = size_bytes


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str  # what was used; anything but "utf-8" is a recorded fallback


@dataclass(frozen=True)
class IngestResult:
    """What one input became. `outcome` is one of: added (a new pending row), unchanged
    (same content as the uri's live row), restored (content came back: its old row is live
    again under this uri), duplicate (the content is stored under another uri; recorded as
    skipped), refused (recorded with `reason`), deleted (rows marked deleted), ignored."""

    uri: str
    outcome: str
    document_id: int | None = None
    sha256: str | None = None
    reason: str | None = None
    size_bytes: int | None = None
    n_deleted: int = 0


# --- decoding -----------------------------------------------------------------------------


def content_sha256(text: str) -> str:
    """The content hash used for dedupe: SHA-256 of the text as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sniff_binary(data: bytes) -> str | None:
    """The reason `data` looks binary, or None. BOM-marked UTF-16/32 counts as text."""
    if any(data.startswith(bom) for bom, _ in _BOMS):
        return None
    sample = data[:BINARY_SAMPLE_BYTES]
    nul = sample.find(b"\0")
    if nul >= 0:
        return f"binary content (NUL byte at offset {nul})"
    n_ctrl = len(sample.translate(None, _TEXT_BYTES))
    if sample and n_ctrl / len(sample) > MAX_CONTROL_FRACTION:
        return f"binary content ({100 * n_ctrl / len(sample):.0f}% control bytes)"
    return None


def _codec_name(name: str | None) -> str | None:
    """The codec's canonical name, or None for an unknown codec or one that is no text
    encoding (base64, hex, rot13, zlib, ...: bytes-to-bytes or str-to-str transforms)."""
    if not name:
        return None
    try:
        info = codecs.lookup(name.strip().strip("\"'"))
    except (LookupError, ValueError, UnicodeError):  # unknown, or a name with NUL or surrogates
        log.debug("unknown encoding %r ignored", name)
        return None
    if not getattr(info, "_is_text_encoding", True):
        log.debug("encoding %r is not a text encoding: ignored", name)
        return None
    return info.name


def codec_problem(name: str) -> str | None:
    """Why `name` cannot be a fallback encoding, or None when it can."""
    try:
        info = codecs.lookup(name.strip().strip("\"'"))
    except (LookupError, ValueError, UnicodeError):
        return f"unknown fallback encoding {name!r}"
    if not getattr(info, "_is_text_encoding", True):
        return f"fallback encoding {name!r} is not a text encoding"
    return None


def utf8_problem(text: str) -> str | None:
    """Why `text` cannot be stored (UTF-8 cannot hold lone surrogates), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"decoded text holds a lone surrogate (U+{ord(text[e.start]):04X} at character {e.start}) "
                "that UTF-8 cannot encode")
    return None


def storable(s: str) -> str:
    """`s` with lone surrogates (os.fsdecode's escapes of non-UTF-8 file names) replaced by
    U+FFFD, so the store can hold it (its uri keeps the exact bytes, percent-encoded)."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        raw = s.encode("utf-8", "surrogateescape")  # file names: their original bytes
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def _source(source: str) -> str:
    """A source name the store takes: storable, and within its 255 characters."""
    return storable(source)[:255]


def decode_text(data: bytes, *, declared: str | None = None, fallback: str | None = None) -> Decoded:
    """Decode bytes to text or raise Refused.

    Order: a byte-order mark; the declared charset (HTTP header or HTML meta), if the bytes
    decode with it; UTF-8; the configured fallback encoding. Binary and empty (whitespace
    only) inputs are refused, and so is invalid UTF-8 with nothing declared.
    """
    size = len(data)
    if not data.strip():
        raise Refused("empty (no text)" if size == 0 else "empty (whitespace only)", size)
    reason = sniff_binary(data)
    if reason:
        raise Refused(reason, size)
    decoded: Decoded | None = None
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                decoded = Decoded(data.decode(codec), "utf-8" if codec == "utf-8-sig" else codec)
            except UnicodeDecodeError as e:
                raise Refused(f"invalid {codec} after its byte-order mark (offset {e.start})", size) from None
            except UnicodeError as e:
                raise Refused(f"invalid {codec} after its byte-order mark ({e})", size) from None
            break
    if decoded is None:
        candidates = [_codec_name(declared), "utf-8", _codec_name(fallback)]
        first_error: UnicodeDecodeError | None = None
        for codec in dict.fromkeys(c for c in candidates if c):
            try:
                decoded = Decoded(data.decode(codec), codec)
                break
            except UnicodeDecodeError as e:
                if codec == "utf-8":
                    first_error = e
            except (UnicodeError, LookupError, ValueError, TypeError) as e:
                # codecs such as idna or punycode fail in their own ways: the next candidate
                log.debug("decoding as %s failed: %r", codec, e)
        if decoded is None:
            assert first_error is not None
            bad = data[first_error.start]
            raise Refused(
                f"invalid UTF-8 (byte 0x{bad:02x} at offset {first_error.start}) and no usable "
                "declared or fallback encoding", size)
    if "\0" in decoded.text:
        raise Refused("binary content (NUL character after decoding)", size)
    problem = utf8_problem(decoded.text)
    if problem:
        raise Refused(f"{problem} (decoded as {decoded.encoding})", size)
    if not decoded.text.strip():
        raise Refused("empty (whitespace only)", size)
    if decoded.encoding == "utf_8":  # codecs.lookup spells it this way
        decoded = Decoded(decoded.text, "utf-8")
    return decoded


def read_file(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
              follow_symlinks: bool = False) -> bytes:
    """Read a regular file of at most `max_bytes`, or raise Refused with a reason.

    Opens without following a final symlink unless asked, without blocking on FIFOs, and
    checks the size on the open descriptor, so a file swapped or grown meanwhile is caught.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise Refused("vanished before it could be read") from None
    except PermissionError:
        raise Refused("permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refused("symlink loop (too many levels of symbolic links)" if follow_symlinks
                          else "symbolic link (not followed)") from None
        raise Refused(f"cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
        if st.st_size > max_bytes:
            raise Refused(f"too large ({st.st_size} bytes > cap of {max_bytes})", st.st_size)
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise Refused(f"too large (grew past the cap of {max_bytes} bytes while read)", total)
        return b"".join(chunks)
    except OSError as e:
        raise Refused(f"read error: {e.strerror or e}") from None
    finally:
        os.close(fd)


# --- file selection -----------------------------------------------------------------------


class PathFilter:
    """Include/exclude rules (gitignore syntax) on paths relative to a root.

    `include=None` takes every file; `exclude=None` means DEFAULT_EXCLUDES (pass `()` for
    none). Directories are tested with a trailing slash so `build/` prunes whole trees.
    """

    def __init__(self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None) -> None:
        self.include_patterns = tuple(include) if include is not None else None
        self.exclude_patterns = tuple(DEFAULT_EXCLUDES if exclude is None else exclude)
        self._include = pathspec.GitIgnoreSpec.from_lines(self.include_patterns) if include is not None else None
        self._exclude = pathspec.GitIgnoreSpec.from_lines(self.exclude_patterns)

    def excluded(self, rel: str, is_dir: bool = False) -> bool:
        """True when `rel` (posix, relative to the root) or a folder above it is excluded."""
        return bool(self._exclude.match_file(rel + "/" if is_dir else rel))

    def accepts(self, rel: str) -> bool:
        """True for a file that is not excluded and matches the include patterns."""
        if self.excluded(rel):
            return False
        return self._include is None or bool(self._include.match_file(rel))


@dataclass(frozen=True)
class WalkItem:
    path: str  # as reached from the root (through the link, if any)
    reason: str | None = None  # set: a refused entry to record, not a file to read


class _GitIgnores:
    """Stack of per-folder .gitignore specs; the deepest matching rule wins, as in git."""

    def __init__(self) -> None:
        self._specs: dict[str, pathspec.GitIgnoreSpec] = {}

    def load(self, dir_rel: str, dir_path: str) -> None:
        try:
            with open(os.path.join(dir_path, ".gitignore"), encoding="utf-8", errors="replace") as f:
                self._specs[dir_rel] = pathspec.GitIgnoreSpec.from_lines(f.read().splitlines())
        except OSError:
            pass

    def ignored(self, rel: str, is_dir: bool) -> bool:
        parts = rel.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            base = "/".join(parts[:depth])
            spec = self._specs.get(base)
            if spec is None:
                continue
            sub = "/".join(parts[depth:]) + ("/" if is_dir else "")
            res = spec.check_file(sub)
            if res.include is not None:
                return bool(res.include)
        return False


def walk_files(root: str | os.PathLike, path_filter: PathFilter | None = None, *,
               follow_symlinks: bool = False, gitignore: bool = False,
               stop_event: "threading.Event | None" = None,
               on_linked_folder: "Callable[[str, str], None] | None" = None) -> Iterator[WalkItem]:
    """Every file under `root` that the filter accepts, depth first, in name order.

    Symlinks are reported as refused ("not followed") unless `follow_symlinks`; when
    followed, a link back to a folder being walked is reported as a loop and a folder
    reached twice is walked once (`on_linked_folder(link, target)` hears of each linked
    folder walked). Unreadable folders are reported, never raised.
    """
    path_filter = path_filter or PathFilter()
    root = os.path.abspath(root)
    ignores = _GitIgnores() if gitignore else None
    try:
        st = os.stat(root)
    except OSError as e:
        yield WalkItem(root, f"cannot read folder: {e.strerror or e}")
        return
    visited = {(st.st_dev, st.st_ino)}
    # stack of (path, rel, ancestors' (dev, ino)) so links to an ancestor are loops; the
    # folders above the root count too (a link to one of them would walk the root again)
    above, real = set(), os.path.realpath(root)
    while True:
        try:
            ast = os.stat(real)
            above.add((ast.st_dev, ast.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(real)
        if parent == real:
            break
        real = parent
    stack: list[tuple[str, str, frozenset]] = [(root, "", frozenset(visited | above))]
    while stack:
        if stop_event is not None and stop_event.is_set():
            return
        dir_path, dir_rel, ancestors = stack.pop()
        if ignores is not None:
            ignores.load(dir_rel, dir_path)
        try:
            with os.scandir(dir_path) as it:
                # real folders before links, so content is walked under its own name when it can be
                entries = sorted(it, key=lambda e: (_is_link(e), e.name))
        except OSError as e:
            yield WalkItem(dir_path, f"cannot read folder: {e.strerror or e}")
            continue
        subdirs = []
        for entry in entries:
            if stop_event is not None and stop_event.is_set():  # per entry: folders can be huge
                return
            rel = f"{dir_rel}/{entry.name}" if dir_rel else entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as e:
                yield WalkItem(entry.path, f"cannot stat: {e.strerror or e}")
                continue
            if is_link:
                if not follow_symlinks:
                    if not path_filter.excluded(rel):
                        yield WalkItem(entry.path, "symbolic link (not followed)")
                    continue
                try:
                    target = os.stat(entry.path)
                except OSError as e:
                    if path_filter.excluded(rel):
                        continue
                    yield WalkItem(entry.path, "symlink loop (too many levels of symbolic links)"
                                   if e.errno == errno.ELOOP else "dangling symbolic link")
                    continue
                is_dir = stat.S_ISDIR(target.st_mode)
                if is_dir:
                    key = (target.st_dev, target.st_ino)
                    if path_filter.excluded(rel, is_dir=True) or (ignores and ignores.ignored(rel, True)):
                        continue
                    if key in ancestors:
                        yield WalkItem(entry.path, "symlink loop (points to a folder above it)")
                    elif key not in visited:
                        visited.add(key)
                        subdirs.append((entry.path, rel, ancestors | {key}))
                        if on_linked_folder is not None:
                            on_linked_folder(entry.path, os.path.realpath(entry.path))
                    continue
            if is_dir:
                if path_filter.excluded(rel, is_dir=True) or (ignores and ignores.ignored(rel, True)):
                    continue
                try:
                    dst = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = (dst.st_dev, dst.st_ino)
                if key not in visited:  # a bind mount can show a folder twice
                    visited.add(key)
                    subdirs.append((entry.path, rel, ancestors | {key}))
                continue
            if not path_filter.accepts(rel) or (ignores and ignores.ignored(rel, False)):
                continue
            yield WalkItem(entry.path)
        stack.extend(reversed(subdirs))


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


# --- uris ---------------------------------------------------------------------------------


def file_uri(path: str | os.PathLike | bytes) -> str:
    """The document uri of a local path: absolute, symlinks kept, percent-encoded.

    The path's bytes are what gets encoded, so a name that is not UTF-8 (b"bad\\xff.txt",
    "bad\\udcff.txt" as os.fsdecode gives it) becomes "bad%FF.txt" and uri_to_path gives
    the same path back.
    """
    return Path(os.path.abspath(os.fsdecode(path))).as_uri()


def uri_to_path(uri: str) -> str | None:
    """The local path of a file uri (the inverse of file_uri), None for other schemes."""
    parts = urlsplit(uri)
    return os.fsdecode(unquote_to_bytes(parts.path)) if parts.scheme == "file" else None


# --- the ingestor -------------------------------------------------------------------------


class Ingestor:
    """Writes documents and refusals through the store; one thread at a time.

    `handle(event)` takes the file monitor's events; `ingest_file`, `ingest_text` and
    `refuse` serve the crawler and the CLI. No method raises for a bad input.
    """

    def __init__(self, store: "Store", *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 fallback_encoding: str | None = None, follow_symlinks: bool = False) -> None:
        if max_file_bytes <= 0:
            raise ValueError("max_file_bytes must be positive")
        problem = None if fallback_encoding is None else codec_problem(fallback_encoding)
        if problem:
            from engine.errors import ConfigError

            raise ConfigError(problem, hint="use a Python text codec name such as cp1252 or latin-1")
        self.store = store
        self.max_file_bytes = max_file_bytes
        self.fallback_encoding = fallback_encoding
        self.follow_symlinks = follow_symlinks
        self._batch: _Batch | None = None

    @contextlib.contextmanager
    def batch(self, every: int = BATCH_INPUTS) -> Iterator[None]:
        """Group the calls inside into transactions of up to `every` inputs (much faster for
        walks of many small files). An error rolls back the open transaction and propagates."""
        if self._batch is not None:
            yield
            return
        self._batch = _Batch(self.store, every)
        try:
            yield
        except BaseException as e:
            self._batch.close(e)
            raise
        else:
            self._batch.close(None)
        finally:
            self._batch = None

    @contextlib.contextmanager
    def _tx(self):
        """The batch's session if a batch is open, else a short transaction of its own."""
        if self._batch is None:
            with self.store.session() as s:
                yield s
            return
        yield self._batch.session()
        self._batch.done_one()

    # events from the file monitor
    def handle(self, event) -> IngestResult | None:
        """Apply one `file_monitor.MonitorEvent`; returns what it became."""
        source = event.root
        if event.kind == "ready":
            return self.ingest_file(event.path, source=source, follow_symlinks=event.follow_symlinks)
        if event.kind == "deleted":
            return self.delete_path(event.path)
        if event.kind == "refused":
            return self.refuse(file_uri(event.path), event.reason or "refused", source=source)
        if event.kind == "error":  # the monitor itself failed; FileMonitor.check() raises it
            log.error("file monitor failed: %s", event.reason)
            return None
        if event.kind == "reconciled":
            n = self.reconcile(event.path, event.present or frozenset())
            return IngestResult(file_uri(event.path), "deleted" if n else "ignored", n_deleted=n)
        log.warning("unknown monitor event kind %r for %s", event.kind, event.path)
        return None

    # files
    def ingest_file(self, path: str | os.PathLike, *, source: str | None = None,
                    target_id: int | None = None, follow_symlinks: bool | None = None) -> IngestResult:
        """Read, decode and store one file (source defaults to its folder)."""
        path = os.path.abspath(path)
        uri = file_uri(path)
        source = source or os.path.dirname(path)
        follow = self.follow_symlinks if follow_symlinks is None else follow_symlinks
        try:
            data = read_file(path, max_bytes=self.max_file_bytes, follow_symlinks=follow)
            decoded = decode_text(data, fallback=self.fallback_encoding)
        except Refused as r:
            return self.refuse(uri, r.reason, source=source, size_bytes=r.size_bytes, target_id=target_id)
        return self.ingest_text(uri, decoded.text, source=source, encoding=decoded.encoding,
                                target_id=target_id, size_bytes=len(data))

    def ingest_text(self, uri: str, text: str, *, source: str, encoding: str = "utf-8",
                    target_id: int | None = None, size_bytes: int | None = None) -> IngestResult:
        """Store decoded text as a pending document, deduplicated by content."""
        from store import documents

        if not text.strip():
            return self.refuse(uri, "empty (whitespace only)", source=source, target_id=target_id)
        problem = utf8_problem(text) or ("binary content (NUL character)" if "\0" in text else None)
        if problem:
            return self.refuse(uri, problem, source=source, size_bytes=size_bytes, target_id=target_id)
        uri, source = storable(uri), _source(source)
        sha = content_sha256(text)
        with self._tx() as s:
            prior = s.execute(_statements()["prior"], {"sha": sha}).first()
            doc, created = documents.add_document(s, uri=uri, source=source, text=text,
                                                  encoding=encoding, target_id=target_id)
            reason = None
            if created:
                outcome = "added"
            elif prior is not None and prior.status in ("deleted", "skipped"):
                # The content is not live anywhere (its file was deleted, or it was superseded):
                # it comes back under this uri. The store revives deleted rows itself.
                if doc.status == "skipped":
                    doc.status = "trained" if doc.cycle_id is not None else "pending"
                doc.uri, doc.source = uri, source
                doc.reason = reason = None if prior.uri == uri else f"content moved here from {prior.uri}"
                outcome = "restored"
            elif doc.uri == uri:
                outcome = "unchanged"
            else:
                reason = f"duplicate content of {doc.uri}"
                dup = documents.record_refused(s, uri=uri, source=source, reason=reason, status="skipped",
                                               size_bytes=size_bytes, target_id=target_id)
                log.info("duplicate: %s has the content of %s", uri, doc.uri)
                return IngestResult(uri, "duplicate", dup.id, sha, reason, size_bytes)
            if outcome != "unchanged":
                self._supersede_older(s, uri, doc.id)
            doc_id = doc.id
        log.info("%s: %s", outcome, uri)
        return IngestResult(uri, outcome, doc_id, sha, reason, size_bytes)

    def refuse(self, uri: str, reason: str, *, source: str, size_bytes: int | None = None,
               target_id: int | None = None) -> IngestResult:
        """Record a refused input (status skipped) with its reason."""
        uri, reason, source = storable(uri), storable(reason), _source(source)
        with self._tx() as s:
            doc_id = self._refuse_in(s, uri, reason, source=source, size_bytes=size_bytes,
                                     target_id=target_id)
        log.info("refused %s: %s", uri, reason)
        return IngestResult(uri, "refused", doc_id, None, reason, size_bytes)

    def delete_path(self, path: str | os.PathLike) -> IngestResult:
        """Mark the file's rows, or every row under a deleted folder, as deleted.

        A file that duplicated the deleted content and still exists takes the content over.
        """
        from store import documents
        from store.models import Document

        uri = file_uri(path)
        with self._tx() as s:
            uris = {uri} | set(s.scalars(
                _select(Document.uri).where(Document.uri.startswith(uri + "/", autoescape=True),
                                            Document.status != "deleted")))
            n = sum(documents.mark_deleted(s, u) for u in sorted(uris))
            heirs = list(s.scalars(_select(Document.uri).where(
                Document.status == "skipped", Document.reason.in_([f"duplicate content of {u}" for u in uris]))))
        for heir in dict.fromkeys(heirs):
            hp = uri_to_path(heir)
            if hp and os.path.lexists(hp) and self._latest_reason(heir, startswith="duplicate content of "):
                self.ingest_file(hp)
        if n:
            log.info("deleted: %s (%d rows)", uri, n)
        return IngestResult(uri, "deleted" if n else "ignored", n_deleted=n)

    def reconcile(self, root: str | os.PathLike, present: Iterable[str]) -> int:
        """After a scan of `root`: rows of files that are gone (not seen, not on disk) are
        marked deleted. Returns how many rows changed."""
        from store.models import Document

        root_uri = file_uri(root)
        seen = {file_uri(p) for p in present}
        with self._tx() as s:
            live = set(s.scalars(_select(Document.uri).where(
                Document.uri.startswith(root_uri + "/", autoescape=True), Document.status != "deleted")))
        n = 0
        for uri in sorted(live - seen):
            path = uri_to_path(uri)
            if path and not os.path.lexists(path):
                n += self.delete_path(path).n_deleted
        return n

    # helpers (inside the caller's session)
    def _refuse_in(self, s, uri, reason, *, source, size_bytes, target_id) -> int:
        from store import documents

        # record_refused updates the uri's earlier refusal, so restart scans do not pile up rows
        doc = documents.record_refused(s, uri=uri, source=source, reason=reason, status="skipped",
                                       size_bytes=size_bytes, target_id=target_id)
        return doc.id

    @staticmethod
    def _latest(s, uri):
        from store.models import Document

        return s.scalars(_select(Document).where(Document.uri == uri)
                         .order_by(Document.updated.desc(), Document.id.desc()).limit(1)).first()

    def _latest_reason(self, uri: str, *, startswith: str) -> bool:
        with self._tx() as s:
            latest = self._latest(s, uri)
            return bool(latest is not None and latest.reason and latest.reason.startswith(startswith))

    @staticmethod
    def _supersede_older(s, uri: str, keep_id: int) -> None:
        """Older pending versions of this uri will not be trained: the new one replaces them."""
        from store.models import utcnow

        s.flush()
        s.execute(_statements()["supersede"], {"u": uri, "keep": keep_id, "now": utcnow(),
                                               "why": f"superseded by document {keep_id} before training"})


class _Batch:
    """A transaction shared by many inputs, committed every `every` of them."""

    def __init__(self, store: "Store", every: int) -> None:
        self.store, self.every, self.n = store, max(1, every), 0
        self._cm = None
        self._session = None

    def session(self):
        if self._cm is None:
            self._cm = self.store.session()
            self._session = self._cm.__enter__()
        return self._session

    def done_one(self) -> None:
        self.n += 1
        if self.n % self.every == 0:
            self.close(None)

    def close(self, error: BaseException | None) -> None:
        cm, self._cm, self._session = self._cm, None, None
        if cm is None:
            return
        if error is None:
            cm.__exit__(None, None, None)
        else:
            cm.__exit__(type(error), error, error.__traceback__)


def _select(*what):
    from sqlalchemy import select

    return select(*what)


@functools.lru_cache(maxsize=1)
def _statements() -> dict:
    """Statements run once per input, built once (building them costs more than running them)."""
    from sqlalchemy import bindparam, update

    from store.models import Document

    return {
        "prior": _select(Document.uri, Document.status).where(Document.sha256 == bindparam("sha")),
        "supersede": update(Document).where(Document.uri == bindparam("u"), Document.status == "pending",
                                            Document.id != bindparam("keep"))
        .values(status="skipped", reason=bindparam("why"), updated=bindparam("now"))
        .execution_options(synchronize_session=False),
    }
