"""Settings of the managed SFTP server, each with a default.

Only MANAGED_SFTP_HOST/PORT/ROOT/HOST_KEY live in `lyticsops/settings.py`; everything else
here is optional and read with `getattr(settings, NAME, default)`, so a deployment can add
any of these names to the settings (or tests can override them) without touching code:

=====================================  ======================================================
MANAGED_SFTP_BAN_THRESHOLD             failed logins from one IP within the window before
                                       the IP is banned (5)
MANAGED_SFTP_BAN_USERNAME_THRESHOLD    failed logins for one username within the window
                                       after which every further failing IP is banned (20)
MANAGED_SFTP_BAN_WINDOW                the counting window, seconds (600)
MANAGED_SFTP_BAN_DURATION              first ban, seconds (600); each re-ban doubles it ...
MANAGED_SFTP_BAN_MAX_DURATION          ... up to this cap, seconds (86400)
MANAGED_SFTP_BAN_MEMORY                a new ban within this many seconds of the previous
                                       one's end counts as a repeat (86400)
MANAGED_SFTP_BAN_EXEMPT                CIDRs never banned (monitoring, our own workers) ([])
MANAGED_SFTP_LOGIN_TIMEOUT             seconds to authenticate and open a session (30)
MANAGED_SFTP_MAX_CONNECTIONS           connections the process accepts at once (500)
MANAGED_SFTP_MAX_CONNECTIONS_PER_IP    of which from one address (64)
MANAGED_SFTP_WINDOW_SIZE               SSH channel window, bytes (8 MiB)
MANAGED_SFTP_MAX_PACKET_SIZE           largest SSH packet we accept, bytes (128 KiB)
MANAGED_SFTP_CIPHERS                   ciphers offered, in order (AES-GCM then AES-CTR)
MANAGED_SFTP_DB_THREADS                threads doing the server's database work (4)
MANAGED_SFTP_SESSION_TTL               seconds a session row lives without a heartbeat (180)
MANAGED_SFTP_STALE_UPLOAD_AGE          at start, delete temp uploads older than this (21600)
MANAGED_SFTP_SHUTDOWN_TIMEOUT          seconds to wait for sessions to end on SIGTERM (20)
=====================================  ======================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

# AES-GCM first: it needs no separate MAC, which makes it ~1.5x faster than CTR+HMAC in
# paramiko. CTR stays for older clients (JSch < 0.1.61, old WinSCP). CBC and 3DES are
# left out on purpose (weak). Note the *client's* order decides: OpenSSH prefers CTR.
DEFAULT_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
WEAK_MACS = ("hmac-md5", "hmac-md5-96", "hmac-sha1-96")


def _setting(name: str, default):
    return getattr(settings, name, default)


@dataclass(frozen=True)
class ServerConfig:
    """What a server process needs at start; built once by `load_config`."""

    host: str
    port: int
    root: Path
    host_key: Path
    login_timeout: float = 30.0
    max_connections: int = 500
    max_connections_per_ip: int = 64
    # Channels (sftp sessions) per SSH connection; OpenSSH's MaxSessions is 10.
    max_channels: int = 4
    # Open files/directories per SFTP session: bounds file descriptors per client.
    max_handles: int = 256
    window_size: int = 8 * 1024 * 1024
    max_packet_size: int = 128 * 1024
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    db_threads: int = 4
    session_ttl: int = 180
    stale_upload_age: int = 6 * 3600
    shutdown_timeout: float = 20.0
    keepalive: int = 60


def load_config(host: str | None = None, port: int | None = None) -> ServerConfig:
    return ServerConfig(
        host=host if host is not None else settings.MANAGED_SFTP_HOST,
        port=int(port if port is not None else settings.MANAGED_SFTP_PORT),
        root=Path(settings.MANAGED_SFTP_ROOT),
        host_key=Path(settings.MANAGED_SFTP_HOST_KEY),
        login_timeout=float(_setting("MANAGED_SFTP_LOGIN_TIMEOUT", 30)),
        max_connections=int(_setting("MANAGED_SFTP_MAX_CONNECTIONS", 500)),
        max_connections_per_ip=int(_setting("MANAGED_SFTP_MAX_CONNECTIONS_PER_IP", 64)),
        window_size=int(_setting("MANAGED_SFTP_WINDOW_SIZE", 8 * 1024 * 1024)),
        max_packet_size=int(_setting("MANAGED_SFTP_MAX_PACKET_SIZE", 128 * 1024)),
        ciphers=tuple(_setting("MANAGED_SFTP_CIPHERS", DEFAULT_CIPHERS)),
        db_threads=max(1, int(_setting("MANAGED_SFTP_DB_THREADS", 4))),
        session_ttl=int(_setting("MANAGED_SFTP_SESSION_TTL", 180)),
        stale_upload_age=int(_setting("MANAGED_SFTP_STALE_UPLOAD_AGE", 6 * 3600)),
        shutdown_timeout=float(_setting("MANAGED_SFTP_SHUTDOWN_TIMEOUT", 20)),
    )


@dataclass(frozen=True)
class BanPolicy:
    threshold: int = 5
    username_threshold: int = 20
    window: int = 600
    duration: int = 600
    max_duration: int = 86400
    memory: int = 86400
    exempt: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls) -> BanPolicy:
        """Read at each use, so a settings change (or a test override) applies at once."""
        return cls(
            threshold=int(_setting("MANAGED_SFTP_BAN_THRESHOLD", 5)),
            username_threshold=int(_setting("MANAGED_SFTP_BAN_USERNAME_THRESHOLD", 20)),
            window=int(_setting("MANAGED_SFTP_BAN_WINDOW", 600)),
            duration=int(_setting("MANAGED_SFTP_BAN_DURATION", 600)),
            max_duration=int(_setting("MANAGED_SFTP_BAN_MAX_DURATION", 86400)),
            memory=int(_setting("MANAGED_SFTP_BAN_MEMORY", 86400)),
            exempt=tuple(_setting("MANAGED_SFTP_BAN_EXEMPT", ())),
        )

    def ban_seconds(self, level: int) -> int:
        """Duration of the ``level``-th consecutive ban: doubling, capped."""
        return min(self.duration * 2 ** max(0, level - 1), self.max_duration)
