"""The SSRF guard's decisions, made before any connection: forbidden addresses are never
dialled (a stub resolver stands in for DNS, and socket.create_connection fails the test if
it is ever called for them)."""
from __future__ import annotations

import ipaddress
import socket

import httpcore
import pytest

from agent.crawler import Crawler
from agent.web.ssrf import HostPolicy, HostRefused, address_problem
from agent.inputs.text import Refused
from agent.web.transport import GuardedBackend
from agent.web.urls import canonical_url, ipv4_shorthand
from tests.agent.test_crawler import urls


@pytest.fixture
def no_connect(monkeypatch):
    """Fail the test if anything dials out."""
    dialled = []

    def refuse(address, *a, **kw):
        dialled.append(address)
        raise AssertionError(f"dialled {address}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return dialled


def stub(table: dict[str, list[str]]):
    """A resolver answering from `table` (A and AAAA records together)."""
    def resolve(host, port):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]
    return resolve


@pytest.mark.parametrize("ip,problem", [
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"), ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::127.0.0.1", "IPv4-compatible loopback"), ("::10.0.0.1", "IPv4-compatible private"),
    ("::ffff:0:7f00:1", "IPv4-translated loopback"),
    ("2002:7f00:1::1", "6to4 loopback"), ("2002:c0a8:101::", "6to4 private"),
    ("2002:a9fe:a9fe::1", "6to4 link-local"),
    # Teredo: server 65.54.227.120, client obfuscated (XOR 0xffffffff) 127.0.0.1 / 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo client loopback"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo client private"),
    ("2001:0:0a00:0001:8000:63bf:3fff:fdd2", "Teredo server private"),
    ("64:ff9b::7f00:1", "NAT64 loopback"), ("64:ff9b:1::1", "local-use NAT64"),
    ("192.0.2.1", "documentation"), ("198.18.0.1", "benchmarking"), ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"), ("0.1.2.3", "this-network"), ("2001:db8::1", "documentation"),
    ("fec0::1", "site-local"), ("ff02::1", "multicast"), ("100::1", "discard"),
    ("fd00:ec2::254", "cloud metadata"), ("100.100.100.200", "cloud metadata"),
])
def test_embedded_and_special_purpose_forms_are_refused(ip, problem):
    assert problem in address_problem(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["2002:808:808::1", "64:ff9b::808:808", "::ffff:8.8.8.8"])
def test_embedded_public_addresses_pass(ip):
    assert address_problem(ipaddress.ip_address(ip)) is None


