"""Which subscriber endpoints the gateway will call (no server-side request forgery).

An endpoint must be `https`, and every address its host resolves to must be public, unless the
allow-list (GATEWAY_SUBSCRIPTION_ALLOWLIST) names the host or covers the address. Allow-list entries are
comma-separated host names, addresses or networks; a host or an address may carry a port
(`hooks.internal:8443`, `10.0.0.5:8080`, `[fd00::1]:9443`) and then allows only that port, while an
entry without one (and every network, `10.0.0.0/8`) allows any port.

"Public" is decided here, not by the Python version's `ipaddress.is_global` alone: IPv6 forms that carry
an IPv4 address (IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4) are judged by that IPv4
address, because that is where a connection to them ends up; everything else in IPv6 must be global
unicast (2000::/3) outside the special-purpose ranges listed below.

Resolution is the caller's I/O; this module only decides. The caller must connect to the addresses it
checked (gateway.service.subscriptions.endpoint_transport does), or a second DNS answer could differ.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

SETTING = "GATEWAY_SUBSCRIPTION_ALLOWLIST"

# IANA IPv4 special-purpose registry (and multicast, reserved): never an endpoint unless allow-listed.
# Some of these Python's `is_global` still calls global (192.0.0.0/24 members, 192.88.99.0/24).
_NOT_PUBLIC_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # this network
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local (cloud metadata services)
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
# Special-purpose ranges inside 2000::/3; everything outside it (::1, fc00::/7, fe80::/10, fec0::/10,
# ff00::/8, 100::/64, 5f00::/16, 64:ff9b:1::/48 ...) is refused by not being global unicast at all.
_NOT_PUBLIC_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID, ...
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # ::ffff:a.b.c.d
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # ::ffff:0:a.b.c.d (SIIT)
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # ::a.b.c.d (deprecated; includes :: and ::1)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # 6to4: bits 16-47


class AllowlistError(ValueError):
    """A `GATEWAY_SUBSCRIPTION_ALLOWLIST` entry that cannot be read: the start stops, naming it."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it is one of the forms that carry one."""
    if ip in _MAPPED or ip in _TRANSLATED or ip in _COMPATIBLE or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


def _forms(address: str) -> list[Address]:
    """The address, and the IPv4 address it carries if it is an IPv6 form of one."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        carried = embedded_ipv4(ip)
        if carried is not None:
            return [ip, carried]
    return [ip]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        carried = embedded_ipv4(ip)
        if carried is not None:
            return _public_v4(carried)
        return (
            ip in _GLOBAL_UNICAST_V6
            and not any(ip in network for network in _NOT_PUBLIC_V6)
            and ip.is_global
            and not ip.is_multicast
        )
    return _public_v4(ip)


def _public_v4(ip: ipaddress.IPv4Address) -> bool:
    return not any(ip in network for network in _NOT_PUBLIC_V4) and ip.is_global and not ip.is_multicast


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise AllowlistError(f"{SETTING}: {entry!r} has no valid port (1-65535)")
    return int(text)


def _parse_entry(entry: str) -> tuple[str | Network, int | None]:
    """One allow-list entry: a host name or a network (an address is a /32 or /128), and its port."""
    try:
        return ipaddress.ip_network(entry, strict=False), None  # addresses and networks, no port
    except ValueError:
        pass
    if entry.startswith("["):  # [v6] or [v6]:port
        inside, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise AllowlistError(f"{SETTING}: {entry!r} is not [IPv6] or [IPv6]:port")
        try:
            address = ipaddress.IPv6Address(inside)
        except ValueError as exc:
            raise AllowlistError(f"{SETTING}: {entry!r} does not bracket an IPv6 address") from exc
        return ipaddress.IPv6Network(address), _port(rest[1:], entry) if rest else None
    name, colon, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
    if colon and ":" in name:
        raise AllowlistError(f"{SETTING}: {entry!r}: write an IPv6 address with a port as [address]:port")
    if "/" in name:
        raise AllowlistError(f"{SETTING}: {entry!r}: networks allow every port and take none")
    if not name:
        raise AllowlistError(f"{SETTING}: {entry!r} names no host")
    try:
        return ipaddress.ip_network(name), _port(port, entry) if colon else None
    except ValueError:
        return name.lower().rstrip("."), _port(port, entry) if colon else None


@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks that may be called although not public or not https; `hosts` and `networks`
    allow any port, `host_ports` and `network_ports` only the port they name."""

    hosts: frozenset[str]
    networks: tuple[Network, ...]
    host_ports: frozenset[tuple[str, int]] = frozenset()
    network_ports: tuple[tuple[Network, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """The setting's value; ValueError (naming the setting) for an entry that cannot be read."""
        hosts: set[str] = set()
        networks: list[Network] = []
        host_ports: set[tuple[str, int]] = set()
        network_ports: list[tuple[Network, int]] = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            target, port = _parse_entry(item)
            if isinstance(target, str):
                if port is None:
                    hosts.add(target)
                else:
                    host_ports.add((target, port))
            elif port is None:
                networks.append(target)
            else:
                network_ports.append((target, port))
        return cls(frozenset(hosts), tuple(networks), frozenset(host_ports), tuple(network_ports))

    def allows_host(self, host: str, port: int | None = None) -> bool:
        """Named with any port, or with this one (without a port, only entries that allow any)."""
        name = host.lower().rstrip(".")
        return name in self.hosts or (port is not None and (name, port) in self.host_ports)

    def allows_address(self, address: str, port: int | None = None) -> bool:
        """Covered by a network (any port) or by an address entry with this port; an IPv6 form of an
        IPv4 address (::ffff:10.0.0.5, 64:ff9b::a00:5, 2002:a00:5::) counts as that IPv4 address."""
        forms = _forms(address)
        if any(form in network for form in forms for network in self.networks):
            return True
        return port is not None and any(
            form in network for form in forms for network, allowed in self.network_ports if allowed == port
        )


def endpoint_host(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an endpoint; ValueError when it is not an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Endpoint {url!r} is not an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError("Endpoint must not carry credentials in the URL (use channel.header)")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def endpoint_problem(url: str, addresses: Iterable[str], allowlist: Allowlist) -> str | None:
    """Why the gateway refuses to call `url` (resolved to `addresses`), or None when it may."""
    try:
        scheme, host, port = endpoint_host(url)
    except ValueError as exc:
        return str(exc)
    host_allowed = allowlist.allows_host(host, port)
    resolved = list(addresses)
    if not resolved:
        return f"Endpoint host {host!r} does not resolve"
    all_allowed = host_allowed or all(allowlist.allows_address(a, port) for a in resolved)
    if scheme != "https" and not all_allowed:
        return f"Endpoint must use https (plain http only for hosts in {SETTING})"
    for address in resolved:
        if not is_public(address) and not (host_allowed or allowlist.allows_address(address, port)):
            return (
                f"Endpoint host {host!r} resolves to a loopback, private or reserved address; "
                f"allow it with {SETTING}"
            )
    return None
