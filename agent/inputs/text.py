"""Text in: bytes become text, or a `Refused` that says why not.

Holds the decoding rules every input goes through (a byte-order mark, a declared charset,
UTF-8, a configured fallback encoding; the one used is recorded), binary detection, the
checks on codec names and on text UTF-8 cannot hold, `key_material` (a private key in a
text, never learned), `storable` for names the store must keep, `open_regular`, the one way a
watched or crawled file is opened (beneath its root, through no symbolic link unless asked,
its type checked before the open), and `read_file`, which reads one regular file under a
size cap through it.

It does not choose files (paths.py), fetch URLs (fetch.py) or write to the store
(ingest.py). `Refused` is the one exception for an input that will not become a
document: every module that refuses an input raises it, and its `reason` is recorded.
"""
from __future__ import annotations

import codecs
import errno
import logging
import os
import re
import stat
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_MAX_FILE_BYTES = 4 * 1024 * 1024  # per-file cap; larger files are refused unread
BINARY_SAMPLE_BYTES = 8192  # how much of the start is sniffed for binary content
MAX_CONTROL_FRACTION = 0.10  # more control bytes than this in the sample means binary

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


# Key material: an armoured private key (PEM, OpenSSH, PKCS#8, PGP: a "-----BEGIN ...
# PRIVATE KEY-----" line, optional headers, then key data) or a PuTTY key file. A line that
# only names the format, as documentation does, is not key material: the key data must follow.
_KEY_MATERIAL = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[ \t]*\r?\n"
    r"(?:[A-Za-z][\w-]*:[^\r\n]*\r?\n)*\s*[A-Za-z0-9+/=]{40,}"
    r"|^PuTTY-User-Key-File-\d+: [^\r\n]*(?:\r?\n[^\r\n]*){1,40}?\r?\nPrivate-Lines: \d+",
    re.MULTILINE)


def key_material(text: str) -> str | None:
    """The reason `text` is refused as key material (a private key in it), or None: what
    no model should ever learn, whatever the file is called (paths.PRIVATE_PATTERNS has
    the names)."""
    m = _KEY_MATERIAL.search(text)
    if m is None:
        return None
    found = m.group(0)
    kind = (found.split("-----")[1].removeprefix("BEGIN ") if found.startswith("-----")
            else "a PuTTY private key")
    return f"never learned: key material ({kind} at character {m.start()})"


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


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
# never blocks on a FIFO, never makes a terminal ours; the type is checked before the open anyway
_FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | _CLOEXEC
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_error(e: OSError, follow_symlinks: bool) -> Refused:
    if isinstance(e, FileNotFoundError):
        return Refused("vanished before it could be read")
    if isinstance(e, PermissionError):
        return Refused("permission denied")
    if e.errno == errno.ELOOP:
        return Refused("symlink loop (too many levels of symbolic links)" if follow_symlinks
                       else "symbolic link (not followed)")
    return Refused(f"cannot open: {e.strerror or e}")


def _regular(st: os.stat_result, max_bytes: int) -> None:
    """Refused unless `st` is a regular file of at most `max_bytes`."""
    if not stat.S_ISREG(st.st_mode):
        raise Refused("a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
    if st.st_size > max_bytes:
        raise Refused(f"too large ({st.st_size} bytes > cap of {max_bytes})", st.st_size)


def open_regular(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 follow_symlinks: bool = False,
                 max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[int, os.stat_result]:
    """(an open read-only descriptor, its fstat) of the regular file at `path`, or Refused.

    Without `follow_symlinks` the file is opened beneath `root` (the watched or crawled
    folder; by default the file's own folder): the root is opened as named, then every
    folder below it one component at a time with O_NOFOLLOW relative to the one above (a
    folder swapped for a symbolic link after the file was found is refused, not followed
    out of the root), and the file with O_NOFOLLOW too. Either way its type and size are
    checked (lstat, or stat when following) before it is opened, so a FIFO or a device is
    refused unopened, and again on the descriptor (a file swapped meanwhile is refused).
    """
    path = os.path.abspath(path)
    try:
        if follow_symlinks:
            st = os.stat(path)
            _regular(st, max_bytes)
            fd = os.open(path, _FILE_FLAGS)
        else:
            st, fd = _open_beneath(path, os.path.abspath(root) if root else os.path.dirname(path),
                                   max_bytes)
    except OSError as e:
        raise _open_error(e, follow_symlinks) from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise Refused("replaced while it was opened")
        _regular(fst, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return fd, fst


def _open_beneath(path: str, root: str, max_bytes: int) -> tuple[os.stat_result, int]:
    """lstat and open `path` below `root` through no symbolic link (open_regular)."""
    rel = os.path.relpath(path, root)
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise Refused(f"not beneath its folder {root}")
    *folders, name = rel.split(os.sep)
    dir_fd = os.open(root, _DIR_FLAGS)
    try:
        for i, folder in enumerate(folders):
            try:
                below = os.open(folder, _DIR_FLAGS | _NOFOLLOW, dir_fd=dir_fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    shown = os.sep.join(folders[:i + 1])
                    try:
                        link = stat.S_ISLNK(os.stat(folder, dir_fd=dir_fd, follow_symlinks=False).st_mode)
                    except OSError:
                        link = False
                    raise Refused(f"the folder {shown} on its path is a symbolic link now (not followed)"
                                  if link else f"{shown} on its path is no folder now") from None
                raise
            os.close(dir_fd)
            dir_fd = below
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise Refused("symbolic link (not followed)")
        _regular(st, max_bytes)
        return st, os.open(name, _FILE_FLAGS | _NOFOLLOW, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def read_file(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
              follow_symlinks: bool = False, root: str | os.PathLike | None = None) -> bytes:
    """Read a regular file of at most `max_bytes`, or raise Refused with a reason.

    Opened by `open_regular` (beneath `root` through no symbolic link unless
    `follow_symlinks`; the type checked before the open, never blocking on a FIFO); the
    size is checked on the open descriptor and while reading, so a file swapped or grown
    meanwhile is caught.
    """
    fd, _ = open_regular(path, root=root, follow_symlinks=follow_symlinks, max_bytes=max_bytes)
    try:
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
