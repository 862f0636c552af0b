"""Housekeeping of OAuth tokens, as plain functions (Celery tasks wrap them)."""

from __future__ import annotations

import logging
from datetime import datetime

from django.utils import timezone
from oauth2_provider.models import clear_expired, get_access_token_model

log = logging.getLogger(__name__)

BATCH = 1000


def delete_expired_tokens(now: datetime | None = None) -> int:
    """Delete access tokens past their expiry, in batches; returns how many went.

    Expired tokens are already refused by the API; deleting them keeps the table (and its
    unique checksum index) small. DOT's `clear_expired` then tidies grants, ID tokens and
    refresh tokens, which this server does not issue but an old row might still hold.
    """
    now = now or timezone.now()
    model = get_access_token_model()
    deleted = 0
    while True:
        batch = list(model.objects.filter(expires__lt=now).values_list("pk", flat=True)[:BATCH])
        if not batch:
            break
        count, _ = model.objects.filter(pk__in=batch).delete()
        deleted += len(batch)
        if count == 0:  # pragma: no cover - someone else deleted them first
            break
    clear_expired()
    log.info("deleted %d expired access tokens", deleted)
    return deleted
