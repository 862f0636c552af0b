"""Admin for jobs, runs, the import ledger, profiles and audiences."""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from profiles.models import Audience, Profile
from transfers import service
from transfers.models import ImportedFile, ImportJob, Run


@pytest.fixture
def enqueued(monkeypatch):
    """Runs the admin starts, without a broker: the task ids handed to Celery."""
    sent: list[int] = []
    monkeypatch.setattr(service, "enqueue_run", lambda run, attempt=1: sent.append(run.pk))
    return sent


def import_form(authz, **overrides) -> dict[str, str]:
    data = {
        "partner": str(authz.partner_id),
        "authorization": str(authz.pk),
        "name": "Members",
        "enabled": "on",
        "folder": "in",
        "pattern": "members-*.csv*",
        "after_import": "leave",
        "archive_folder": "",
        "format": "",
        "csv_delimiter": ",",
        "csv_quotechar": '"',
        "csv_encoding": "utf-8",
        "csv_header": "on",
        "identity_field": "email",
        "field_mapping": "{}",
        "timestamp_field": "",
        "on_error": "skip",
        "schedule_kind": "off",
        "interval_minutes": "",
        "cron": "",
        "daily_time": "",
        "run_once_at_0": "",
        "run_once_at_1": "",
        "schedule_timezone": "UTC",
        "runs-TOTAL_FORMS": "0",
        "runs-INITIAL_FORMS": "0",
        "runs-MIN_NUM_FORMS": "0",
        "runs-MAX_NUM_FORMS": "0",
    }
    data.update(overrides)
    return data


