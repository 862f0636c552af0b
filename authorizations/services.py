"""Operations on authorizations shared by the admin, the API and the workers."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from authorizations.models import Authorization

if TYPE_CHECKING:
    from transfers import sftp

log = logging.getLogger(__name__)


def sftp_target(authz: Authorization, *, folder: str | None = None) -> sftp.SftpTarget:
    """Where and how to connect for an authorization that connects out."""
    if not authz.connects_out:
        raise ValueError(f"{authz} does not connect to an SFTP server.")
    from transfers import sftp

    return sftp.SftpTarget(
        host=authz.effective_host(),
        port=authz.effective_port(),
        username=authz.effective_username(),
        password=authz.password or None,
        private_key=authz.private_key or None,
        passphrase=authz.passphrase or None,
        folder=authz.folder if folder is None else folder,
        pinned_fingerprint=authz.host_key_fingerprint or None,
        timeout=settings.SFTP_CONNECT_TIMEOUT,
        io_timeout=settings.SFTP_IO_TIMEOUT,
    )


def pin_host_key(authz: Authorization, fingerprint: str, key_type: str) -> bool:
    """Pin the server's host key if none is pinned yet; True when this call pinned it.

    The conditional UPDATE makes two workers racing on a first connect agree: only the
    first pin is written. The loser compares its key with the winner's and raises
    `SftpError` (host_key_mismatch) if they differ, so it never goes on talking to a
    server whose key was not the one pinned.
    """
    now = timezone.now()
    pinned = Authorization.objects.filter(pk=authz.pk, host_key_fingerprint="").update(
        host_key_fingerprint=fingerprint, host_key_type=key_type, host_key_pinned_at=now
    )
    if pinned:
        authz.host_key_fingerprint, authz.host_key_type = fingerprint, key_type
        authz.host_key_pinned_at = now
        log.info("pinned host key %s for authorization %s", fingerprint, authz.pk)
        return True
    stored = Authorization.objects.values_list("host_key_fingerprint", flat=True).get(pk=authz.pk)
    if stored and stored != fingerprint:
        from transfers import sftp

        raise sftp.SftpError(
            "host_key_mismatch",
            f"host key changed: pinned {stored}, server offered {fingerprint} — if the server "
            "was legitimately re-keyed, clear the pin",
        )
    return False


def clear_host_key_pin(authz: Authorization) -> None:
    Authorization.objects.filter(pk=authz.pk).update(
        host_key_fingerprint="", host_key_type="", host_key_pinned_at=None
    )
    authz.host_key_fingerprint = authz.host_key_type = ""
    authz.host_key_pinned_at = None
    log.info("host key pin cleared for authorization %s", authz.pk)


def run_connection_test(authz: Authorization) -> sftp.ConnectionReport:
    """Connect for real, list the folder, pin the host key on first success, record it."""
    from transfers import sftp

    report = sftp.test_connection(sftp_target(authz))
    if report.ok and report.fingerprint and not authz.host_key_fingerprint:
        try:
            if pin_host_key(authz, report.fingerprint, report.host_key_type or ""):
                # The report was written before this pin: say what is true once it is read.
                report.message = report.message.replace(
                    "is not pinned yet", "is now pinned (first successful connection)"
                )
        except sftp.SftpError as exc:  # another connection pinned a different key meanwhile
            report = dataclasses.replace(report, ok=False, message=exc.message, error_kind=exc.kind)
    with transaction.atomic():
        Authorization.objects.filter(pk=authz.pk).update(
            last_tested_at=timezone.now(),
            last_test_ok=report.ok,
            last_test_message=report.message[:2000],
        )
    return report
