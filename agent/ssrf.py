"""The SSRF guard: which addresses the crawler may dial, checked again at connect time.

Holds `address_problem` (loopback, private, link-local, CGNAT, multicast, reserved, and the
IPv4-mapped, NAT64 and 6to4 forms of those are not public), `HostPolicy` (public addresses,
plus listed networks, or everything when private hosts are allowed), and
`guarded_transport`, an httpx transport whose every connection resolves the host, checks
each address, and dials exactly the address it checked, so DNS rebinding between the check
and the connection does not get through.

It decides nothing about URLs (urls.py), robots.txt (robots.py) or retries (fetch.py).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable

from agent.text import Refused

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class HostRefused(Refused):
    """The SSRF guard refused an address."""


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` is not a public address to crawl, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = address_problem(ip.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if ip in _NAT64:
            inner = address_problem(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return f"NAT64 {inner}" if inner else None
        if ip.sixtofour is not None and address_problem(ip.sixtofour):
            return "6to4 address of a non-public IPv4 address"
    if ip.is_loopback:
        return f"loopback address {ip}"
    if ip.is_link_local:
        return f"link-local address {ip}"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return f"carrier-grade NAT address {ip}"
    if ip.is_unspecified:
        return f"unspecified address {ip}"
    if ip.is_multicast:
        return f"multicast address {ip}"
    if ip.is_private:
        return f"private address {ip}"
    if ip.is_reserved or not ip.is_global:
        return f"non-public address {ip}"
    return None


@dataclass(frozen=True)
class HostPolicy:
    """Which addresses may be dialled: public ones, plus `allow_networks`, or all."""

    allow_private: bool = False
    allow_networks: tuple = ()

    @classmethod
    def build(cls, allow_private: bool = False, allow_networks: Iterable[str] = ()) -> "HostPolicy":
        """The policy for these options; ValueError names a network that is not CIDR."""
        try:
            nets = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        except ValueError as e:
            raise ValueError(f"bad network in allow_networks: {e}") from None
        return cls(allow_private, nets)

    def check_ip(self, ip) -> str | None:
        if self.allow_private or any(ip in n for n in self.allow_networks if n.version == ip.version):
            return None
        return address_problem(ip)

    def resolve(self, host: str, port: int) -> list:
        """Every address `host` resolves to, after checking each; raises HostRefused, or
        Refused when the host does not resolve."""
        host = host.strip("[]")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise Refused(f"cannot resolve host {host!r}: {e}") from None
            ips = list(dict.fromkeys(ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos))
        for ip in ips:
            problem = self.check_ip(ip)
            if problem:
                raise HostRefused(f"refused by the SSRF guard: {host} is a {problem} "
                                  "(pass --allow-private-hosts to crawl it)")
        return ips
