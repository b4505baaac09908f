"""The SSRF guard: which addresses the crawler may dial (transport.py checks again at connect
time, and dials exactly the address checked).

Holds `address_problem` / `classify` (an explicit blocklist of the IANA special-purpose
networks, not ipaddress's is_private alone: Python before 3.11.10 / 3.12.4 has wrong ranges,
CVE-2024-4032; IPv4 addresses embedded in IPv6 ones, IPv4-mapped, IPv4-compatible, SIIT,
NAT64, 6to4 and Teredo, are judged by the IPv4 address), and `HostPolicy`: public
addresses, plus the networks listed with --allow-network, plus (with --allow-private-hosts)
loopback, private and the other non-public ranges, but never link-local addresses or cloud
metadata endpoints, which only an explicit --allow-network opens. A host name is refused
when ANY address it resolves to (A and AAAA) is refused; IPv4 shorthand (127.1, 2130706433,
0x7f.1, 0177.0.0.1) is read as the address it is (urls.ipv4_shorthand), never resolved.

It decides nothing about URLs (urls.py), robots.txt (robots.py) or retries (fetch.py).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from agent.inputs.text import Refused
from agent.web.urls import ipv4_shorthand

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list]  # (host, port) -> address strings (A and AAAA)


def _nets(*rows: tuple[str, str]) -> tuple[tuple[ipaddress._BaseNetwork, str], ...]:
    return tuple((ipaddress.ip_network(n), what) for n, what in rows)


# Never opened by --allow-private-hosts: the link-local ranges (where cloud metadata services
# live) and the metadata endpoints outside them. Only --allow-network opens them.
_LOCKED = _nets(
    ("169.254.0.0/16", "link-local"), ("100.100.100.200/32", "cloud metadata (Alibaba)"),
    ("fe80::/10", "link-local"), ("fd00:ec2::254/128", "cloud metadata (AWS)"),
)
_BLOCKED_V4 = _nets(
    ("0.0.0.0/32", "unspecified"), ("0.0.0.0/8", "this-network"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"), ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"), ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"), ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"), ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"), ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
)
_BLOCKED_V6 = _nets(
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"), ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignment"), ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"), ("5f00::/16", "SRv6 SID"), ("fc00::/7", "private (unique local)"),
    ("fec0::/10", "site-local (deprecated)"), ("ff00::/8", "multicast"),
)
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


# forms that reach exactly the IPv4 address they embed (Teredo and IPv4-compatible ones also
# fall under the blocklist below whatever they embed)
_STANDS_FOR = frozenset({"IPv4-mapped", "IPv4-translated", "NAT64", "6to4"})


class HostRefused(Refused):
    """The SSRF guard refused an address."""


def _embedded(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address stands for, with the form's name."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED:
        return [("IPv4-mapped", low32)]
    if ip in _SIIT:
        return [("IPv4-translated", low32)]
    if ip in _NAT64:
        return [("NAT64", low32)]
    if ip in _6TO4:
        return [("6to4", ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))]
    if ip in _TEREDO:
        server, client = ip.teredo
        return [("Teredo server", server), ("Teredo client", client)]
    if ip in ipaddress.ip_network("::/96") and int(ip) > 1:
        return [("IPv4-compatible", low32)]
    return []


def classify(ip: IP) -> tuple[Optional[str], bool]:
    """(why `ip` is not a public address to crawl, or None; whether only an explicit
    --allow-network may open it: link-local and cloud metadata addresses, in any form)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%")[0])
        embedded = _embedded(ip)
        for form, inner in embedded:
            problem, locked = classify(inner)
            if problem:
                return f"{form} {problem}", locked
        if embedded and embedded[0][0] in _STANDS_FOR:
            return None, False  # the IPv4 address it stands for is public
    for net, what in _LOCKED:
        if ip.version == net.version and ip in net:
            return f"{what} address {ip}", True
    for net, what in _BLOCKED_V4 if ip.version == 4 else _BLOCKED_V6:
        if ip in net:
            return f"{what} address {ip}", False
    if ip.is_private or ip.is_reserved or not ip.is_global:  # whatever the blocklist missed
        return f"non-public address {ip}", False
    return None, False


def address_problem(ip: IP) -> Optional[str]:
    """Why `ip` is not a public address to crawl, or None when it is."""
    return classify(ip)[0]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address (A and AAAA) the system resolves `host` to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [i[4][0] for i in infos]


@dataclass(frozen=True)
class HostPolicy:
    """Which addresses may be dialled: public ones, plus `allow_networks`, plus (with
    `allow_private`) the non-public ones other than link-local and metadata addresses."""

    allow_private: bool = False
    allow_networks: tuple = ()
    resolver: Resolver = field(default=system_resolver, compare=False)  # tests stub it

    @classmethod
    def build(cls, allow_private: bool = False, allow_networks: Iterable[str] = (),
              resolver: Resolver | None = None) -> "HostPolicy":
        """The policy for these options; ValueError names a network that is not CIDR."""
        try:
            nets = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        except ValueError as e:
            raise ValueError(f"bad network in allow_networks: {e}") from None
        return cls(allow_private, nets, resolver or system_resolver)

    def check_ip(self, ip: IP) -> Optional[str]:
        """Why the policy refuses `ip` (with the option that would open it), or None."""
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if any(a in n for n in self.allow_networks for a in {ip, plain} if n.version == a.version):
            return None
        problem, locked = classify(ip)
        if problem is None or (self.allow_private and not locked):
            return None
        if locked:
            return f"{problem} (never opened by --allow-private-hosts: pass --allow-network CIDR to crawl it)"
        return f"{problem} (pass --allow-private-hosts or --allow-network CIDR to crawl it)"

    def resolve(self, host: str, port: int) -> list[IP]:
        """Every address `host` stands for, after checking each (refused if ANY is refused):
        raises HostRefused, or Refused when the host does not resolve."""
        host = host.strip("[]")
        ips = _literal(host)
        if ips is None:
            try:
                found = self.resolver(host, port)
            except (OSError, UnicodeError) as e:  # socket.gaierror is an OSError
                raise Refused(f"cannot resolve host {host!r}: {e}") from None
            try:
                ips = list(dict.fromkeys(ipaddress.ip_address(str(a).split("%")[0]) for a in found))
            except ValueError as e:
                raise Refused(f"cannot resolve host {host!r}: {e}") from None
            if not ips:
                raise Refused(f"cannot resolve host {host!r}: no address")
        for ip in ips:
            problem = self.check_ip(ip)
            if problem:
                via = "" if str(ip) == host else f" (it resolves to {', '.join(map(str, ips))})"
                raise HostRefused(f"refused by the SSRF guard: {host}{via} is a {problem}")
        return ips


def _literal(host: str) -> list[IP] | None:
    """[the address] when `host` is an address (IPv4 shorthand included), else None."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        v4 = ipv4_shorthand(host)
    except Refused as r:
        raise HostRefused(f"refused by the SSRF guard: {r.reason}") from None
    return None if v4 is None else [v4]
