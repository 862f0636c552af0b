"""A fast keyed hash for OAuth client secrets (not for people's passwords).

Why not Django's PBKDF2 (or Argon2/bcrypt)? Slow hashes exist to make guessing a
*low-entropy, human-chosen* password from a stolen hash expensive. A client secret is 64
random characters from a 62-letter alphabet (~380 bits) that we generate ourselves: no
amount of hashing speed makes guessing it from a hash feasible, so the work factor buys
nothing. It does cost a lot: PBKDF2 at 1,000,000 iterations is ~0.2 s of CPU *per token
request*, i.e. a handful of tokens per second per core and an easy denial of service for
anyone who can post bad secrets to the token endpoint.

So a secret is stored as HMAC-SHA256(key, salt + secret). The key (a "pepper") is not in
the database: a database dump alone cannot even be used to check a guess. The key comes
from ``CLIENT_SECRET_PEPPER`` or, when unset, is derived from ``SECRET_KEY``; the old
values in ``CLIENT_SECRET_PEPPER_FALLBACKS`` / ``SECRET_KEY_FALLBACKS`` keep verifying, so
either can be rotated without invalidating every client. Each hash names the key it was
made with (a short key id), so verification never has to try every key.

The hasher is registered in PASSWORD_HASHERS *after* Django's defaults, so people's
passwords keep using PBKDF2, and django-oauth-toolkit is told to use it for client
secrets with ``OAUTH2_PROVIDER["CLIENT_SECRET_HASHER"]``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import BasePasswordHasher, mask_hash
from django.utils.crypto import constant_time_compare
from django.utils.translation import gettext_noop as _

ALGORITHM = "client_secret_hmac"


def _derive(material: str) -> bytes:
    # Domain separation: the same SECRET_KEY also signs sessions and CSRF tokens.
    return hmac.new(
        material.encode("utf-8"), b"lyticsops.client-secret-hasher.v1", hashlib.sha256
    ).digest()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"key-id:" + key).hexdigest()[:8]


def keys() -> list[bytes]:
    """The signing key first, then the keys that still verify (newest first)."""
    pepper = getattr(settings, "CLIENT_SECRET_PEPPER", "")
    if pepper:
        materials = [pepper, *getattr(settings, "CLIENT_SECRET_PEPPER_FALLBACKS", [])]
    else:
        materials = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [_derive(m) for m in materials if m]


class ClientSecretHasher(BasePasswordHasher):
    """``client_secret_hmac$<key id>$<salt>$<hex digest>``."""

    algorithm = ALGORITHM

    def encode(self, password: str, salt: str) -> str:
        self._check_encode_args(password, salt)
        key = keys()[0]
        return f"{self.algorithm}${_key_id(key)}${salt}${self._digest(key, salt, password)}"

    @staticmethod
    def _digest(key: bytes, salt: str, password: str) -> str:
        message = f"{salt}${password}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def decode(self, encoded: str) -> dict[str, Any]:
        algorithm, key_id, salt, digest = encoded.split("$", 3)
        if algorithm != self.algorithm:
            raise ValueError("not a client secret hash")
        return {"algorithm": algorithm, "key_id": key_id, "salt": salt, "hash": digest}

    def verify(self, password: str, encoded: str) -> bool:
        try:
            decoded = self.decode(encoded)
        except ValueError:
            return False
        for key in keys():
            if _key_id(key) == decoded["key_id"]:
                expected = self._digest(key, decoded["salt"], password)
                return constant_time_compare(expected, decoded["hash"])
        return False  # made with a key that is no longer configured

    def safe_summary(self, encoded: str) -> dict[str, str]:
        decoded = self.decode(encoded)
        return {
            _("algorithm"): decoded["algorithm"],
            _("key id"): decoded["key_id"],
            _("salt"): mask_hash(decoded["salt"], show=2),
            _("hash"): mask_hash(decoded["hash"]),
        }

    def must_update(self, encoded: str) -> bool:
        return self.decode(encoded)["key_id"] != _key_id(keys()[0])

    def harden_runtime(self, password: str, encoded: str) -> None:
        pass  # one HMAC: there is no work factor to even out
