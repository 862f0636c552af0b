"""The address a request comes from, as far as we can trust it.

``REMOTE_ADDR`` is the peer of the TCP connection. ``X-Forwarded-For`` is only a claim
that anyone can send, so it is read only when the peer is one of our own reverse proxies
(``TRUSTED_PROXIES``), and then from the right: each trusted proxy appends the address it
saw, so the first address from the right that is *not* one of our proxies is the client.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

from lyticsops.netutil import Network, parse_cidrs


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in parse_cidrs(list(cidrs)))


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def _trusted(ip, proxies: tuple[Network, ...]) -> bool:
    return any(ip in net for net in proxies)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, or None when it cannot be known (fail closed on allowlists)."""
    peer = _parse(request.META.get("REMOTE_ADDR", ""))
    if peer is None:
        return None
    proxies = _networks(tuple(getattr(settings, "TRUSTED_PROXIES", ())))
    if not proxies or not _trusted(peer, proxies):
        return str(peer)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop for hop in forwarded.split(",") if hop.strip()]
    address = peer
    for hop in reversed(hops):
        ip = _parse(hop)
        if ip is None:
            return None  # a mangled chain: we cannot tell who the client is
        address = ip
        if not _trusted(ip, proxies):
            return str(ip)
    # Every hop is one of our proxies (or there was no header): the leftmost is the client.
    return str(address)
