"""Import and export jobs, their runs, and the ledger of imported files."""

from __future__ import annotations

from datetime import time
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from authorizations.models import Authorization, Partner


class ScheduleKind(models.TextChoices):
    OFF = "off", "Off (run on demand only)"
    INTERVAL = "interval", "Every N minutes"
    CRON = "cron", "Cron expression"
    DAILY = "daily", "Daily at a time of day"
    ONCE = "once", "Once, at a date and time"


class Job(models.Model):
    """What import and export jobs share: whose, where, and when."""

    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="%(class)ss")
    authorization = models.ForeignKey(
        Authorization,
        on_delete=models.PROTECT,
        related_name="%(class)ss",
        help_text="An SFTP authorization of the same partner, or one of its managed accounts.",
    )
    name = models.CharField(max_length=200)
    folder = models.CharField(
        max_length=1024, blank=True, help_text="Empty: the authorization's folder."
    )
    enabled = models.BooleanField(default=True)
    schedule_kind = models.CharField(
        max_length=16, choices=ScheduleKind.choices, default=ScheduleKind.OFF
    )
    interval_minutes = models.PositiveIntegerField(null=True, blank=True)
    cron = models.CharField(
        max_length=120,
        blank=True,
        help_text='Five fields: minute hour day month weekday, e.g. "0 3 * * *".',
    )
    daily_time = models.TimeField(null=True, blank=True, help_text="Time of day for daily runs.")
    run_once_at = models.DateTimeField(null=True, blank=True)
    schedule_timezone = models.CharField(max_length=64, default="UTC")
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Check what both kinds share; subclasses add theirs through `_clean_own`."""
        errors: dict[str, list[str]] = {}
        _collect(errors, validate_job_authorization, self)
        _collect(errors, self._clean_folder)
        _collect(errors, self._clean_schedule)
        _collect(errors, self._clean_own)
        if errors:
            raise ValidationError(errors)

    def _clean_own(self) -> None:
        pass

    def _clean_folder(self) -> None:
        from authorizations.validation import validate_folder

        try:
            self.folder = validate_folder(self.folder)
        except ValidationError as exc:
            raise ValidationError({"folder": exc.messages}) from exc

    def _clean_schedule(self) -> None:
        from transfers.schedules import parse_cron, validate_timezone

        errors: dict[str, list[str]] = {}
        try:
            self.schedule_timezone = validate_timezone(self.schedule_timezone)
        except ValidationError as exc:
            errors["schedule_timezone"] = exc.messages
        kind = self.schedule_kind
        if kind == ScheduleKind.INTERVAL and not (self.interval_minutes or 0) >= 1:
            errors["interval_minutes"] = ["Enter the number of minutes between runs (1 or more)."]
        if kind == ScheduleKind.CRON:
            self.cron = " ".join(self.cron.split())
            _collect(errors, lambda: parse_cron(self.cron), field="cron")
        if kind == ScheduleKind.DAILY:
            # Cron precision is the minute; no time given means midnight.
            self.daily_time = (self.daily_time or time(0, 0)).replace(second=0, microsecond=0)
        if kind == ScheduleKind.ONCE:
            _collect(errors, self._clean_run_once_at, field="run_once_at")
        if errors:
            raise ValidationError(errors)

    def _clean_run_once_at(self) -> None:
        if self.run_once_at is None:
            raise ValidationError("Enter the date and time of the run.")
        if self.run_once_at > timezone.now():
            return
        # A time in the past is refused only when it is being set, so that a job that has
        # already run once can still be edited.
        before = type(self).objects.filter(pk=self.pk).values_list("run_once_at", flat=True)
        if self.pk is None or before.first() != self.run_once_at:
            raise ValidationError("Choose a date and time in the future.")


def _collect(errors: dict[str, list[str]], check, *args: Any, field: str | None = None) -> None:
    """Run ``check``; file its ValidationError by field into ``errors``."""
    try:
        check(*args)
    except ValidationError as exc:
        if field is not None or not hasattr(exc, "error_dict"):
            errors.setdefault(field or "__all__", []).extend(exc.messages)
        else:
            for name, messages in exc.message_dict.items():
                errors.setdefault(name, []).extend(messages)


class ImportJob(Job):
    class Format(models.TextChoices):
        AUTO = "", "Auto (by file extension)"
        CSV = "csv", "CSV"
        JSON = "json", "JSON array"
        JSONL = "jsonl", "JSON lines"

    class OnError(models.TextChoices):
        SKIP = "skip", "Skip bad rows and report them"
        FAIL = "fail", "Fail the file"

    class AfterImport(models.TextChoices):
        LEAVE = "leave", "Leave the file"
        DELETE = "delete", "Delete the file"
        MOVE = "move", "Move to an archive folder"

    pattern = models.CharField(max_length=255, default="*", help_text="Glob, e.g. members-*.csv*")
    format = models.CharField(max_length=8, choices=Format.choices, blank=True, default="")
    csv_delimiter = models.CharField(max_length=2, default=",")
    csv_quotechar = models.CharField(max_length=1, default='"')
    csv_encoding = models.CharField(max_length=32, default="utf-8")
    csv_header = models.BooleanField(default=True, help_text="The first row names the columns.")
    identity_field = models.CharField(max_length=255, default="email")
    field_mapping = models.JSONField(
        default=dict,
        blank=True,
        help_text='Source column → attribute name, e.g. {"E-mail": "email"}. When set, only '
        "mapped columns are imported.",
    )
    timestamp_field = models.CharField(
        max_length=255,
        blank=True,
        help_text="Column holding the record's time; an older record never overwrites newer "
        "values.",
    )
    on_error = models.CharField(max_length=8, choices=OnError.choices, default=OnError.SKIP)
    after_import = models.CharField(
        max_length=8, choices=AfterImport.choices, default=AfterImport.LEAVE
    )
    archive_folder = models.CharField(max_length=1024, blank=True)

    class Meta:
        ordering = ["partner__name", "name"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(after_import="move") | ~Q(archive_folder=""),
                name="importjob_move_needs_archive_folder",
            ),
        ]

    def _clean_own(self) -> None:
        from authorizations.validation import validate_folder

        errors: dict[str, list[str]] = {}
        if not self.pattern.strip():
            errors["pattern"] = ['Enter a file name pattern, e.g. "members-*.csv*" or "*".']
        if not self.identity_field.strip():
            errors["identity_field"] = ["Name the column that identifies a profile."]
        mapping = self.field_mapping
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in mapping.items()
        ):
            errors["field_mapping"] = [
                'Give an object of column → attribute names, e.g. {"E-mail": "email"}.'
            ]
        if self.after_import == self.AfterImport.MOVE:
            try:
                self.archive_folder = validate_folder(self.archive_folder)
            except ValidationError as exc:
                errors["archive_folder"] = exc.messages
            if not self.archive_folder and "archive_folder" not in errors:
                errors["archive_folder"] = ["Name the folder to move imported files to."]
        if errors:
            raise ValidationError(errors)


class ExportJob(Job):
    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        JSONL = "jsonl", "JSON lines"

    class Compression(models.TextChoices):
        NONE = "none", "None"
        GZIP = "gzip", "gzip"

    class Collision(models.TextChoices):
        FAIL = "fail", "Fail the run"
        COUNTER = "counter", "Add a counter (-1, -2, ...)"

    class EmptyAudience(models.TextChoices):
        HEADER_ONLY = "header_only", "Write a file with the header only"
        NO_FILE = "no_file", "Write no file"

    audience = models.ForeignKey(
        "profiles.Audience", on_delete=models.PROTECT, related_name="export_jobs"
    )
    fields = models.JSONField(
        default=list,
        blank=True,
        help_text='Ordered list of {"attribute": "email", "column": "Email"}; "identity" is '
        "always available.",
    )
    format = models.CharField(max_length=8, choices=Format.choices, default=Format.CSV)
    csv_delimiter = models.CharField(max_length=2, default=",")
    csv_header = models.BooleanField(default=True)
    compression = models.CharField(
        max_length=8, choices=Compression.choices, default=Compression.NONE
    )
    filename_template = models.CharField(
        max_length=255, default="export-{audience}-{YYYY}{MM}{DD}{HH}{mm}{ss}.csv"
    )
    collision = models.CharField(max_length=8, choices=Collision.choices, default=Collision.FAIL)
    write_manifest = models.BooleanField(default=False)
    empty_audience = models.CharField(
        max_length=16, choices=EmptyAudience.choices, default=EmptyAudience.HEADER_ONLY
    )

    class Meta:
        ordering = ["partner__name", "name"]

    def _clean_own(self) -> None:
        # Fields, file name template, CSV delimiter and compression: the rules live with
        # the export pipeline that applies them (normalises fields and the delimiter).
        from transfers.exports import validate_export_job

        validate_export_job(self)


class Run(models.Model):
    """One execution of an import or an export job, visible in the admin while it runs."""

    class Kind(models.TextChoices):
        IMPORT = "import", "Import"
        EXPORT = "export", "Export"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        PARTIAL = "partial", "Partial (some rows rejected)"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Manual"
        SCHEDULE = "schedule", "Schedule"
        API = "api", "API"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="runs")
    import_job = models.ForeignKey(
        ImportJob, on_delete=models.CASCADE, null=True, blank=True, related_name="runs"
    )
    export_job = models.ForeignKey(
        ExportJob, on_delete=models.CASCADE, null=True, blank=True, related_name="runs"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    files_seen = models.PositiveIntegerField(default=0)
    files_imported = models.PositiveIntegerField(default=0)
    files_skipped = models.PositiveIntegerField(default=0)
    files_failed = models.PositiveIntegerField(
        default=0, help_text="Files that could not be imported (bad data, wrong key...)."
    )
    rows_read = models.BigIntegerField(default=0)
    rows_upserted = models.BigIntegerField(default=0)
    rows_rejected = models.BigIntegerField(default=0)
    bytes_transferred = models.BigIntegerField(default=0)
    file_name = models.CharField(max_length=1024, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    skipped_files = models.JSONField(default=list, blank=True)
    rejected_rows = models.JSONField(
        default=list, blank=True, help_text="The first rejected rows: file, line, reason."
    )
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-queued_at", "-id"]
        indexes = [
            models.Index(fields=["import_job", "-queued_at"], name="run_import_job_recent"),
            models.Index(fields=["export_job", "-queued_at"], name="run_export_job_recent"),
            models.Index(fields=["partner", "-queued_at"], name="run_partner_recent"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(kind="import", import_job__isnull=False, export_job__isnull=True)
                    | Q(kind="export", export_job__isnull=False, import_job__isnull=True)
                ),
                name="run_belongs_to_exactly_one_job",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} run #{self.pk} ({self.status})"

    @property
    def job(self) -> Job | None:
        return self.import_job if self.kind == self.Kind.IMPORT else self.export_job

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class ImportedFile(models.Model):
    """The ledger that makes imports exactly-once per file.

    Written in the same transaction as the file's rows: a file is either in the profile
    store *and* here, or in neither.
    """

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="imported_files")
    run = models.ForeignKey(Run, on_delete=models.SET_NULL, null=True, related_name="files")
    name = models.CharField(max_length=1024)
    size = models.BigIntegerField()
    mtime = models.BigIntegerField(help_text="Modification time on the server (Unix seconds).")
    sha256 = models.CharField(max_length=64)
    duplicate_of = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="duplicates",
        help_text="Set when this file had the same content as an imported one and was skipped.",
    )
    rows_read = models.BigIntegerField(default=0)
    rows_upserted = models.BigIntegerField(default=0)
    rows_rejected = models.BigIntegerField(default=0)
    imported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-imported_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "name", "size", "mtime"], name="importedfile_once_per_version"
            ),
            # Exactly once by content: only one non-duplicate row per job and SHA-256.
            models.UniqueConstraint(
                fields=["job", "sha256"],
                condition=Q(duplicate_of__isnull=True),
                name="importedfile_once_per_content",
            ),
        ]
        indexes = [models.Index(fields=["job", "sha256"], name="importedfile_job_sha256")]

    def __str__(self) -> str:
        return self.name


class JobLock(models.Model):
    """A lease that keeps one job from running twice at once, across processes/machines.

    Taken with a conditional write; renewed while the run goes; a crashed worker's lease
    simply expires, so the lock is released on crash without anyone cleaning up.
    """

    key = models.CharField(max_length=100, unique=True)
    owner = models.CharField(max_length=255)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.key} held by {self.owner}"


def validate_job_authorization(job: Job) -> None:
    """Shared by both job kinds' clean(): the authorization must fit the job's partner."""
    authz = job.authorization if job.authorization_id else None
    if authz is None:
        return
    if job.partner_id and authz.partner_id != job.partner_id:
        raise ValidationError({"authorization": "This authorization belongs to another partner."})
    if not (authz.connects_out or authz.is_managed_account):
        raise ValidationError({"authorization": "Choose an SFTP authorization."})


# -- keeping beat's periodic tasks in step with the jobs (see transfers.schedules) ---------
@receiver(post_save, sender=ImportJob)
@receiver(post_save, sender=ExportJob)
def _sync_job_schedule(
    sender, instance: Job, raw: bool = False, using: str | None = None, **kwargs: Any
) -> None:
    if raw:  # loaddata: the fixture carries its own periodic tasks
        return
    from transfers.schedules import sync_schedule

    sync_schedule(instance, using)


@receiver(post_delete, sender=ImportJob)
@receiver(post_delete, sender=ExportJob)
def _remove_job_schedule(sender, instance: Job, using: str | None = None, **kwargs: Any) -> None:
    from transfers.schedules import remove_schedule

    remove_schedule(instance, using)
