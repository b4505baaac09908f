"""A response body decoded within a byte cap: `ACCEPT_ENCODING` and `BoundedBody`.

The crawler asks only for the content codings it decodes itself (gzip and deflate, with
zlib) and reads the body as it came over the wire (httpx's iter_raw), so no library
inflates a network read without an output bound. `BoundedBody` takes the raw chunks and
gives the decoded body, passing zlib `max_length` so that it never produces more than
one byte past the cap: a gzip body of a few kilobytes that inflates to gigabytes costs
the cap and one network read, never more. Raw bytes count against the cap too (a body
that is all empty deflate blocks is cut as well).

Refused, before a byte is read: more than one coding (`gzip, gzip`: each layer would
multiply the output), and any coding other than gzip, deflate and identity (we did not
ask for it). A refusal is a `BodyRefused` (the fetcher records it as skipped); a body that
does not inflate is an httpx.DecodingError (as httpx's own decoders raise: retried like a
network error).

It fetches nothing (fetch.py) and decodes no text (inputs/text.py).
"""
from __future__ import annotations

import zlib

import httpx

ACCEPT_ENCODING = "gzip, deflate"  # what BoundedBody decodes (no br/zstd: no bounded decoder here)
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


class BodyRefused(Exception):
    """A body not read (or not read further); `reason` is what gets recorded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def content_codings(header: str) -> list[str]:
    """The codings of a Content-Encoding header, in the order applied, without identity."""
    return [c for c in (p.strip().lower() for p in header.split(",")) if c and c != "identity"]


class BoundedBody:
    """Collects a body of at most `cap` decoded bytes from its raw chunks.

    `BoundedBody(content_encoding, cap)` raises BodyRefused for a stacked or unknown
    coding; `feed(raw)` raises it once the body passes the cap (decoded or raw), and
    httpx.DecodingError for data that does not inflate; `body()` is what was decoded.
    """

    def __init__(self, content_encoding: str, cap: int) -> None:
        codings = content_codings(content_encoding)
        if len(codings) > 1:
            raise BodyRefused(f"more than one content-encoding ({', '.join(codings)}): refused "
                              "(each layer multiplies what one read decodes to)")
        if codings and codings[0] not in _WBITS:
            raise BodyRefused(f"unsupported content-encoding {codings[0]!r} (asked for "
                              f"{ACCEPT_ENCODING} only)")
        self.coding = codings[0] if codings else None
        self.cap = cap
        self.raw_bytes = self.decoded_bytes = 0
        self._chunks: list[bytes] = []
        self._inflate = zlib.decompressobj(_WBITS[self.coding]) if self.coding else None
        self._first = True  # deflate: zlib-wrapped or raw, told by the first chunk

    def feed(self, raw: bytes) -> None:
        self.raw_bytes += len(raw)
        if self.raw_bytes > self.cap:
            raise BodyRefused(f"body too large (more than the cap of {self.cap} bytes)")
        out = raw if self._inflate is None else self._decompress(raw)
        self.decoded_bytes += len(out)
        if self.decoded_bytes > self.cap:
            raise BodyRefused(f"body too large (more than the cap of {self.cap} bytes"
                              + (f", decoding {self.coding})" if self.coding else ")"))
        if out:
            self._chunks.append(out)

    def body(self) -> bytes:
        return b"".join(self._chunks)

    def _decompress(self, raw: bytes) -> bytes:
        if self._inflate.eof:  # trailing bytes after the stream ends are ignored (as httpx does)
            return b""
        room = self.cap + 1 - self.decoded_bytes  # >= 1: zlib reads 0 as "no limit"
        try:
            return self._inflate.decompress(raw, room)
        except zlib.error as e:
            if self._first and self.coding == "deflate":  # a raw deflate stream, without zlib's header
                self._first = False
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                return self._decompress(raw)
            raise httpx.DecodingError(f"{self.coding} body does not inflate: {e}") from None
        finally:
            self._first = False
