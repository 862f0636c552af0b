"""Keep account storage in step with account records.

A managed account's home is `MANAGED_SFTP_ROOT/<username>`. When the account is deleted
its folder is moved aside (not removed: it may hold a partner's data someone still needs),
so that a later account that takes the same username starts with an empty home and never
sees the previous owner's files. Usernames cannot change (see Authorization.clean), so
the deletion is the only event that can hand a home to someone else.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from authorizations.models import Authorization, Method

log = logging.getLogger(__name__)

DELETED_FOLDER = ".deleted"  # under MANAGED_SFTP_ROOT; no account can be named with a dot


def retire_home(username: str, pk: int) -> Path | None:
    """Move the account's home to `.deleted/<username>-<pk>-<UTC time>`; None if absent."""
    root = Path(settings.MANAGED_SFTP_ROOT)
    home = root / username
    if not username or not home.is_dir():
        return None
    target = root / DELETED_FOLDER / f"{username}-{pk}-{timezone.now():%Y%m%dT%H%M%SZ}"
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.rename(target)
    log.info("managed account %s deleted: its home was moved to %s", username, target)
    return target


@receiver(post_delete, sender=Authorization, dispatch_uid="sftpd.retire_home")
def _account_deleted(sender, instance: Authorization, **kwargs) -> None:
    if instance.method != Method.MANAGED_SFTP:
        return
    username, pk = instance.username, instance.pk
    # After the commit: a rolled-back delete must leave the home where it was.
    transaction.on_commit(lambda: retire_home(username, pk))
