"""Which subscriber endpoints the gateway calls: https to public addresses, or what the allow-list names."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.routing.endpoints import Allowlist, endpoint_host, endpoint_problem, is_public

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
NOTHING = Allowlist.parse("")


def test_allowlist_parse() -> None:
    allowlist = Allowlist.parse(" Receiver.Internal. , 10.0.0.0/8,192.168.1.7, ::1 ,fd00::/8,, 10.1.2.3/16 ")
    assert allowlist.hosts == frozenset({"receiver.internal"})
    assert allowlist.networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("10.1.0.0/16"),  # host bits are dropped, not an error
    )
    assert allowlist.allows_host("RECEIVER.internal.")
    assert not allowlist.allows_host("other.internal")
    assert allowlist.allows_address("10.200.3.4")
    assert allowlist.allows_address("192.168.1.7")
    assert not allowlist.allows_address("192.168.1.8")
    assert allowlist.allows_address("::1")
    assert allowlist.allows_address("fd12::1")
    assert not allowlist.allows_address("127.0.0.1")


def test_empty_allowlist() -> None:
    assert NOTHING.hosts == frozenset()
    assert NOTHING.networks == ()
    assert not NOTHING.allows_host("localhost")
    assert not NOTHING.allows_address("127.0.0.1")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Example.org/hook", ("https", "example.org", 443)),
        ("http://example.org/hook", ("http", "example.org", 80)),
        ("https://example.org:8443/hook", ("https", "example.org", 8443)),
        ("https://[::1]:9000/x", ("https", "::1", 9000)),
    ],
)
def test_endpoint_host(url: str, expected: tuple[str, str, int]) -> None:
    assert endpoint_host(url) == expected


@pytest.mark.parametrize(
    ("address", "public"),
    [
        (PUBLIC_V4, True),
        (PUBLIC_V6, True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),  # link-local (cloud metadata)
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        (f"::ffff:{PUBLIC_V4}", True),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_https_to_a_public_address_is_fine() -> None:
    assert endpoint_problem("https://receiver.example.org/hook", [PUBLIC_V4], NOTHING) is None
    assert endpoint_problem("https://receiver.example.org/hook", [PUBLIC_V4, PUBLIC_V6], NOTHING) is None


def test_plain_http_to_a_public_address_is_refused() -> None:
    problem = endpoint_problem("http://receiver.example.org/hook", [PUBLIC_V4], NOTHING)
    assert problem is not None and "https" in problem


def test_plain_http_is_fine_for_an_allowed_host_or_network() -> None:
    assert endpoint_problem("http://hooks.local/x", ["10.0.0.5"], Allowlist.parse("hooks.local")) is None
    assert endpoint_problem("http://hooks.local/x", ["10.0.0.5"], Allowlist.parse("10.0.0.0/24")) is None
    # the network must cover every address the host resolves to
    problem = endpoint_problem(
        "http://hooks.local/x", ["10.0.0.5", "10.0.1.5"], Allowlist.parse("10.0.0.0/24")
    )
    assert problem is not None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.20.1.1",
        "192.168.10.10",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    problem = endpoint_problem("https://hooks.example.org/x", [address], NOTHING)
    assert problem is not None and "loopback, private or reserved" in problem


def test_one_private_address_among_public_ones_is_refused() -> None:
    problem = endpoint_problem("https://hooks.example.org/x", [PUBLIC_V4, "10.0.0.1"], NOTHING)
    assert problem is not None and "GATEWAY_SUBSCRIPTION_ALLOWLIST" in problem


@pytest.mark.parametrize(
    ("address", "allowlist"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.0.0.1", "127.0.0.1"),
        ("10.0.0.5", "10.0.0.0/8"),
        ("169.254.169.254", "169.254.0.0/16"),
        ("::1", "::1"),
        ("fe80::1", "fe80::/10"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("::ffff:127.0.0.1", "::ffff:0:0/96"),
        ("127.0.0.1", "hooks.example.org"),
        ("::ffff:127.0.0.1", "hooks.example.org"),
        ("::1", "HOOKS.example.org."),
    ],
)
def test_non_public_addresses_allowed_by_network_or_host(address: str, allowlist: str) -> None:
    assert endpoint_problem("https://hooks.example.org/x", [address], Allowlist.parse(allowlist)) is None


def test_allowlisting_another_network_does_not_help() -> None:
    problem = endpoint_problem(
        "https://hooks.example.org/x", ["127.0.0.1"], Allowlist.parse("10.0.0.0/8,other")
    )
    assert problem is not None


def test_ipv4_network_covers_its_ipv4_mapped_addresses() -> None:
    allowlist = Allowlist.parse("127.0.0.0/8")
    assert allowlist.allows_address("::ffff:127.0.0.1")
    assert endpoint_problem("https://hooks.example.org/x", ["::ffff:127.0.0.1"], allowlist) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@hooks.example.org/x",
        "https://user@hooks.example.org/x",
        "https://:pass@hooks.example.org/x",
    ],
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    problem = endpoint_problem(url, [PUBLIC_V4], Allowlist.parse("hooks.example.org"))
    assert problem is not None and "credentials" in problem


def test_unresolvable_host_is_refused() -> None:
    problem = endpoint_problem("https://nowhere.example.org/x", [], NOTHING)
    assert problem is not None and "does not resolve" in problem and "nowhere.example.org" in problem
    # even when allow-listed: there is nothing to call
    assert endpoint_problem("https://nowhere.example.org/x", [], Allowlist.parse("nowhere.example.org"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.org/x",
        "file:///etc/passwd",
        "gopher://hooks.example.org/",
        "ws://hooks.example.org/x",
        "hooks.example.org/x",
        "/relative/path",
        "https:///no-host",
        "",
    ],
)
def test_non_http_urls_are_refused(url: str) -> None:
    problem = endpoint_problem(url, [PUBLIC_V4], Allowlist.parse("hooks.example.org"))
    assert problem is not None and "absolute http(s) URL" in problem
    with pytest.raises(ValueError):
        endpoint_host(url)
