"""Encryption of secrets at rest with MultiFernet under FIELD_ENCRYPTION_KEYS.

The first key encrypts; every key decrypts, so a new key can be put in front and the old
ones kept until `manage.py rotate_encryption_keys` has re-encrypted every value.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class DecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key.

    Never retryable: the key that wrote the value is missing from FIELD_ENCRYPTION_KEYS.
    """

    retryable = False


@lru_cache(maxsize=4)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty: secrets cannot be stored.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key "
            "(32 url-safe base64-encoded bytes)."
        ) from exc


def fernet() -> MultiFernet:
    # Keyed on the tuple so tests that override the setting get a fresh MultiFernet.
    return _fernet_for(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str, *, where: str) -> str:
    try:
        return fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError) as exc:
        raise DecryptionError(
            f"Cannot decrypt {where}: none of FIELD_ENCRYPTION_KEYS opens it "
            "(was the key that wrote it removed?)."
        ) from exc


def rotate(token: str, *, where: str) -> str:
    """Re-encrypt ``token`` under the newest key (no plaintext leaves this function)."""
    try:
        return fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError) as exc:
        raise DecryptionError(f"Cannot rotate {where}: no configured key opens it.") from exc
