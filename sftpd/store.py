"""The server's database work: accounts, failed logins and bans, sessions, audit events.

Plain functions, called by the server through its small pool of database threads
(`sftpd.server.DbPool`), never from the SFTP data path.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import logging

import paramiko
from django.db import transaction
from django.utils import timezone

from authorizations.models import Authorization, Method
from authorizations.validation import MANAGED_USERNAME
from lyticsops.netutil import ip_allowed
from sftpd.conf import BanPolicy
from sftpd.models import SftpAuditEvent, SftpBan, SftpLoginFailure, SftpSession

logger = logging.getLogger("sftpd")
Event = SftpAuditEvent.Event

MAX_USERNAME = 150  # longer user names cannot exist; we store at most this much of them


# --------------------------------------------------------------------------- accounts


def load_account(username: str) -> Authorization | None:
    """The managed account called ``username`` (case-insensitively, like the unique
    constraint), read fresh so that password and key changes apply at the next login."""
    if not username or len(username) > 64 or "\x00" in username:
        return None
    return (
        Authorization.objects.select_related("partner")
        .filter(method=Method.MANAGED_SFTP, username__iexact=username)
        .first()
    )


def account_refusal(account: Authorization, now: dt.datetime | None = None) -> str | None:
    """Why this account may not log in now, or None."""
    now = now or timezone.now()
    if not account.active:
        return "account inactive"
    if account.expires_at is not None and account.expires_at <= now:
        return "account expired"
    if not account.partner.active:
        return "partner inactive"
    if not MANAGED_USERNAME.match(account.username):
        # Defensive: the name becomes a directory; never trust a row edited by hand.
        return "invalid username"
    return None


def ip_refused(account: Authorization, ip: str) -> bool:
    return not ip_allowed(ip, account.allowed_ips or [])


def key_authorized(account: Authorization, key: paramiko.PKey) -> bool:
    """Whether ``key`` is one of the account's public keys (compared as key blobs).

    Blob comparison needs no parsing beyond base64, so a line that a newer validation
    rule would refuse cannot break the login of the account's other keys.
    """
    blob = key.asbytes()
    for line in (account.public_keys or "").splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0].startswith("#"):
            continue
        try:
            candidate = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(candidate, blob):
            return True
    return False


# --------------------------------------------------------------------------- bans


def active_ban(ip: str, now: dt.datetime | None = None) -> SftpBan | None:
    return SftpBan.objects.filter(ip=ip, banned_until__gt=now or timezone.now()).first()


def record_failure(
    ip: str, username: str, policy: BanPolicy, now: dt.datetime | None = None
) -> SftpBan | None:
    """Count a failed login; ban the IP (and return the ban) once a threshold is reached.

    Two counters over the same window: failures from the IP (a password guesser), and
    failures for the user name from anywhere (a guesser spread over many addresses). The
    second one bans each further failing IP but never locks the account itself, so an
    attacker cannot lock a partner out.
    """
    now = now or timezone.now()
    username = _text(username.lower(), MAX_USERNAME)
    since = now - dt.timedelta(seconds=policy.window)
    with transaction.atomic():
        SftpLoginFailure.objects.create(ip=ip, username=username, created_at=now)
        if policy.exempt and ip_allowed(ip, policy.exempt):
            return None
        by_ip = SftpLoginFailure.objects.filter(ip=ip, created_at__gte=since).count()
        by_name = (
            SftpLoginFailure.objects.filter(username=username, created_at__gte=since).count()
            if username
            else 0
        )
        if by_ip >= policy.threshold:
            reason = f"{by_ip} failed logins in {policy.window} s"
        elif username and by_name >= policy.username_threshold:
            reason = f"{by_name} failed logins for user {username!r} in {policy.window} s"
        else:
            return None
        return _impose_ban(ip, username, reason, policy, now)


def _impose_ban(
    ip: str, username: str, reason: str, policy: BanPolicy, now: dt.datetime
) -> SftpBan:
    ban = SftpBan.objects.select_for_update().filter(ip=ip).first()
    if ban is not None and ban.banned_until > now:
        return ban  # another process got there first
    repeat = ban is not None and now - ban.banned_until < dt.timedelta(seconds=policy.memory)
    level = ban.level + 1 if repeat else 1
    until = now + dt.timedelta(seconds=policy.ban_seconds(level))
    if ban is None:
        ban = SftpBan(ip=ip, created_at=now)
    ban.level, ban.banned_until, ban.reason = level, until, reason
    ban.save()
    # A fresh count after the ban; the level remembers the history.
    SftpLoginFailure.objects.filter(ip=ip).delete()
    write_audit(
        Event.BANNED,
        username=username,
        ip=ip,
        detail=f"{reason}; banned until {until:%Y-%m-%d %H:%M:%S} UTC (level {level})",
    )
    logger.warning("sftpd: banned %s until %s (%s)", ip, until.isoformat(), reason)
    return ban


def clear_failures(ip: str, username: str) -> None:
    """After a successful login: forget this IP's failures *for this user name* only (a
    valid account must not reset the count of guesses against other accounts)."""
    SftpLoginFailure.objects.filter(ip=ip, username=_text(username.lower(), MAX_USERNAME)).delete()


def prune_failures(policy: BanPolicy, now: dt.datetime | None = None) -> None:
    now = now or timezone.now()
    SftpLoginFailure.objects.filter(
        created_at__lt=now - dt.timedelta(seconds=policy.window)
    ).delete()


# --------------------------------------------------------------------------- sessions


def register_session(
    account_id: int, ip: str, server_id: str, ttl: int, limit: int
) -> SftpSession | None:
    """Claim one of the account's ``limit`` session slots, or None when all are taken.

    Serialised per account by locking its row (PostgreSQL); SQLite serialises all
    writers anyway (IMMEDIATE transactions).
    """
    now = timezone.now()
    with transaction.atomic():
        Authorization.objects.select_for_update().filter(pk=account_id).values("pk").first()
        live = SftpSession.objects.filter(account_id=account_id, expires_at__gt=now).count()
        if live >= limit:
            return None
        return SftpSession.objects.create(
            account_id=account_id,
            ip=ip,
            server_id=server_id,
            started_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
        )


def end_session(session_id: int) -> None:
    SftpSession.objects.filter(pk=session_id).delete()


def heartbeat(server_id: str, ttl: int) -> None:
    """Keep this process's sessions alive; drop the expired rows of dead processes."""
    now = timezone.now()
    SftpSession.objects.filter(server_id=server_id).update(
        expires_at=now + dt.timedelta(seconds=ttl)
    )
    SftpSession.objects.filter(expires_at__lte=now).delete()


def forget_server(server_id: str) -> None:
    SftpSession.objects.filter(server_id=server_id).delete()


# --------------------------------------------------------------------------- audit


def write_audit(
    event: str,
    *,
    account_id: int | None = None,
    username: str = "",
    ip: str | None = None,
    path: str = "",
    nbytes: int | None = None,
    detail: str = "",
) -> None:
    SftpAuditEvent.objects.create(
        event=event,
        account_id=account_id,
        username=_text(username, MAX_USERNAME),
        ip=ip or None,
        path=_text(path, 8192),
        bytes=nbytes,
        detail=_text(detail, 2000),
    )


def _text(value: str, limit: int) -> str:
    """Make client-supplied text storable: PostgreSQL refuses NUL in text columns, and an
    attacker picks the length."""
    return (value or "").replace("\x00", "\\x00")[:limit]
