"""The managed SFTP server's host key: created once, then reused forever.

Partners pin the host key on their first connection, so losing or regenerating it breaks
every partner's next login: the key is created only when the file does not exist, and a
file that exists but cannot be read is an error, never a reason to make a new key.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings

from transfers.sshkeys import fingerprint_of

logger = logging.getLogger("sftpd")

CACHE_KEY = "sftpd:host_key_fingerprint"


def load_or_create_host_key(path: str | os.PathLike) -> paramiko.PKey:
    """Load the host key at ``path``, first creating an Ed25519 key (mode 0600) if missing."""
    path = Path(path)
    if not path.exists():
        _create(path)
    elif path.stat().st_mode & 0o077:
        logger.warning("sftpd: host key %s is readable by others; chmod 600 it", path)
    return paramiko.PKey.from_path(str(path))


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    # Written completely under a temporary name, then linked into place: a second server
    # starting at the same moment either wins the link or reads the finished winner's key,
    # never a half-written file or a different key.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        logger.warning("sftpd: created a new Ed25519 host key at %s", path)
    finally:
        tmp.unlink(missing_ok=True)


# OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it: one implementation for
# the client (pinning) and the server (showing its key, logging which key logged in).
fingerprint = fingerprint_of


def host_key_fingerprint() -> str:
    """Fingerprint of the configured host key, for the admin to show ("" if unknown).

    Never creates the key: a web process that does not mount the server's key file must not
    invent another one. In that case the value the running server published in the shared
    cache at start (`publish_fingerprint`) is used.
    """
    path = Path(settings.MANAGED_SFTP_HOST_KEY)
    try:
        return fingerprint(paramiko.PKey.from_path(str(path)))
    except Exception:  # missing, unreadable or not a key: try the published value
        logger.debug("sftpd: cannot read the host key at %s", path, exc_info=True)
    try:
        from django.core.cache import cache

        return cache.get(CACHE_KEY) or ""
    except Exception:  # a missing cache table must not break an admin page
        logger.debug("sftpd: no cached host key fingerprint", exc_info=True)
        return ""


def publish_fingerprint(value: str) -> None:
    try:
        from django.core.cache import cache

        cache.set(CACHE_KEY, value, timeout=None)
    except Exception:
        logger.info("sftpd: could not publish the host key fingerprint in the cache")