@pytest.mark.parametrize("host,ip", [("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
                                     ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
                                     ("0x7f000001", "127.0.0.1"), ("10.1", "10.0.0.1"),
                                     ("169.254.43518", "169.254.169.254"), ("127.0.0.1.", "127.0.0.1")])
def test_ipv4_shorthand_is_the_address_it_stands_for(host, ip, no_connect):
    assert ipv4_shorthand(host) == ipaddress.IPv4Address(ip)
    assert canonical_url(f"http://{host}/x") == f"http://{ip}/x"
    resolved = []
    policy = HostPolicy.build(resolver=lambda h, p: resolved.append(h) or ["93.184.216.34"])
    with pytest.raises(HostRefused, match="SSRF guard"):
        policy.resolve(host, 80)  # as the transport gets it, without canonical_url
    assert resolved == []  # read as an address, never looked up as a name


@pytest.mark.parametrize("host", ["1.2.3.4.5", "0x7g.1", "256.1.1.1", "1.16777216", "example.09"])
def test_numeric_hosts_that_are_no_address_are_refused(host):
    with pytest.raises(Refused):
        canonical_url(f"http://{host}/")


@pytest.mark.parametrize("host", ["example.com", "docs.python.org", "a1.example"])
def test_names_are_not_shorthand(host):
    assert ipv4_shorthand(host) is None


@pytest.mark.parametrize("answers", [["93.184.216.34", "127.0.0.1"], ["93.184.216.34", "::1"],
                                     ["2606:2800:220:1::1", "fe80::1%eth0"], ["10.0.0.1"]])
def test_a_name_is_refused_if_any_address_it_resolves_to_is(answers, no_connect):
    policy = HostPolicy.build(resolver=stub({"mixed.example": answers}))
    with pytest.raises(HostRefused, match="mixed.example .*resolves to"):
        policy.resolve("mixed.example", 80)
    with pytest.raises(httpcore.ConnectError, match="SSRF guard"):
        GuardedBackend(policy).connect_tcp("mixed.example", 80, timeout=1)
    assert no_connect == []


def test_an_unresolvable_name_is_refused_not_crashed():
    with pytest.raises(Refused, match="cannot resolve"):
        HostPolicy.build(resolver=stub({})).resolve("nowhere.example", 80)


def test_dns_rebinding_is_refused_at_connect_time(store, no_connect):
    """The name passes the fetcher's check, then resolves to loopback when the transport
    connects: the transport checks again and dials nothing."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
    with Crawler(store, delay=0, retries=0, resolver=lambda h, p: next(answers)) as c:
        report = c.crawl("http://rebind.example/")
    assert no_connect == []
    assert report.counts["disallowed"] == 1  # robots.txt could not be fetched: site disallowed
    assert "SSRF guard" in urls(store)["http://rebind.example/"][2]


def test_the_transport_dials_exactly_the_checked_address(site):
    """A name resolving to the allowed test server is dialled by that address."""
    import httpx

    from agent.web.transport import guarded_transport

    policy = HostPolicy.build(allow_networks=["127.0.0.1/32"], resolver=stub({"test.example": ["127.0.0.1"]}))
    with httpx.Client(transport=guarded_transport(policy)) as client:
        r = client.get(f"http://test.example:{site.port}/robots.txt")
    assert r.status_code == 404 and site.count("/robots.txt") == 1


# --- --allow-private-hosts never opens link-local or metadata addresses ------------------

LOCKED = ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "100.100.100.200",
          "::ffff:169.254.169.254", "2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe"]


@pytest.mark.parametrize("ip", LOCKED)
def test_private_hosts_allowed_still_refuses_link_local_and_metadata(ip):
    policy = HostPolicy.build(allow_private=True)
    assert "--allow-network" in policy.check_ip(ipaddress.ip_address(ip))
    assert HostPolicy.build(allow_private=True, allow_networks=[ip]).check_ip(ipaddress.ip_address(ip)) is None


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.1", "192.168.1.1", "::1", "fd00::1"])
def test_private_hosts_allowed_opens_the_private_ranges(ip):
    assert HostPolicy.build(allow_private=True).check_ip(ipaddress.ip_address(ip)) is None
    assert HostPolicy.build().check_ip(ipaddress.ip_address(ip)) is not None


def test_metadata_names_are_refused_by_the_address_they_resolve_to(no_connect):
    policy = HostPolicy.build(allow_private=True,
                              resolver=stub({"metadata.google.internal": ["169.254.169.254"]}))
    with pytest.raises(HostRefused, match="link-local"):
        policy.resolve("metadata.google.internal", 80)
    with pytest.raises(httpcore.ConnectError, match="SSRF guard"):
        GuardedBackend(policy).connect_tcp("metadata.google.internal", 80, timeout=1)
    assert no_connect == []


def test_a_robots_txt_redirect_to_the_metadata_endpoint_is_not_followed(store, site, monkeypatch):
    from tests.agent.helpers import Route, page

    dialled = []
    connect = socket.create_connection

    def record(address, *a, **kw):
        dialled.append(address[0])
        if not address[0].startswith("127."):
            raise AssertionError(f"dialled {address}")
        return connect(address, *a, **kw)

    monkeypatch.setattr(socket, "create_connection", record)
    site.routes["/robots.txt"] = Route(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
    site.html("/", page("Home", "home words about herons"))
    with Crawler(store, delay=0, retries=0, allow_private_hosts=True) as c:
        c.crawl(site.base + "/")
    status, _, reason = urls(store)[site.base + "/"]
    assert status == "disallowed" and "robots.txt unavailable" in reason and "link-local" in reason
    assert set(dialled) == {"127.0.0.1"} and site.count("/") == 0


def test_a_bad_allow_network_is_a_one_line_error_before_the_agent_starts(tmp_path):
    from agent.daemon import Agent
    from agent.settings import AgentConfig, TrainerSettings
    from engine.errors import CllmError

    cfg = AgentConfig(tmp_path / "data", TrainerSettings(preset="tiny", workers=1),
                      crawl=("http://example.org/",), allow_networks=("10.0.0.300/8",))
    with pytest.raises(CllmError, match="bad network") as e:
        Agent(cfg).run()
    assert "--allow-network" in e.value.one_line()
    assert not (tmp_path / "data").exists()  # nothing was started or created
