"""Admin for the managed SFTP server: the audit log (read-only), bans (delete = lift),
live sessions (read-only)."""

from __future__ import annotations

from django.contrib import admin

from sftpd.hostkey import host_key_fingerprint
from sftpd.models import SftpAuditEvent, SftpBan, SftpSession


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable by staff with the view permission; nobody adds, edits or deletes."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SftpAuditEvent)
class SftpAuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "event", "username", "ip", "path", "bytes", "detail")
    list_filter = ("event", "created_at")
    search_fields = ("username", "ip", "path", "detail")
    date_hierarchy = "created_at"
    list_select_related = ("account",)
    readonly_fields = [f.name for f in SftpAuditEvent._meta.fields]
    show_full_result_count = False  # COUNT(*) over a big log on every page is slow


@admin.register(SftpBan)
class SftpBanAdmin(admin.ModelAdmin):
    """Bans are made by the server; deleting one lifts it (and resets the doubling)."""

    list_display = ("ip", "active", "banned_until", "level", "reason", "updated_at")
    search_fields = ("ip", "reason")
    readonly_fields = ("ip", "banned_until", "level", "reason", "created_at", "updated_at")
    actions = ["delete_selected"]

    @admin.display(boolean=True, description="active")
    def active(self, obj: SftpBan) -> bool:
        return obj.is_active

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SftpSession)
class SftpSessionAdmin(ReadOnlyAdmin):
    list_display = ("account", "ip", "started_at", "expires_at", "server_id")
    list_select_related = ("account",)
    readonly_fields = ("account", "ip", "server_id", "started_at", "expires_at")

    def changelist_view(self, request, extra_context=None):
        # The fingerprint partners should see when they first connect.
        extra_context = {**(extra_context or {}), "title": self._title()}
        return super().changelist_view(request, extra_context)

    @staticmethod
    def _title() -> str:
        value = host_key_fingerprint()
        return f"Live SFTP sessions (host key {value})" if value else "Live SFTP sessions"
