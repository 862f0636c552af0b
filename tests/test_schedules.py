"""Job schedules: beat's PeriodicTask kept in step with each job; validation; DST."""

from __future__ import annotations

import json
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, PeriodicTask

from transfers import schedules
from transfers.models import ExportJob, ImportJob

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def job_tasks():
    # Other features may add periodic tasks of their own (e.g. by a data migration).
    return PeriodicTask.objects.filter(task__startswith="transfers.tasks.scheduled_")


def task_of(job) -> PeriodicTask:
    job.refresh_from_db()
    return PeriodicTask.objects.get(pk=job.periodic_task_id)


# -- kept in step ---------------------------------------------------------------------------
def test_off_by_default_means_no_periodic_task(make_import_job):
    job = make_import_job()
    assert job.periodic_task_id is None
    assert not job_tasks().exists()


def test_interval_then_cron_then_disabled_then_off(make_import_job):
    job = make_import_job(schedule_kind="interval", interval_minutes=15)
    task = task_of(job)
    assert task.task == "transfers.tasks.scheduled_import"
    assert json.loads(task.kwargs) == {"job_id": job.pk}
    assert task.enabled and task.interval.every == 15 and task.interval.period == "minutes"
    assert task.crontab is None
    assert task.name == f"import job {job.pk}: members"

    job.schedule_kind, job.cron, job.schedule_timezone = (
        "cron",
        "*/10 6-18 * * mon-fri",
        "Asia/Tokyo",
    )
    job.name = "renamed"
    job.save()
    task = task_of(job)
    assert task.interval is None
    cron = task.crontab
    assert (cron.minute, cron.hour, cron.day_of_month, cron.month_of_year, cron.day_of_week) == (
        "*/10",
        "6-18",
        "*",
        "*",
        "mon-fri",
    )
    assert str(cron.timezone) == "Asia/Tokyo"
    assert task.name.endswith(": renamed")

    job.enabled = False
    job.save()
    assert task_of(job).enabled is False
    assert job_tasks().count() == 1  # the same row, updated

    job.schedule_kind = "off"
    job.save()
    job.refresh_from_db()
    assert job.periodic_task_id is None
    assert not job_tasks().exists()


def test_daily_defaults_to_midnight_utc(make_export_job):
    job = make_export_job(schedule_kind="daily")
    task = task_of(job)
    assert task.task == "transfers.tasks.scheduled_export"
    assert (task.crontab.minute, task.crontab.hour, str(task.crontab.timezone)) == ("0", "0", "UTC")


def test_daily_at_a_time_in_a_timezone(make_export_job):
    job = make_export_job(
        schedule_kind="daily", daily_time=time(2, 30), schedule_timezone="Europe/Paris"
    )
    cron = task_of(job).crontab
    assert (cron.minute, cron.hour, cron.day_of_week, str(cron.timezone)) == (
        "30",
        "2",
        "*",
        "Europe/Paris",
    )


def test_once_is_a_one_off_clocked_task(make_export_job):
    at = timezone.now() + timedelta(days=1)
    job = make_export_job(schedule_kind="once", run_once_at=at)
    task = task_of(job)
    assert task.one_off and task.enabled and task.clocked.clocked_time == at
    job.save()  # re-saving keeps the same clocked row
    assert ClockedSchedule.objects.count() == 1
    job.run_once_at = at + timedelta(hours=1)
    job.save()
    assert ClockedSchedule.objects.get().clocked_time == at + timedelta(hours=1)
    # Once its time has passed, saving the job must not make beat fire it again.
    with time_machine.travel(at + timedelta(days=1)):
        job.save()
    assert task_of(job).enabled is False


@pytest.mark.parametrize("bulk", [False, True], ids=["instance", "queryset"])
def test_deleting_the_job_deletes_its_periodic_task(make_import_job, bulk):
    job = make_import_job(schedule_kind="interval", interval_minutes=5)
    assert job_tasks().count() == 1
    if bulk:
        ImportJob.objects.filter(pk=job.pk).delete()
    else:
        job.delete()
    assert not job_tasks().exists()


