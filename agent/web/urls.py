"""URL canonicalisation: the one form URLs are deduplicated, stored and compared by.

Holds `canonical_url` (http and https only, no credentials; lower-case scheme and IDNA
host, IPv4 shorthand such as 127.1 as the dotted address, no default port or fragment, dot segments removed, percent-escapes normalised; what
we never fetch raises Refused), `origin` and `host_port` of a canonical URL, and
`scheme_of` for telling URL targets from paths.

It does not check addresses (ssrf.py) or robots.txt (robots.py), and fetches nothing.
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from agent.inputs.text import Refused

DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")  # after IDNA; no spaces, controls, %
_UNRESERVED = re.compile(r"%(2[DdEe]|3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|5[Ff]|6[1-9A-Fa-f]|7[0-9Aa]|7[Ee])")


def canonical_url(url: str, base: str | None = None) -> str:
    """The form URLs are deduplicated by; raises Refused for what we never fetch.

    Lower-case scheme and host (IDNA), no default port, no fragment, "/" for an empty
    path, dot segments removed, percent-escapes upper-cased and unreserved ones decoded.
    Only http and https; no credentials in URLs.
    """
    try:
        if base is not None:
            url = urljoin(base, url.strip())
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:  # "http://[::1", a port out of range, ...
        raise Refused(f"malformed URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise Refused(f"scheme {scheme or '(none)'!r} not allowed: only http and https")
    if parts.username is not None or parts.password is not None:
        raise Refused("URL with credentials refused")
    host = parts.hostname or ""
    if not host:
        raise Refused("URL without a host")
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    shorthand = None if is_ip else ipv4_shorthand(host.rstrip("."))
    if shorthand is not None:  # "127.1", "0x7f.0.0.1": the address browsers and libc read
        host, is_ip = str(shorthand), True
    if not is_ip:
        try:
            host = host.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise Refused(f"invalid host name {host!r}") from None
        if not _HOST_NAME.fullmatch(host):
            raise Refused(f"invalid host name {host!r}")
    if is_ip and ":" in host:
        host = f"[{ipaddress.ip_address(host).compressed}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    try:
        path = _remove_dot_segments(_norm_escapes(parts.path) or "/")
        query = _norm_escapes(parts.query)
    except UnicodeError:  # lone surrogates cannot be percent-encoded
        raise Refused("malformed URL: characters that UTF-8 cannot encode") from None
    return urlunsplit((scheme, netloc, path, query, ""))


def ipv4_shorthand(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a host written the inet_aton / WHATWG way stands for ("127.1",
    "2130706433", "0x7f.1", "0177.0.0.1"), or None for a name. A host whose last label is a
    number but that is no valid address raises Refused (browsers refuse it too)."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last_label = parts[-1] if parts else ""
    ends_in_number = (last_label.isascii() and last_label.isdigit()) or _number(last_label) is not None
    if not ends_in_number:
        return None  # a name (its last label is not a number)
    values = [_number(p) for p in parts]
    if len(parts) > 4 or any(v is None for v in values):
        raise Refused(f"invalid host name {host!r}: numeric, but not an IPv4 address")
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise Refused(f"invalid host name {host!r}: an IPv4 number out of range")
    n = last
    for i, v in enumerate(head):
        n += v << (8 * (3 - i))
    return ipaddress.IPv4Address(n)


def _number(label: str) -> int | None:
    """A label read as inet_aton reads it: 0x hex, leading-0 octal, else decimal; or None."""
    try:
        if label[:2].lower() == "0x":
            return int(label[2:] or "0", 16) if all(c in "0123456789abcdefABCDEF" for c in label[2:]) else None
        if len(label) > 1 and label[0] == "0":
            return int(label, 8) if all(c in "01234567" for c in label) else None
        return int(label) if label.isascii() and label.isdigit() else None
    except ValueError:
        return None


def _norm_escapes(s: str) -> str:
    s = quote(s, safe="!#$%&'()*+,/:;=?@[]~")  # escape spaces and non-ASCII, keep escapes
    s = re.sub(r"%[0-9a-fA-F]{2}", lambda m: m.group(0).upper(), s)
    return _UNRESERVED.sub(lambda m: unquote(m.group(0)), s)


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    for seg in path.split("/")[1:] if path.startswith("/") else path.split("/"):
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    result = "/" + "/".join(out)
    if path.endswith(("/.", "/..")) and not result.endswith("/"):
        result += "/"
    return result


def origin(url: str) -> str:
    """"scheme://host[:port]" of a canonical URL: what robots.txt and the frontier are kept by."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def host_port(url: str) -> tuple[str, int]:
    """The host and port a canonical URL connects to."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]


def scheme_of(target: str) -> str:
    """The lower-cased scheme of what may be a URL ("" for a path); never raises."""
    try:
        return urlsplit(target).scheme.lower()
    except ValueError:  # "http://[::1": canonical_url refuses it with its reason later
        return target.partition(":")[0].lower()
