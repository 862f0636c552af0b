"""Keep each job's django-celery-beat `PeriodicTask` in step with the job's schedule.

Beat (``DatabaseScheduler``) reads its schedule from the database, so a job's schedule is
a `PeriodicTask` row pointing at ``transfers.tasks.scheduled_import`` or
``scheduled_export`` with the job's id. It is rewritten on every save of the job (see the
signal receivers in `transfers.models`) and deleted with the job:

- off → no periodic task (deleted);
- interval → `IntervalSchedule` every N minutes;
- cron → `CrontabSchedule` in the job's timezone;
- daily → `CrontabSchedule` at that minute and hour in the job's timezone (midnight UTC
  by default). Celery evaluates a crontab in its own timezone, so a 02:30 Europe/Paris
  job runs once a day across DST changes (at 03:30 on the day 02:30 does not exist, once
  on the day it happens twice);
- once → `ClockedSchedule`, ``one_off`` (beat disables it after it has run).

A disabled job keeps its periodic task, disabled.
"""

from __future__ import annotations

import json
import logging
import zoneinfo
from datetime import datetime, time, timedelta
from functools import lru_cache

from celery.schedules import crontab
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)

from transfers.models import ExportJob, ImportJob, Job, ScheduleKind

log = logging.getLogger(__name__)

TASKS = {
    ImportJob: "transfers.tasks.scheduled_import",
    ExportJob: "transfers.tasks.scheduled_export",
}
# CrontabSchedule column widths: a longer field cannot be stored.
CRON_FIELD_MAX = {
    "minute": 240,
    "hour": 96,
    "day_of_month": 124,
    "month_of_year": 64,
    "day_of_week": 64,
}
CRON_ORDER = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


# -- validation (used by the jobs' clean()) -----------------------------------------------
@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_timezone(name: str) -> str:
    name = (name or "").strip()
    if name not in _timezones():
        raise ValidationError(
            f'Unknown time zone "{name}". Use a tz database name such as UTC, Europe/Paris '
            "or America/New_York.",
            code="timezone",
        )
    return name


