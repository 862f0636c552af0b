"""Throttle repeated invalid_client answers at the token endpoint, per IP and per client id.

Counters live in Django's default cache, which is shared by every process (a database
table by default, Redis when configured): a limit that each gunicorn worker counted on its
own would be multiplied by the number of workers.

Fixed windows (``window_seconds``): a counter per address and per client id per window.
Once a counter reaches its limit, every token request from that address, or for that
client id, gets 429 with ``Retry-After`` until the window ends, *even with the right
secret*, so a lucky guess cannot be told apart while blocked.

Only a wrong secret counts against a client id. A request from outside the client's IP
allowlist never reaches the secret check, so it cannot guess, and counting it would only
let anyone lock a partner out; it counts against the address like an unknown client id.

On the database cache ``incr`` is a read then a write, so concurrent failures may be
counted a little short; Redis counts exactly. Either way the order of magnitude holds.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache


@dataclass(frozen=True)
class Limits:
    window_seconds: int
    per_ip: int
    per_client: int


def limits() -> Limits:
    conf = getattr(settings, "API_TOKEN_THROTTLE", {})
    return Limits(
        window_seconds=int(conf.get("window_seconds", 300)),
        per_ip=int(conf.get("per_ip", 20)),
        per_client=int(conf.get("per_client", 10)),
    )


def _key(kind: str, value: str, window: int) -> str:
    # Client ids come from the request: hash them into a short, cache-safe key.
    digest = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]
    return f"api:token-fail:{kind}:{digest}:{window}"


def _window(now: float, conf: Limits) -> int:
    return int(now // conf.window_seconds)


def _retry_after(now: float, conf: Limits) -> int:
    end = (_window(now, conf) + 1) * conf.window_seconds
    return max(1, math.ceil(end - now))


def _keys(ip: str | None, client_id: str | None, window: int) -> dict[str, str]:
    keys = {"ip": _key("ip", ip or "unknown", window)}
    if client_id:
        keys["client"] = _key("client", client_id, window)
    return keys


def blocked(ip: str | None, client_id: str | None) -> int | None:
    """Seconds to wait when this address or client id is over its limit, else None."""
    conf, now = limits(), time.time()
    keys = _keys(ip, client_id, _window(now, conf))
    counts = cache.get_many(list(keys.values()))
    if counts.get(keys["ip"], 0) >= conf.per_ip:
        return _retry_after(now, conf)
    if "client" in keys and counts.get(keys["client"], 0) >= conf.per_client:
        return _retry_after(now, conf)
    return None


def record_failure(ip: str | None, client_id: str | None) -> None:
    """Count one invalid_client; ``client_id`` only when its secret was actually tried."""
    conf, now = limits(), time.time()
    for key in _keys(ip, client_id, _window(now, conf)).values():
        _increment(key, conf.window_seconds + 5)


def _increment(key: str, timeout: int) -> None:
    if cache.add(key, 1, timeout):
        return
    try:
        cache.incr(key)
    except ValueError:  # expired between add() and incr()
        cache.set(key, 1, timeout)
