"""Database state of the managed SFTP server.

Everything several server processes must agree on lives here rather than in memory:
failed logins and bans (a brute-force attempt spread over instances behind a load balancer
is still one attempt), live sessions (for `max_sessions`), and the audit log.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class AuditEvent(models.TextChoices):
    """What an `SftpAuditEvent` records."""

    LOGIN_OK = "login_ok", "Login"
    LOGIN_FAILED = "login_failed", "Login failed"
    LOGOUT = "logout", "Logout"
    BANNED = "banned", "IP banned"
    REFUSED_BANNED = "refused_banned", "Refused: IP banned"
    REFUSED_IP = "refused_ip", "Refused: IP not allowed"
    REFUSED_SESSIONS = "refused_sessions", "Refused: too many sessions"
    REFUSED_PATH = "refused_path", "Refused: path outside home"
    REFUSED_QUOTA = "refused_quota", "Refused: quota exceeded"
    UPLOAD = "upload", "Upload"
    UPLOAD_ABORTED = "upload_aborted", "Upload aborted"
    DOWNLOAD = "download", "Download"
    DELETE = "delete", "Delete"
    RENAME = "rename", "Rename"
    MKDIR = "mkdir", "Create folder"
    RMDIR = "rmdir", "Remove folder"


class SftpAuditEvent(models.Model):
    """One thing that happened on the managed SFTP server. Append-only."""

    Event = AuditEvent

    account = models.ForeignKey(
        "authorizations.Authorization",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sftp_audit_events",
    )
    # Kept as text as well: failed logins name accounts that do not exist, and the event
    # must stay readable after the account is deleted.
    username = models.CharField(max_length=150, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True, verbose_name="IP")
    event = models.CharField(max_length=32, choices=Event.choices)
    path = models.TextField(blank=True)
    bytes = models.BigIntegerField(null=True, blank=True)
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "SFTP audit event"
        indexes = [
            models.Index(fields=["-created_at"], name="sftp_audit_created_idx"),
            models.Index(fields=["account", "-created_at"], name="sftp_audit_account_idx"),
            models.Index(fields=["ip", "-created_at"], name="sftp_audit_ip_idx"),
            models.Index(fields=["event", "-created_at"], name="sftp_audit_event_idx"),
            models.Index(fields=["username", "-created_at"], name="sftp_audit_username_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(event__in=AuditEvent.values), name="sftp_audit_event_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.event} {self.username} {self.ip or ''}"


class SftpLoginFailure(models.Model):
    """A failed login, kept for the ban window only (pruned by the server)."""

    ip = models.GenericIPAddressField(verbose_name="IP")
    username = models.CharField(max_length=150, blank=True)  # lower-cased
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "SFTP login failure"
        indexes = [
            models.Index(fields=["ip", "created_at"], name="sftp_failure_ip_idx"),
            models.Index(fields=["username", "created_at"], name="sftp_failure_username_idx"),
            models.Index(fields=["created_at"], name="sftp_failure_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.ip} {self.username}"


class SftpBan(models.Model):
    """An IP refused before authentication until ``banned_until``.

    The row outlives the ban so that a repeat offender's next ban is longer (``level``).
    Deleting the row lifts the ban and forgets the history.
    """

    ip = models.GenericIPAddressField(verbose_name="IP")
    banned_until = models.DateTimeField()
    level = models.PositiveIntegerField(
        default=1, help_text="Consecutive bans; each one lasts twice as long as the last."
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-banned_until"]
        verbose_name = "SFTP ban"
        constraints = [
            models.UniqueConstraint(fields=["ip"], name="sftp_ban_ip_unique"),
        ]
        indexes = [models.Index(fields=["banned_until"], name="sftp_ban_until_idx")]

    def __str__(self) -> str:
        return f"{self.ip} until {self.banned_until:%Y-%m-%d %H:%M:%S}"

    @property
    def is_active(self) -> bool:
        return self.banned_until > timezone.now()


class SftpSession(models.Model):
    """A live SFTP session, so that every server process counts ``max_sessions`` alike.

    The process serving the session refreshes ``expires_at`` (heartbeat) and deletes the
    row when the session ends; a row whose process died simply expires.
    """

    account = models.ForeignKey(
        "authorizations.Authorization", on_delete=models.CASCADE, related_name="sftp_sessions"
    )
    ip = models.GenericIPAddressField(null=True, blank=True, verbose_name="IP")
    server_id = models.CharField(max_length=128, help_text="host:pid of the serving process")
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "SFTP session"
        indexes = [
            models.Index(fields=["account", "expires_at"], name="sftp_session_account_idx"),
            models.Index(fields=["server_id"], name="sftp_session_server_idx"),
            models.Index(fields=["expires_at"], name="sftp_session_expires_idx"),
        ]

    def __str__(self) -> str:
        return f"session {self.pk} of account {self.account_id} from {self.ip}"
