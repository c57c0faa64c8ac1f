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


# --- IPv6 forms that carry an IPv4 address, and special-purpose ranges ---------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("64:ff9b::7f00:1", "NAT64 (well-known prefix) of 127.0.0.1"),
        ("64:ff9b::a00:5", "NAT64 of 10.0.0.5"),
        ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"),
        ("64:ff9b::c0a8:101", "NAT64 of 192.168.1.1"),
        ("64:ff9b:1::a00:1", "local-use NAT64 prefix (RFC 8215): never global"),
        ("64:ff9b:1:2:3::5db8:d822", "local-use NAT64 prefix, whatever it embeds"),
        ("2002:7f00:1::1", "6to4 of 127.0.0.1"),
        ("2002:a00:5::", "6to4 of 10.0.0.5"),
        ("2002:a9fe:a9fe::1", "6to4 of 169.254.169.254"),
        ("2002:c0a8:101::1", "6to4 of 192.168.1.1"),
        ("::7f00:1", "IPv4-compatible 127.0.0.1"),
        ("::a00:5", "IPv4-compatible 10.0.0.5"),
        ("::a9fe:a9fe", "IPv4-compatible 169.254.169.254"),
        ("::ffff:a9fe:a9fe", "IPv4-mapped 169.254.169.254"),
        ("::ffff:c0a8:101", "IPv4-mapped 192.168.1.1"),
        ("::ffff:0:a00:5", "IPv4-translated (SIIT) 10.0.0.5"),
        ("::", "unspecified"),
        ("fec0::1", "site-local (deprecated)"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "global-scope multicast"),
        ("100::1", "discard-only"),
        ("2001::1", "Teredo"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation (RFC 9637)"),
        ("5f00::1", "SRv6 SIDs"),
        ("4000::1", "outside global unicast 2000::/3"),
        ("192.0.0.8", "IETF protocol assignments"),
        ("192.88.99.1", "6to4 relay anycast"),
        ("198.18.0.1", "benchmarking"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.7", "documentation"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("0.1.2.3", "this network"),
    ],
)
def test_special_purpose_and_embedded_ipv4_forms_are_not_public(address: str, why: str) -> None:
    assert is_public(address) is False, why
    problem = endpoint_problem("https://hooks.example.org/x", [address], NOTHING)
    assert problem is not None and "loopback, private or reserved" in problem


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::5db8:d822",  # NAT64 of a public address
        "2002:5db8:d822::1",  # 6to4 of a public address
        "::ffff:5db8:d822",
        "2001:4860:4860::8888",
        "2a00:1450:4001:80b::200e",
    ],
)
def test_public_addresses_in_any_form_stay_public(address: str) -> None:
    assert is_public(address) is True


@pytest.mark.parametrize(
    "address", ["64:ff9b::a00:5", "2002:a00:5::1", "::a00:5", "::ffff:a00:5", "::ffff:0:a00:5"]
)
def test_an_allowed_ipv4_network_covers_its_ipv6_forms(address: str) -> None:
    allowlist = Allowlist.parse("10.0.0.0/8")
    assert allowlist.allows_address(address)
    assert endpoint_problem("https://hooks.example.org/x", [address], allowlist) is None
    assert not Allowlist.parse("192.168.0.0/16").allows_address(address)


# --- allow-list entries with ports ---------------------------------------------------------------------


def test_allowlist_entries_may_name_a_port() -> None:
    allowlist = Allowlist.parse(
        "hooks.internal:8443, [fd00::1]:9443, 10.0.0.5:8080, Other.Internal., 192.168.0.0/16, ::1"
    )
    assert allowlist.allows_host("hooks.internal", 8443)
    assert allowlist.allows_host("HOOKS.internal.", 8443)
    assert not allowlist.allows_host("hooks.internal", 443)
    assert not allowlist.allows_host("hooks.internal")  # no port given: only port-free entries count
    assert allowlist.allows_host("other.internal", 1) and allowlist.allows_host("other.internal", 65535)
    assert allowlist.allows_address("fd00::1", 9443)
    assert not allowlist.allows_address("fd00::1", 443)
    assert allowlist.allows_address("10.0.0.5", 8080)
    assert not allowlist.allows_address("10.0.0.5", 80)
    assert not allowlist.allows_address("10.0.0.6", 8080)
    assert allowlist.allows_address("::ffff:10.0.0.5", 8080)  # the same address written as IPv6
    assert allowlist.allows_address("192.168.44.1", 1) and allowlist.allows_address("192.168.44.1", 8443)
    assert allowlist.allows_address("::1", 22)


@pytest.mark.parametrize(
    ("url", "addresses", "entry", "allowed"),
    [
        ("http://hooks.internal:8443/x", ["10.1.1.1"], "hooks.internal:8443", True),
        ("http://hooks.internal:8444/x", ["10.1.1.1"], "hooks.internal:8443", False),
        ("http://hooks.internal/x", ["10.1.1.1"], "hooks.internal:8443", False),
        ("http://hooks.internal/x", ["10.1.1.1"], "hooks.internal:80", True),  # the scheme's default port
        ("https://hooks.internal/x", ["10.1.1.1"], "hooks.internal:443", True),
        ("https://hooks.internal:8443/x", ["10.1.1.1"], "hooks.internal", True),  # no port: any port
        ("http://hooks.internal:8080/x", ["10.0.0.5"], "10.0.0.5:8080", True),
        ("http://hooks.internal:8081/x", ["10.0.0.5"], "10.0.0.5:8080", False),
        ("http://[fd00::1]:9443/x", ["fd00::1"], "[fd00::1]:9443", True),
        ("http://[fd00::1]:9444/x", ["fd00::1"], "[fd00::1]:9443", False),
        ("http://hooks.internal:9000/x", ["10.9.9.9"], "10.0.0.0/8", True),  # networks: any port
        ("https://hooks.example.org:8443/x", ["127.0.0.1"], "127.0.0.1:9443", False),
    ],
)
def test_a_port_in_an_allowlist_entry_allows_only_that_port(
    url: str, addresses: list[str], entry: str, allowed: bool
) -> None:
    problem = endpoint_problem(url, addresses, Allowlist.parse(entry))
    assert (problem is None) is allowed, problem


@pytest.mark.parametrize(
    "entry",
    [
        "hooks.internal:abc",
        "hooks.internal:0",
        "hooks.internal:65536",
        "hooks.internal:",
        ":8443",
        "10.0.0.0/8:443",
        "[fd00::1",
        "[fd00::1]8443",
        "[hooks.internal]:8443",
        "fd00::1:x:y",
    ],
)
def test_malformed_allowlist_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="GATEWAY_SUBSCRIPTION_ALLOWLIST"):
        Allowlist.parse(f"ok.internal, {entry}")
