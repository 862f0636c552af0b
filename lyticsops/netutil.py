"""IP allowlists: parsing CIDR lists and matching client addresses."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from django.core.exceptions import ValidationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidrs(value: str | Iterable[str] | None) -> list[str]:
    """Normalise a CIDR list given as text (commas/whitespace/newlines) or as a list.

    Raises ValidationError naming every bad entry. A bare address becomes a /32 or /128;
    host bits set (``10.0.0.1/8``) are refused, since they usually hide a typo.
    """
    if value is None:
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    networks: list[str] = []
    bad: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError:
            bad.append(text)
            continue
        if str(network) not in networks:
            networks.append(str(network))
    if bad:
        raise ValidationError(
            "Not an IP address or CIDR network (host bits must be zero, e.g. 203.0.113.0/24): "
            + ", ".join(bad),
            code="invalid_cidr",
        )
    return networks


def ip_allowed(address: str | None, cidrs: Iterable[str]) -> bool:
    """True when ``address`` falls in one of ``cidrs``; an empty list allows every address."""
    cidrs = list(cidrs)
    if not cidrs:
        return True
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:192.0.2.1 from a dual-stack socket
    return any(ip in ipaddress.ip_network(cidr) for cidr in cidrs)


def non_public_addresses(host: str, port: int = 22) -> list[str]:
    """The addresses ``host`` resolves to that are not public (loopback, private,
    link-local, reserved...). Empty when every address is public or the name does not
    resolve here (then it cannot be judged; the connection will fail or be judged later).
    """
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    found = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global and str(ip) not in found:
            found.append(str(ip))
    return found
