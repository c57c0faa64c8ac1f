"""Which subscriber endpoints the gateway will call (no server-side request forgery).

An endpoint must be `https`, and every address its host resolves to must be public, unless the
allow-list (GATEWAY_SUBSCRIPTION_ALLOWLIST: comma-separated host names, addresses or networks) names
the host or covers the address. Resolution is the caller's I/O; this module only decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str]
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        hosts: set[str] = set()
        networks: list[Network] = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        forms: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1
        return any(form in network for form in forms for network in self.networks)


def endpoint_host(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an endpoint; ValueError when it is not an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Endpoint {url!r} is not an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError("Endpoint must not carry credentials in the URL (use channel.header)")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def endpoint_problem(url: str, addresses: Iterable[str], allowlist: Allowlist) -> str | None:
    """Why the gateway refuses to call `url` (resolved to `addresses`), or None when it may."""
    try:
        scheme, host, _ = endpoint_host(url)
    except ValueError as exc:
        return str(exc)
    host_allowed = allowlist.allows_host(host)
    resolved = list(addresses)
    if not resolved:
        return f"Endpoint host {host!r} does not resolve"
    all_allowed = host_allowed or all(allowlist.allows_address(a) for a in resolved)
    if scheme != "https" and not all_allowed:
        return "Endpoint must use https (plain http only for hosts in GATEWAY_SUBSCRIPTION_ALLOWLIST)"
    for address in resolved:
        if not is_public(address) and not (host_allowed or allowlist.allows_address(address)):
            return (
                f"Endpoint host {host!r} resolves to a loopback, private or reserved address; "
                "allow it with GATEWAY_SUBSCRIPTION_ALLOWLIST"
            )
    return None