def test_each_job_has_its_own_task(make_import_job, make_export_job):
    a = make_import_job(name="a", schedule_kind="interval", interval_minutes=5)
    b = make_import_job(name="b", schedule_kind="interval", interval_minutes=5)
    c = make_export_job(name="c", schedule_kind="daily")
    assert len({a.periodic_task_id, b.periodic_task_id, c.periodic_task_id} - {None}) == 3
    assert job_tasks().count() == 3


def test_describe_and_next_run(make_export_job):
    with time_machine.travel(datetime(2025, 6, 1, 12, 0, tzinfo=UTC), tick=False):
        job = make_export_job(
            schedule_kind="daily", daily_time=time(2, 30), schedule_timezone="Europe/Paris"
        )
        assert schedules.describe(job) == "daily at 02:30 (Europe/Paris)"
        # 02:30 in Paris in June is 00:30 UTC, the next day.
        assert schedules.next_run(job) == datetime(2025, 6, 2, 0, 30, tzinfo=UTC)
    job.enabled = False
    job.save()
    assert schedules.next_run(job) is None


# -- validation ---------------------------------------------------------------------------
def _errors(job) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        job.full_clean()
    return caught.value.message_dict


def _new_import(sftp_authorization, **fields) -> ImportJob:
    return ImportJob(
        partner=sftp_authorization.partner,
        authorization=sftp_authorization,
        name="members",
        **fields,
    )


@pytest.mark.parametrize(
    "cron,message",
    [
        ("0 3 * *", "five fields"),
        ("61 * * * *", "Invalid cron expression"),
        ("0 0 31 2 *", "never occurs"),
        ("0 0 * * someday", "Invalid cron expression"),
        ("", "five fields"),
    ],
)
def test_bad_cron_expressions_are_refused(sftp_authorization, cron, message):
    errors = _errors(_new_import(sftp_authorization, schedule_kind="cron", cron=cron))
    assert message in " ".join(errors["cron"])


def test_good_cron_expression_is_normalised(sftp_authorization):
    job = _new_import(sftp_authorization, schedule_kind="cron", cron="  0   3 * * 1-5 ")
    job.full_clean()
    assert job.cron == "0 3 * * 1-5"


@pytest.mark.parametrize("tz", ["Mars/Olympus", "CEST", "../etc/passwd", "utc "])
def test_unknown_timezone_is_refused(sftp_authorization, tz):
    job = _new_import(sftp_authorization, schedule_kind="daily", schedule_timezone=tz)
    assert "Unknown time zone" in _errors(job)["schedule_timezone"][0]


def test_interval_needs_minutes(sftp_authorization):
    errors = _errors(_new_import(sftp_authorization, schedule_kind="interval"))
    assert "minutes between runs" in errors["interval_minutes"][0]


def test_once_needs_a_future_time(sftp_authorization):
    errors = _errors(_new_import(sftp_authorization, schedule_kind="once"))
    assert "date and time" in errors["run_once_at"][0]
    past = timezone.now() - timedelta(hours=1)
    errors = _errors(_new_import(sftp_authorization, schedule_kind="once", run_once_at=past))
    assert "in the future" in errors["run_once_at"][0]


def test_once_in_the_past_does_not_block_editing_other_fields(make_import_job):
    at = timezone.now() + timedelta(minutes=5)
    job = make_import_job(schedule_kind="once", run_once_at=at)
    with time_machine.travel(at + timedelta(days=2)):
        job.refresh_from_db()
        job.name = "renamed"
        job.full_clean()


def test_daily_time_is_cut_to_the_minute(sftp_authorization):
    job = _new_import(sftp_authorization, schedule_kind="daily", daily_time=time(7, 5, 33))
    job.full_clean()
    assert job.daily_time == time(7, 5)