# -- jobs -----------------------------------------------------------------------------------
def test_add_import_job_with_a_cron_schedule(staff_client, sftp_authorization):
    url = reverse("admin:transfers_importjob_add")
    page = staff_client.get(url).content.decode()
    for group in ("Files", "Format", "Schedule"):
        assert f">{group}<" in page
    response = staff_client.post(
        url,
        import_form(
            sftp_authorization,
            schedule_kind="cron",
            cron="0 3 * * *",
            schedule_timezone="Europe/Paris",
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    job = ImportJob.objects.get()
    task = PeriodicTask.objects.get(pk=job.periodic_task_id)
    assert (task.crontab.hour, str(task.crontab.timezone)) == ("3", "Europe/Paris")


def test_invalid_schedule_errors_are_shown_on_their_fields(staff_client, sftp_authorization):
    url = reverse("admin:transfers_importjob_add")
    response = staff_client.post(
        url,
        import_form(
            sftp_authorization, schedule_kind="cron", cron="0 25 * * *", schedule_timezone="Mars"
        ),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Invalid cron expression" in errors["cron"][0]
    assert "Unknown time zone" in errors["schedule_timezone"][0]
    assert not ImportJob.objects.exists()


def test_job_list_shows_last_run_status_and_filters(
    staff_client, make_import_job, other_authorization
):
    job = make_import_job(name="nightly members")
    old = service.start_run(job, Run.Trigger.MANUAL, enqueue=False)
    Run.objects.filter(pk=old.pk).update(status="succeeded")
    last = service.start_run(job, Run.Trigger.MANUAL, enqueue=False)
    Run.objects.filter(pk=last.pk).update(status="failed")
    make_import_job(name="never run")
    make_import_job(
        name="theirs", partner=other_authorization.partner, authorization=other_authorization
    )
    page = staff_client.get(reverse("admin:transfers_importjob_changelist")).content.decode()
    assert "nightly members" in page and "run-failed" in page and f"#{last.pk}" in page
    assert "never" in page
    for name in ("partner__id__exact", "enabled__exact", "schedule_kind__exact"):
        assert name in page  # the filters
    filtered = staff_client.get(
        reverse("admin:transfers_importjob_changelist"), {"schedule_kind__exact": "cron"}
    )
    assert "nightly members" not in filtered.content.decode()


def test_run_now_action(staff_client, make_import_job, make_export_job, enqueued):
    jobs = [make_import_job(name="a"), make_import_job(name="b")]
    response = staff_client.post(
        reverse("admin:transfers_importjob_changelist"),
        {"action": "run_now_action", "_selected_action": [j.pk for j in jobs]},
        follow=True,
    )
    assert "Queued 2 run(s)" in response.content.decode()
    runs = Run.objects.filter(trigger="manual")
    assert runs.count() == 2 and sorted(enqueued) == sorted(r.pk for r in runs)

    export = make_export_job()
    staff_client.post(
        reverse("admin:transfers_exportjob_changelist"),
        {"action": "run_now_action", "_selected_action": [export.pk]},
    )
    assert export.runs.get().kind == "export"


def test_run_now_button_on_the_change_page(staff_client, make_import_job, enqueued):
    job = make_import_job()
    change_url = reverse("admin:transfers_importjob_change", args=[job.pk])
    page = staff_client.get(change_url).content.decode()
    run_now = reverse("admin:transfers_importjob_run_now", args=[job.pk])
    assert f'action="{run_now}"' in page and 'id="run-now"' in page
    assert staff_client.get(run_now).status_code == 403  # POST only
    response = staff_client.post(run_now)
    run = Run.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:transfers_run_change", args=[run.pk])
    assert (run.trigger, run.status, enqueued) == ("manual", "queued", [run.pk])


def test_change_page_shows_recent_runs_read_only(staff_client, make_import_job):
    job = make_import_job()
    for _ in range(12):
        service.start_run(job, Run.Trigger.MANUAL, enqueue=False)
    page = staff_client.get(reverse("admin:transfers_importjob_change", args=[job.pk]))
    html = page.content.decode()
    assert "Recent runs (last 10)" in html
    assert len(page.context["inline_admin_formsets"][0].formset.queryset) == 10
    assert 'name="runs-0-id"' not in html or "readonly" in html


def test_editing_a_job_from_the_admin_updates_its_schedule(
    staff_client, make_import_job, sftp_authorization
):
    job = make_import_job(schedule_kind="interval", interval_minutes=5)
    url = reverse("admin:transfers_importjob_change", args=[job.pk])
    data = import_form(sftp_authorization, schedule_kind="off")
    response = staff_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    job.refresh_from_db()
    assert job.periodic_task_id is None


# -- runs -----------------------------------------------------------------------------------
def test_export_run_page_shows_rows_written_and_no_import_sections(staff_client, make_export_job):
    run = service.start_run(make_export_job(), Run.Trigger.MANUAL, enqueue=False)
    Run.objects.filter(pk=run.pk).update(status="succeeded", rows_read=4321, file_name="out.csv")
    html = staff_client.get(reverse("admin:transfers_run_change", args=[run.pk])).content.decode()
    assert "Rows written" in html and "4321" in html and "out.csv" in html
    assert "Rejected rows" not in html and "Files imported" not in html


def test_run_page_shows_counters_rejected_rows_files_log_and_error(staff_client, make_import_job):
    run = service.start_run(make_import_job(), Run.Trigger.MANUAL, enqueue=False)
    Run.objects.filter(pk=run.pk).update(
        status="partial",
        started_at=timezone.now(),
        finished_at=timezone.now(),
        rows_read=12345,
        rows_rejected=2,
        rejected_rows=[
            {"file": "members-1.csv", "line": 7, "reason": "missing identity <email>"},
            {"file": "members-1.csv", "line": 9, "reason": "bad date"},
        ],
        skipped_files=[{"name": "m-2.csv.part", "reason": "still being uploaded", "failed": False}],
        log="2025-01-01 00:00:00 Attempt 1 started\n",
        error="1 file(s) could not be imported",
    )
    response = staff_client.get(reverse("admin:transfers_run_change", args=[run.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "12345" in html and "still being uploaded" in html and "Attempt 1 started" in html
    assert "<td>7</td>" in html and "missing identity &lt;email&gt;" in html  # escaped
    assert "1 file(s) could not be imported" in html
    assert 'http-equiv="refresh"' not in html  # finished: no reloading
    assert 'name="_save"' not in html  # read-only


@pytest.mark.parametrize("status", ["queued", "running"])
def test_unfinished_run_page_refreshes_itself(staff_client, make_import_job, status):
    run = service.start_run(make_import_job(), Run.Trigger.MANUAL, enqueue=False)
    Run.objects.filter(pk=run.pk).update(status=status, rows_read=500, bytes_transferred=4096)
    html = staff_client.get(reverse("admin:transfers_run_change", args=[run.pk])).content.decode()
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', html)
    assert "500" in html and "4096" in html


def test_runs_are_read_only_and_go_with_their_job(staff_client, make_import_job):
    job = make_import_job()
    run = service.start_run(job, Run.Trigger.MANUAL, enqueue=False)
    assert staff_client.get(reverse("admin:transfers_run_add")).status_code == 403
    listing = staff_client.get(
        reverse("admin:transfers_run_changelist"), {"status__exact": "queued"}
    )
    assert reverse("admin:transfers_run_change", args=[run.pk]) in listing.content.decode()
    ImportedFile.objects.create(job=job, run=run, name="a.csv", size=1, mtime=1, sha256="0" * 64)
    delete_url = reverse("admin:transfers_importjob_delete", args=[job.pk])
    response = staff_client.post(delete_url, {"post": "yes"})
    assert response.status_code == 302
    assert not Run.objects.exists() and not ImportedFile.objects.exists()


def test_imported_file_ledger_is_listed_read_only(staff_client, make_import_job):
    job = make_import_job()
    ImportedFile.objects.create(
        job=job, name="members-1.csv", size=10, mtime=1_700_000_000, sha256="ab" * 32
    )
    html = staff_client.get(reverse("admin:transfers_importedfile_changelist")).content.decode()
    assert "members-1.csv" in html and "2023-11-14 22:13:20 UTC" in html
    assert staff_client.get(reverse("admin:transfers_importedfile_add")).status_code == 403


# -- profiles and audiences -----------------------------------------------------------------
def test_profile_search_and_pretty_attributes(staff_client, db):
    profile = Profile.objects.create(identity="ada@example.com", attributes={"city": "Zürich"})
    Profile.objects.create(identity="bob@example.com", attributes={})
    url = reverse("admin:profiles_profile_changelist")
    html = staff_client.get(url, {"q": "ada@example.com"}).content.decode()
    assert "ada@example.com" in html and "bob@example.com" not in html
    html = staff_client.get(url, {"q": "example"}).content.decode()
    assert "ada@example.com" in html and "bob@example.com" in html
    page = staff_client.get(reverse("admin:profiles_profile_change", args=[profile.pk]))
    assert "&quot;city&quot;: &quot;Zürich&quot;" in page.content.decode()  # indented JSON
    assert 'name="_save"' not in page.content.decode()


def test_audience_conditions_are_validated_on_the_field(staff_client, db):
    url = reverse("admin:profiles_audience_add")
    bad = [{"field": "country", "op": "like", "value": "FR"}]
    response = staff_client.post(url, {"name": "FR", "slug": "fr", "conditions": json.dumps(bad)})
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["conditions"]
    assert "condition 1: 'op' must be one of" in errors[0]
    response = staff_client.post(url, {"name": "FR", "slug": "fr", "conditions": "[{oops"})
    assert "conditions" in response.context["adminform"].form.errors
    good = [{"field": "country", "op": "eq", "value": "FR"}]
    response = staff_client.post(url, {"name": "FR", "slug": "fr", "conditions": json.dumps(good)})
    assert response.status_code == 302
    assert Audience.objects.get(slug="fr").conditions == good


def test_audience_page_shows_member_count_and_preview(staff_client, db):
    Profile.objects.create(identity="a", attributes={"country": "FR"})
    Profile.objects.create(identity="b", attributes={"country": "FR"})
    Profile.objects.create(identity="c", attributes={"country": "DE"})
    audience = Audience.objects.create(
        name="France", slug="france", conditions=[{"field": "country", "op": "eq", "value": "FR"}]
    )
    html = staff_client.get(
        reverse("admin:profiles_audience_change", args=[audience.pk])
    ).content.decode()
    assert "2 profile(s)" in html and 'id="audience-preview"' in html
    preview = reverse("admin:profiles_audience_preview_count")
    assert preview in html  # the page's script asks it on load and on edit
    everyone = staff_client.get(preview, {"conditions": "[]"}).json()
    assert everyone == {"count": 3}
    de = json.dumps([{"field": "country", "op": "in", "value": ["DE"]}])
    assert staff_client.get(preview, {"conditions": de}).json() == {"count": 1}
    assert "errors" in staff_client.get(preview, {"conditions": '[{"op": "eq"}]'}).json()
    assert "Not valid JSON" in staff_client.get(preview, {"conditions": "[{"}).json()["errors"][0]


def test_preview_needs_staff(client, db):
    response = client.get(reverse("admin:profiles_audience_preview_count"))
    assert response.status_code == 302 and "/login/" in response["Location"]
