"""Admin for import/export jobs, their runs, and the ledger of imported files.

Jobs: a list with each job's last run, a "Run now" action and button, the schedule fields
grouped (beat's periodic task is kept in step on save, see transfers.schedules), and the
recent runs inline. Runs and ledger entries are read-only records; a run's page reloads
itself every few seconds while it is queued or running, so its progress shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from transfers import schedules, service
from transfers.models import ExportJob, ImportedFile, ImportJob, Job, Run
from transfers.runs import COUNTERS

RECENT_RUNS = 10
SCHEDULE_FIELDS = [
    "schedule_kind",
    "interval_minutes",
    "cron",
    "daily_time",
    "run_once_at",
    "schedule_timezone",
    "schedule_summary",
    "next_run_at",
]
STATUS_COLOURS = {
    Run.Status.QUEUED: "#777",
    Run.Status.RUNNING: "#2271b1",
    Run.Status.SUCCEEDED: "#2e7d32",
    Run.Status.PARTIAL: "#b26a00",
    Run.Status.FAILED: "#c62828",
}


def status_badge(status: str | None) -> str:
    if not status:
        return "—"
    label = Run.Status(status).label.split(" (")[0]
    return format_html(
        '<strong style="color:{}" class="run-status run-{}">{}</strong>',
        STATUS_COLOURS.get(status, "#000"),
        status,
        label,
    )


def run_link(run: Run) -> str:
    url = reverse("admin:transfers_run_change", args=[run.pk])
    return format_html('<a href="{}">#{}</a>', url, run.pk)


# -- jobs -----------------------------------------------------------------------------------
class RecentRunsInline(admin.TabularInline):
    model = Run
    verbose_name_plural = f"Recent runs (last {RECENT_RUNS})"
    fields = ["run", "status_display", "trigger", "queued_at", "duration", "rows", "error"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        # The inline formset filters by job afterwards, so no slice here: the ids of the
        # latest runs per job are not known yet; keep the N most recent of each job in view.
        queryset = super().get_queryset(request)
        latest = Run.objects.filter(**{self.fk_name: OuterRef(self.fk_name)}).order_by(
            "-queued_at", "-id"
        )
        return queryset.filter(pk__in=Subquery(latest.values("pk")[:RECENT_RUNS])).order_by(
            "-queued_at", "-id"
        )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="run")
    def run(self, obj: Run) -> str:
        return run_link(obj)

    @admin.display(description="status")
    def status_display(self, obj: Run) -> str:
        return status_badge(obj.status)

    @admin.display(description="duration")
    def duration(self, obj: Run) -> str:
        seconds = obj.duration_seconds
        return f"{seconds:.1f} s" if seconds is not None else "—"

    @admin.display(description="rows (upserted / rejected)")
    def rows(self, obj: Run) -> str:
        return f"{obj.rows_upserted} / {obj.rows_rejected}"


class ImportRunsInline(RecentRunsInline):
    fk_name = "import_job"


class ExportRunsInline(RecentRunsInline):
    fk_name = "export_job"


class JobAdmin(admin.ModelAdmin):
    """What the import and export job admins share."""

    run_fk: str = ""
    field_groups: list[tuple[str | None, list[str]]] = []
    list_display = [
        "name",
        "partner",
        "enabled",
        "schedule",
        "last_run",
        "last_run_status",
        "last_run_at",
    ]
    list_filter = ["partner", "enabled", "schedule_kind"]
    search_fields = ["name", "partner__name", "partner__slug"]
    list_select_related = ["partner"]
    actions = ["run_now_action"]
    readonly_fields = ["schedule_summary", "next_run_at", "created_at", "updated_at"]
    change_form_template = "admin/transfers/job/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        latest = Run.objects.filter(**{self.run_fk: OuterRef("pk")}).order_by("-queued_at", "-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_run_id=Subquery(latest.values("pk")[:1]),
                last_run_status=Subquery(latest.values("status")[:1]),
                last_run_at=Subquery(latest.values("queued_at")[:1]),
            )
        )

    def get_fieldsets(self, request: HttpRequest, obj: Job | None = None):
        # Every editable field appears once, even one added to the model later ("Other").
        form_fields = set(self.get_form(request, obj, fields=None).base_fields)
        placed = {name for _, names in self.field_groups for name in names}
        placed |= set(SCHEDULE_FIELDS) | {"created_at", "updated_at"}
        sets: list[tuple[str | None, dict[str, Any]]] = [
            (title, {"fields": names}) for title, names in self.field_groups
        ]
        sets.append(("Schedule", {"fields": SCHEDULE_FIELDS}))
        others = sorted(form_fields - placed)
        if others:
            sets.append(("Other", {"fields": others}))
        if obj is not None:
            sets.append(("Record", {"fields": ["created_at", "updated_at"]}))
        return sets

    # -- columns ----------------------------------------------------------------------
    @admin.display(description="schedule")
    def schedule(self, obj: Job) -> str:
        return schedules.describe(obj)

    @admin.display(description="last run")
    def last_run(self, obj: Job) -> str:
        if not getattr(obj, "last_run_id", None):
            return "never"
        url = reverse("admin:transfers_run_change", args=[obj.last_run_id])
        return format_html('<a href="{}">#{}</a>', url, obj.last_run_id)

    @admin.display(description="last run status", ordering="last_run_status")
    def last_run_status(self, obj: Job) -> str:
        return status_badge(getattr(obj, "last_run_status", None))

    @admin.display(description="last run queued", ordering="last_run_at")
    def last_run_at(self, obj: Job) -> datetime | None:
        return getattr(obj, "last_run_at", None)

    @admin.display(description="schedule")
    def schedule_summary(self, obj: Job) -> str:
        if obj.pk is None:
            return "—"
        summary = schedules.describe(obj)
        return summary if obj.enabled else f"{summary} — paused (job disabled)"

    @admin.display(description="next scheduled run")
    def next_run_at(self, obj: Job) -> str:
        when = schedules.next_run(obj) if obj.pk else None
        return f"{when.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if when else "—"

    # -- run now ----------------------------------------------------------------------
    def get_urls(self):
        info = self.model._meta.app_label, self.model._meta.model_name
        return [
            path(
                "<path:object_id>/run-now/",
                self.admin_site.admin_view(self.run_now_view),
                name="{}_{}_run_now".format(*info),
            ),
            *super().get_urls(),
        ]

    def run_now_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            raise PermissionDenied("Use the Run now button on the job's page.")
        job = get_object_or_404(self.model, pk=object_id)
        if not self.has_change_permission(request, job):
            raise PermissionDenied
        run = service.start_run(job, Run.Trigger.MANUAL)
        messages.success(request, f"Run #{run.pk} of “{job}” is queued; this page follows it.")
        return HttpResponseRedirect(reverse("admin:transfers_run_change", args=[run.pk]))

    @admin.action(description="Run now", permissions=["change"])
    def run_now_action(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        runs = [service.start_run(job, Run.Trigger.MANUAL) for job in queryset]
        numbers = ", ".join(f"#{run.pk}" for run in runs)
        messages.success(request, f"Queued {len(runs)} run(s): {numbers}.")


@admin.register(ImportJob)
class ImportJobAdmin(JobAdmin):
    run_fk = "import_job"
    inlines = [ImportRunsInline]
    field_groups = [
        (None, ["partner", "authorization", "name", "enabled"]),
        ("Files", ["folder", "pattern", "after_import", "archive_folder"]),
        (
            "Format",
            [
                "format",
                "csv_delimiter",
                "csv_quotechar",
                "csv_encoding",
                "csv_header",
                "identity_field",
                "field_mapping",
                "timestamp_field",
                "on_error",
            ],
        ),
    ]


@admin.register(ExportJob)
class ExportJobAdmin(JobAdmin):
    run_fk = "export_job"
    inlines = [ExportRunsInline]
    list_filter = ["partner", "enabled", "schedule_kind", "audience"]
    field_groups = [
        (None, ["partner", "authorization", "audience", "name", "enabled"]),
        (
            "Output",
            [
                "fields",
                "format",
                "csv_delimiter",
                "csv_header",
                "compression",
                "filename_template",
                "folder",
                "collision",
                "write_manifest",
                "empty_audience",
            ],
        ),
    ]


# -- runs -----------------------------------------------------------------------------------
class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the system: visible, never added or edited here.

    Deleting stays subject to the usual permission: deleting a job deletes its runs and
    ledger entries, and the admin asks for the permission on each.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _table(headers: list[str], rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return empty
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
    )
    return format_html(
        '<table class="run-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body
    )


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "kind",
        "job_link",
        "partner",
        "status_display",
        "trigger",
        "queued_at",
        "duration",
        "files_imported",
        "rows_upserted",
        "rows_rejected",
    ]
    list_display_links = ["id"]
    list_filter = ["status", "kind", "trigger", "partner"]
    list_select_related = ["partner", "import_job", "export_job"]
    search_fields = ["import_job__name", "export_job__name", "file_name", "error"]
    date_hierarchy = "queued_at"
    change_form_template = "admin/transfers/run/change_form.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "kind",
                    "job_link",
                    "partner",
                    "status_display",
                    "trigger",
                    "attempts",
                    "queued_at",
                    "started_at",
                    "finished_at",
                    "duration",
                    "error_display",
                ]
            },
        ),
        (
            "Progress",
            {"fields": [*COUNTERS, "file_name", "sha256"]},
        ),
        ("Rejected rows", {"fields": ["rejected_rows_table"]}),
        ("Skipped and failed files", {"fields": ["skipped_files_table"]}),
        ("Log", {"fields": ["log_display"], "classes": ["wide"]}),
        ("Worker", {"fields": ["celery_task_id"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "rows_written",
        "job_link",
        "status_display",
        "duration",
        "error_display",
        "rejected_rows_table",
        "skipped_files_table",
        "log_display",
    ]

    def get_fieldsets(self, request: HttpRequest, obj: Run | None = None):
        if obj is None or obj.kind != Run.Kind.EXPORT:
            return self.fieldsets
        # An export writes one file: no per-file ledger, no rejected rows.
        export_progress = ["rows_written", "bytes_transferred", "file_name", "sha256"]
        return [
            (title, {**opts, "fields": export_progress}) if title == "Progress" else (title, opts)
            for title, opts in self.fieldsets
            if title not in ("Rejected rows", "Skipped and failed files")
        ]

    @admin.display(description="rows written")
    def rows_written(self, obj: Run) -> int:
        return obj.rows_read  # exports count the rows they read from the audience and write

    @admin.display(description="job")
    def job_link(self, obj: Run) -> str:
        job = obj.job
        if job is None:
            return "—"
        name = "importjob" if obj.kind == Run.Kind.IMPORT else "exportjob"
        url = reverse(f"admin:transfers_{name}_change", args=[job.pk])
        return format_html('<a href="{}">{}</a>', url, job.name)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Run) -> str:
        return status_badge(obj.status)

    @admin.display(description="duration")
    def duration(self, obj: Run) -> str:
        seconds = obj.duration_seconds
        return f"{seconds:.1f} s" if seconds is not None else "—"

    @admin.display(description="error")
    def error_display(self, obj: Run) -> str:
        if not obj.error:
            return "—"
        return format_html(
            '<div class="run-error" style="white-space:pre-wrap">{}</div>', obj.error
        )

    @admin.display(description="rejected rows (the first ones)")
    def rejected_rows_table(self, obj: Run) -> str:
        rows = [
            [r.get("file", ""), r.get("line", ""), r.get("reason", "")]
            for r in obj.rejected_rows or []
            if isinstance(r, dict)
        ]
        return _table(["file", "line", "reason"], rows, "none")

    @admin.display(description="files")
    def skipped_files_table(self, obj: Run) -> str:
        rows = [
            [f.get("name", ""), "failed" if f.get("failed") else "skipped", f.get("reason", "")]
            for f in obj.skipped_files or []
            if isinstance(f, dict)
        ]
        return _table(["file", "outcome", "reason"], rows, "none")

    @admin.display(description="log")
    def log_display(self, obj: Run) -> SafeString | str:
        if not obj.log:
            return "—"
        return format_html('<pre class="run-log" style="white-space:pre-wrap">{}</pre>', obj.log)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # The page reloads itself while the run is not finished (see the template).
        extra_context = {**(extra_context or {}), "refresh_seconds": 3}
        return super().changeform_view(request, object_id, form_url, extra_context)


@admin.register(ImportedFile)
class ImportedFileAdmin(ReadOnlyAdmin):
    """The import ledger. Deleting an entry makes that file importable again."""

    list_display = [
        "name",
        "job",
        "size",
        "modified",
        "short_sha256",
        "rows_upserted",
        "rows_rejected",
        "run_link",
        "imported_at",
    ]
    list_filter = ["job__partner", "job"]
    list_select_related = ["job", "run"]
    search_fields = ["name", "sha256"]
    date_hierarchy = "imported_at"

    @admin.display(description="modified (server)", ordering="mtime")
    def modified(self, obj: ImportedFile) -> str:
        return f"{datetime.fromtimestamp(obj.mtime, UTC):%Y-%m-%d %H:%M:%S} UTC"

    @admin.display(description="SHA-256")
    def short_sha256(self, obj: ImportedFile) -> str:
        return format_html('<span title="{}">{}…</span>', obj.sha256, obj.sha256[:12])

    @admin.display(description="run")
    def run_link(self, obj: ImportedFile) -> str:
        return run_link(obj.run) if obj.run_id else "—"