def parse_cron(expression: str) -> dict[str, str]:
    """The five cron fields by name, validated by Celery's own parser."""
    fields = (expression or "").split()
    if len(fields) != 5:
        raise ValidationError(
            "A cron expression has five fields: minute hour day-of-month month day-of-week, "
            'e.g. "0 3 * * *" for 03:00 every day.',
            code="cron_fields",
        )
    parts = dict(zip(CRON_ORDER, fields, strict=True))
    for name, value in parts.items():
        if len(value) > CRON_FIELD_MAX[name]:
            raise ValidationError(f"The {name.replace('_', ' ')} field is too long.", code="cron")
    try:
        # Celery parses eagerly and refuses dates that never occur (e.g. 31 February);
        # estimating the next run catches whatever else it would only find at run time.
        crontab(**parts).remaining_estimate(timezone.now())
    except (ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise ValidationError(f"Invalid cron expression: {exc}", code="cron") from exc
    return parts


# -- keeping beat in step -------------------------------------------------------------------
def task_name(job: Job) -> str:
    kind = "import" if isinstance(job, ImportJob) else "export"
    return f"{kind} job {job.pk}: {job.name}"[:200]


def schedule_for(
    job: Job, current: PeriodicTask | None = None, using: str = "default"
) -> dict[str, object]:
    """The PeriodicTask schedule fields (exactly one set) for the job's schedule."""
    kind = job.schedule_kind
    fields: dict[str, object] = {"interval": None, "crontab": None, "clocked": None, "solar": None}
    if kind == ScheduleKind.INTERVAL:
        fields["interval"], _ = IntervalSchedule.objects.using(using).get_or_create(
            every=job.interval_minutes, period=IntervalSchedule.MINUTES
        )
    elif kind in (ScheduleKind.CRON, ScheduleKind.DAILY):
        fields["crontab"] = _crontab(job, using)
    elif kind == ScheduleKind.ONCE:
        clocked = current.clocked if current else None
        if clocked is None or clocked.clocked_time != job.run_once_at:
            clocked = ClockedSchedule.objects.using(using).create(clocked_time=job.run_once_at)
        fields["clocked"] = clocked
    return fields


def _crontab(job: Job, using: str) -> CrontabSchedule:
    tz = zoneinfo.ZoneInfo(job.schedule_timezone or "UTC")
    if job.schedule_kind == ScheduleKind.DAILY:
        at = job.daily_time or time(0, 0)
        parts = {
            "minute": str(at.minute),
            "hour": str(at.hour),
            "day_of_month": "*",
            "month_of_year": "*",
            "day_of_week": "*",
        }
    else:
        parts = parse_cron(job.cron)
    crontabs = CrontabSchedule.objects.using(using)
    return crontabs.filter(timezone=tz, **parts).first() or crontabs.create(timezone=tz, **parts)


def _current(job: Job, using: str) -> PeriodicTask | None:
    if job.periodic_task_id is None:
        return None
    return PeriodicTask.objects.using(using).filter(pk=job.periodic_task_id).first()


def sync_schedule(job: Job, using: str | None = None) -> PeriodicTask | None:
    """Create, update, disable or delete the job's periodic task to match the job."""
    using = using or job._state.db or "default"
    current = _current(job, using)
    if job.schedule_kind == ScheduleKind.OFF:
        _delete(current)
        _link(job, None, using)
        return None
    problem = schedule_problem(job)
    if problem:
        # Saved without full_clean() (code, shell): beat must not get a broken schedule.
        log.warning("job %s: schedule not applied: %s", job.pk, problem)
        _delete(current)
        _link(job, None, using)
        return None
    old_clocked = current.clocked if current else None
    task = current or PeriodicTask()
    for name, value in schedule_for(job, current, using).items():
        setattr(task, name, value)
    task.name = task_name(job)
    task.task = TASKS[type(job)]
    task.kwargs = json.dumps({"job_id": job.pk})
    task.args = "[]"
    task.one_off = job.schedule_kind == ScheduleKind.ONCE
    task.enabled = job.enabled and not _once_in_past(job)
    task.description = f"Kept in step with {type(job)._meta.verbose_name} {job.pk}; edit the job."
    task.save(using=using)
    if old_clocked is not None and old_clocked.pk != getattr(task.clocked, "pk", None):
        old_clocked.delete()  # clocked rows are per job, not shared: do not leave them behind
    _link(job, task, using)
    return task


def schedule_problem(job: Job) -> str | None:
    """Why the job's schedule cannot be given to beat, or None (what clean() reports)."""
    try:
        validate_timezone(job.schedule_timezone)
        if job.schedule_kind == ScheduleKind.CRON:
            parse_cron(job.cron)
    except ValidationError as exc:
        return " ".join(exc.messages)
    if job.schedule_kind == ScheduleKind.INTERVAL and not (job.interval_minutes or 0) >= 1:
        return "no interval"
    if job.schedule_kind == ScheduleKind.ONCE and job.run_once_at is None:
        return "no date and time"
    return None


def _once_in_past(job: Job) -> bool:
    # A one-off whose time has passed has run (or was missed): re-saving the job must not
    # make beat fire it again, since beat runs an overdue clocked task at once.
    return job.schedule_kind == ScheduleKind.ONCE and job.run_once_at <= timezone.now()


def _link(job: Job, task: PeriodicTask | None, using: str) -> None:
    task_id = task.pk if task else None
    if job.periodic_task_id != task_id:
        # An update, not save(): saving would run the post_save receiver again.
        type(job).objects.using(using).filter(pk=job.pk).update(periodic_task_id=task_id)
        job.periodic_task_id = task_id


def _delete(task: PeriodicTask | None) -> None:
    if task is None:
        return
    clocked = task.clocked
    task.delete()
    if clocked is not None:
        clocked.delete()


def remove_schedule(job: Job, using: str | None = None) -> None:
    _delete(_current(job, using or job._state.db or "default"))


def describe(job: Job) -> str:
    """The schedule in words, for lists."""
    kind = job.schedule_kind
    tz = job.schedule_timezone or "UTC"
    if kind == ScheduleKind.INTERVAL:
        return f"every {job.interval_minutes} min"
    if kind == ScheduleKind.CRON:
        return f"cron {job.cron} ({tz})"
    if kind == ScheduleKind.DAILY:
        return f"daily at {(job.daily_time or time(0, 0)):%H:%M} ({tz})"
    if kind == ScheduleKind.ONCE and job.run_once_at:
        local = timezone.localtime(job.run_once_at, zoneinfo.ZoneInfo(tz))
        return f"once at {local:%Y-%m-%d %H:%M} ({tz})"
    return "off"


def next_run(job: Job) -> datetime | None:
    """When beat will next start the job (None: not scheduled)."""
    task = PeriodicTask.objects.filter(pk=job.periodic_task_id, enabled=True).first()
    if task is None:
        return None
    now = timezone.now()
    if task.clocked_id:
        return task.clocked.clocked_time
    # Celery's estimate is relative to now, from the last run (or the task's last change).
    remaining = task.schedule.remaining_estimate(task.last_run_at or task.date_changed or now)
    return now + max(remaining, timedelta(0))