def test_authorization_of_another_partner_is_refused(sftp_authorization, other_authorization):
    job = _new_import(sftp_authorization)
    job.authorization = other_authorization
    assert "another partner" in _errors(job)["authorization"][0]


def test_export_fields_and_template_are_checked(sftp_authorization, audience):
    job = ExportJob(
        partner=sftp_authorization.partner,
        authorization=sftp_authorization,
        audience=audience,
        name="x",
        fields=[{"column": "no attribute"}],
        filename_template="../up.csv",
    )
    errors = _errors(job)
    assert set(errors) >= {"fields", "filename_template"}


# -- DST: a daily 02:30 Europe/Paris job runs once a day ----------------------------------
def simulate_beat(schedule, start: datetime, days: int, poll: int = 300) -> list[datetime]:
    """What beat does, at most ``poll`` seconds apart: ask is_due, run when due."""
    runs, last, now = [], start, start
    end = start + timedelta(days=days)
    while now < end:
        with time_machine.travel(now, tick=False):
            due, next_check = schedule.is_due(last)
        if due:
            runs.append(now)
            last = now
        now += timedelta(seconds=max(1, min(poll, next_check)))
    return runs


@pytest.mark.parametrize(
    "start,expected",
    [
        # Spring forward (2025-03-30): 02:30 does not exist that day; it runs at 03:30.
        (
            datetime(2025, 3, 28, tzinfo=UTC),
            ["03-28 02:30+01", "03-29 02:30+01", "03-30 03:30+02", "03-31 02:30+02"],
        ),
        # Fall back (2025-10-26): 02:30 happens twice; it runs at the first one only.
        (
            datetime(2025, 10, 24, tzinfo=UTC),
            ["10-24 02:30+02", "10-25 02:30+02", "10-26 02:30+02", "10-27 02:30+01"],
        ),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_daily_paris_job_runs_once_a_day_across_dst(make_export_job, start, expected):
    job = make_export_job(
        schedule_kind="daily", daily_time=time(2, 30), schedule_timezone="Europe/Paris"
    )
    schedule = task_of(job).schedule  # the object beat itself evaluates
    runs = simulate_beat(schedule, start, days=4)
    local = [r.astimezone(PARIS) for r in runs]
    assert [f"{r:%m-%d %H:%M%z}"[:-2] for r in local] == expected
    assert len({r.date() for r in local}) == len(local)  # never twice on one day


def test_remaining_estimate_across_spring_forward(make_export_job):
    job = make_export_job(
        schedule_kind="daily", daily_time=time(2, 30), schedule_timezone="Europe/Paris"
    )
    schedule = task_of(job).schedule
    last_run = datetime(2025, 3, 29, 1, 30, tzinfo=UTC)  # 02:30 CET on Saturday
    with time_machine.travel(datetime(2025, 3, 29, 12, 0, tzinfo=UTC), tick=False):
        remaining = schedule.remaining_estimate(last_run)
    next_run = datetime(2025, 3, 29, 12, 0, tzinfo=UTC) + remaining
    # Sunday 03:30 CEST = 01:30 UTC: 24 h after the previous run, as the day is 23 h long.
    assert next_run == datetime(2025, 3, 30, 1, 30, tzinfo=UTC)
    assert next_run.astimezone(PARIS).date() == date(2025, 3, 30)


def test_a_job_saved_without_validation_never_gives_beat_a_broken_schedule(make_import_job):
    job = make_import_job(schedule_kind="interval", interval_minutes=5)
    job.schedule_kind, job.cron = "cron", "not a cron"
    job.save()  # no full_clean(): code or a shell
    job.refresh_from_db()
    assert job.periodic_task_id is None and not job_tasks().exists()
    job = make_import_job(name="no minutes", schedule_kind="interval")
    assert job.periodic_task_id is None
