"""Give a partner a new SSH key for its managed SFTP account, delivered PGP-encrypted.

The private key exists only in this process's memory: it is encrypted to the partner's
PGP public key through gpg's pipes (`transfers.pgp.encrypt_stream` over in-memory
streams) and never written to the database or to disk. Only the public half is stored.
"""

from __future__ import annotations

import io

from django.db import transaction

from authorizations.models import Authorization


class OnboardingError(Exception):
    """The key pair cannot be generated for this account; the message says why."""


def generate_account_keypair(account: Authorization, kind: str = "ed25519") -> bytes:
    """Add a new key pair to ``account``; return its private key, PGP-armored for the partner.

    The private key is encrypted *before* the public key is saved: if encryption fails,
    the account does not gain a key whose private half nobody has.
    """
    from transfers import pgp, sshkeys

    if not account.is_managed_account:
        raise OnboardingError("Only managed SFTP accounts have SSH keys to generate.")
    public_key = (account.partner.pgp_public_key or "").strip()
    if not public_key:
        raise OnboardingError(
            f"Partner {account.partner} has no PGP public key: add it to the partner first, "
            "so that the private key can be sent encrypted."
        )
    private_text, public_line = sshkeys.generate_keypair(
        kind, comment=f"{account.username}@lyticsops"
    )
    armored = io.BytesIO()
    plaintext = io.BytesIO(private_text.encode("ascii"))
    # Drop our references as soon as gpg has the bytes (Python cannot wipe memory, but
    # nothing should keep the key alive longer than needed).
    del private_text
    try:
        pgp.encrypt_stream(plaintext, armored, public_key, armor=True)
    finally:
        plaintext.close()
    _add_public_key(account, public_line)
    return armored.getvalue()


def _add_public_key(account: Authorization, line: str) -> None:
    """Append ``line`` to the keys as stored now (not as ``account`` was loaded), so a
    concurrent edit of the keys is not lost."""
    with transaction.atomic():
        fresh = Authorization.objects.select_for_update().get(pk=account.pk)
        existing = fresh.public_keys.strip()
        fresh.public_keys = f"{existing}\n{line}" if existing else line
        fresh.save(update_fields=["public_keys", "updated_at"])
    account.public_keys = fresh.public_keys
