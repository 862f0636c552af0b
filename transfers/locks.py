"""A lease lock in the database: one run of a job at a time, across processes and machines.

A lock is a `JobLock` row: ``key`` (unique), ``owner`` and ``expires_at``. It is taken with
one conditional write, so two contenders can never both win:

- take over the row if its lease has expired (``UPDATE ... WHERE key = %s AND expires_at <
  now``: on PostgreSQL the loser of a race blocks on the row, then re-checks the condition
  against the winner's new lease and updates nothing; SQLite serialises writers);
- otherwise insert it; the unique key makes a second insert fail (IntegrityError).

While held, a background thread renews the lease every ``ttl / 3`` seconds, so a run may
last for hours. A crashed worker stops renewing, so its lease simply expires: the lock is
released on crash without anybody cleaning up. On exit the row is deleted, but only if we
still own it (a lease that expired and was taken over belongs to someone else now).

Times are the database's clock (``Now()``), not each worker's, so machines with skewed
clocks still agree on who holds a lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models.functions import Now

from transfers.errors import JobLocked
from transfers.models import JobLock

log = logging.getLogger(__name__)


def default_ttl() -> float:
    return float(getattr(settings, "TRANSFERS_LOCK_TTL", 60))


def make_owner(label: str = "") -> str:
    """A name unique to this acquisition that says who holds the lock (shown in the admin)."""
    prefix = f"{label}@" if label else ""
    return f"{prefix}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:255]


@dataclass
class Lease:
    key: str
    owner: str
    ttl: float
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)


def try_acquire(key: str, owner: str, ttl: float) -> bool:
    """One attempt to take the lock; True when it is ours until ``now + ttl``."""
    lease = timedelta(seconds=ttl)
    taken = JobLock.objects.filter(key=key, expires_at__lt=Now()).update(
        owner=owner, expires_at=Now() + lease
    )
    if taken:
        return True
    try:
        # A savepoint, so that a lost race does not break a surrounding transaction.
        with transaction.atomic():
            JobLock.objects.create(key=key, owner=owner, expires_at=Now() + lease)
    except IntegrityError:
        return False
    return True


def renew(key: str, owner: str, ttl: float) -> bool:
    """Push our lease forward; False when the lock is no longer ours."""
    lease = timedelta(seconds=ttl)
    return bool(JobLock.objects.filter(key=key, owner=owner).update(expires_at=Now() + lease))


def release(key: str, owner: str) -> None:
    JobLock.objects.filter(key=key, owner=owner).delete()


def holder(key: str) -> JobLock | None:
    """The live lease on ``key``, if any (an expired row counts as free)."""
    return JobLock.objects.filter(key=key, expires_at__gte=Now()).first()


def _heartbeat(lease: Lease) -> None:
    interval = max(lease.ttl / 3, 0.05)
    try:
        while not lease._stop.wait(interval):
            try:
                if not renew(lease.key, lease.owner, lease.ttl):
                    # Only possible when renewals failed for a whole TTL: someone took over.
                    log.error("lock %s lost by %s: its lease expired", lease.key, lease.owner)
                    lease.lost.set()
                    return
            except Exception:  # a database hiccup: keep trying until the lease runs out
                log.warning("lock %s: lease renewal failed", lease.key, exc_info=True)
                close_old_connections()
    finally:
        # Connections are per thread: this one would otherwise stay open.
        connection.close()


@contextmanager
def job_lock(key: str, owner: str | None = None, ttl: float | None = None) -> Iterator[Lease]:
    """Hold the lock ``key`` for the ``with`` block, or raise `JobLocked` (retryable)."""
    ttl = default_ttl() if ttl is None else ttl
    owner = owner or make_owner()
    if not try_acquire(key, owner, ttl):
        current = holder(key)
        who = (
            f" (held by {current.owner} until {current.expires_at:%H:%M:%S} UTC)" if current else ""
        )
        raise JobLocked(f"Another run of this job is in progress{who}.")
    lease = Lease(key=key, owner=owner, ttl=ttl)
    beat = threading.Thread(target=_heartbeat, args=(lease,), name=f"lease:{key}", daemon=True)
    beat.start()
    try:
        yield lease
    finally:
        lease._stop.set()
        beat.join(timeout=max(ttl, 5))
        release(key, owner)
