"""Partner API for jobs and runs: scopes, validation, runs, and isolation between partners."""

from __future__ import annotations

import pytest
from django_celery_beat.models import PeriodicTask

from transfers import service
from transfers.models import ExportJob, ImportJob, Run


@pytest.fixture(autouse=True)
def enqueued(monkeypatch):
    """Runs started through the API, without a broker."""
    sent: list[int] = []
    monkeypatch.setattr(service, "enqueue_run", lambda run, attempt=1: sent.append(run.pk))
    return sent


def make_authz(partner, label: str = "Their server"):
    from authorizations.models import Authorization

    return Authorization.objects.create(
        partner=partner,
        label=label,
        method="sftp_client",
        host="sftp.example.net",
        username="lytics",
        password="not-a-real-password",
    )


@pytest.fixture
def acme_authz(acme):
    return make_authz(acme, "Acme server")


@pytest.fixture
def globex_authz(globex):
    return make_authz(globex, "Globex server")


@pytest.fixture
def acme_api(api_as, acme_client):
    return api_as(acme_client)


@pytest.fixture
def theirs(globex, globex_authz, audience):
    """Globex's jobs and runs, which Acme must never see."""
    imp = ImportJob.objects.create(partner=globex, authorization=globex_authz, name="globex in")
    exp = ExportJob.objects.create(
        partner=globex, authorization=globex_authz, audience=audience, name="globex out"
    )
    run = service.start_run(imp, Run.Trigger.MANUAL, enqueue=False)
    return {"imports": imp, "exports": exp, "runs": run}


def error_of(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == error and body["error_description"]
    return body


# -- imports --------------------------------------------------------------------------------
def test_create_list_read_change_delete_an_import_job(acme_api, acme, acme_authz):
    created = acme_api.post(
        "imports",
        {
            "name": "members",
            "authorization": acme_authz.pk,
            "pattern": "members-*.csv*",
            "schedule_kind": "cron",
            "cron": "0 3 * * *",
            "schedule_timezone": "Europe/Paris",
        },
    )
    assert created.status_code == 201, created.content
    body = created.json()
    job = ImportJob.objects.get(pk=body["id"])
    assert job.partner == acme and job.periodic_task_id is not None
    assert body["schedule"] == "cron 0 3 * * * (Europe/Paris)" and body["next_run_at"]
    assert body["last_run"] is None

    listing = acme_api.get("imports").json()
    assert listing["count"] == 1 and listing["results"][0]["name"] == "members"
    assert acme_api.get(f"imports/{job.pk}").json()["pattern"] == "members-*.csv*"

    changed = acme_api.patch(f"imports/{job.pk}", {"schedule_kind": "off", "enabled": False})
    assert changed.status_code == 200, changed.content
    job.refresh_from_db()
    assert job.periodic_task_id is None and not job.enabled

    assert acme_api.delete(f"imports/{job.pk}").status_code == 204
    assert not ImportJob.objects.filter(pk=job.pk).exists()


def test_put_is_not_offered(acme_api, acme, acme_authz):
    job = ImportJob.objects.create(partner=acme, authorization=acme_authz, name="x")
    error_of(acme_api.put(f"imports/{job.pk}", {"name": "y"}), 405, "method_not_allowed")


def test_validation_goes_through_the_model(acme_api, acme_authz):
    response = acme_api.post(
        "imports",
        {
            "name": "bad",
            "authorization": acme_authz.pk,
            "schedule_kind": "cron",
            "cron": "0 3 * *",
            "schedule_timezone": "Nowhere/City",
            "after_import": "move",
            "field_mapping": ["not", "a", "dict"],
        },
    )
    fields = error_of(response, 400, "invalid")["fields"]
    assert {"cron", "schedule_timezone", "archive_folder", "field_mapping"} <= set(fields)
    assert "five fields" in fields["cron"][0]
    assert not ImportJob.objects.exists()


def test_another_partners_authorization_cannot_be_used(acme_api, globex_authz, acme_authz):
    response = acme_api.post("imports", {"name": "x", "authorization": globex_authz.pk})
    fields = error_of(response, 400, "invalid")["fields"]
    assert str(globex_authz.pk) in fields["authorization"][0]  # as if it did not exist
    job = acme_api.post("imports", {"name": "x", "authorization": acme_authz.pk}).json()
    response = acme_api.patch(f"imports/{job['id']}", {"authorization": globex_authz.pk})
    assert error_of(response, 400, "invalid")["fields"]["authorization"]


# -- exports --------------------------------------------------------------------------------
def test_create_an_export_job_with_a_shared_audience(acme_api, acme, acme_authz, audience):
    payload = {"name": "not shared", "authorization": acme_authz.pk, "audience": audience.pk}
    refused = acme_api.post("exports", payload)
    assert str(audience.pk) in error_of(refused, 400, "invalid")["fields"]["audience"][0]
    audience.partners.add(acme)
    response = acme_api.post(
        "exports",
        {
            "name": "everyone daily",
            "authorization": acme_authz.pk,
            "audience": audience.pk,
            "fields": [{"attribute": "email", "column": "Email"}],
            "schedule_kind": "daily",
            "daily_time": "02:30",
            "schedule_timezone": "Europe/Paris",
        },
    )
    assert response.status_code == 201, response.content
    job = ExportJob.objects.get(pk=response.json()["id"])
    task = PeriodicTask.objects.get(pk=job.periodic_task_id)
    assert task.task == "transfers.tasks.scheduled_export"
    assert (task.crontab.hour, task.crontab.minute) == ("2", "30")
    bad = acme_api.post(
        "exports", {"name": "x", "authorization": acme_authz.pk, "audience": 999_999}
    )
    assert "audience" in error_of(bad, 400, "invalid")["fields"]


# -- runs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["imports", "exports"])
def test_post_runs_queues_a_run_and_answers_202(
    acme_api, acme, acme_authz, audience, enqueued, kind
):
    if kind == "imports":
        job = ImportJob.objects.create(partner=acme, authorization=acme_authz, name="in")
    else:
        job = ExportJob.objects.create(
            partner=acme, authorization=acme_authz, audience=audience, name="out"
        )
    response = acme_api.post(f"{kind}/{job.pk}/runs", {})
    assert response.status_code == 202, response.content
    body = response.json()
    run = Run.objects.get(pk=body["id"])
    assert (body["status"], body["trigger"], body["job"]) == ("queued", "api", job.pk)
    assert run.partner == acme and enqueued == [run.pk]
    assert response["Location"] == f"/api/v1/runs/{run.pk}"

    detail = acme_api.get(f"runs/{run.pk}").json()
    assert detail["kind"] == kind[:-1] and detail["rows_read"] == 0
    assert acme_api.get(f"{kind}/{job.pk}").json()["last_run"]["id"] == run.pk


def test_disabled_job_cannot_be_run(acme_api, acme, acme_authz):
    job = ImportJob.objects.create(partner=acme, authorization=acme_authz, name="x", enabled=False)
    error_of(acme_api.post(f"imports/{job.pk}/runs", {}), 409, "conflict")
    assert not Run.objects.exists()


def test_job_with_a_run_in_progress_cannot_be_deleted(acme_api, acme, acme_authz):
    job = ImportJob.objects.create(partner=acme, authorization=acme_authz, name="x")
    run = service.start_run(job, Run.Trigger.API, enqueue=False)
    Run.objects.filter(pk=run.pk).update(status="running")
    error_of(acme_api.delete(f"imports/{job.pk}"), 409, "conflict")


def test_runs_list_filters(acme_api, acme, acme_authz, audience):
    imp = ImportJob.objects.create(partner=acme, authorization=acme_authz, name="in")
    exp = ExportJob.objects.create(
        partner=acme, authorization=acme_authz, audience=audience, name="out"
    )
    first = service.start_run(imp, Run.Trigger.API, enqueue=False)
    service.start_run(exp, Run.Trigger.API, enqueue=False)
    Run.objects.filter(pk=first.pk).update(status="failed", error="Authentication refused.")
    runs = acme_api.get("runs").json()
    assert runs["count"] == 2
    assert [r["kind"] for r in acme_api.get("runs?kind=export").json()["results"]] == ["export"]
    failed = acme_api.get("runs?status=failed").json()["results"]
    assert [r["error"] for r in failed] == ["Authentication refused."]
    by_job = acme_api.get(f"runs?kind=import&job={imp.pk}").json()["results"]
    assert [r["id"] for r in by_job] == [first.pk]


# -- scopes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scope,method,path,needed",
    [
        ("jobs:write jobs:run", "get", "imports", "jobs:read"),
        ("jobs:write jobs:run", "get", "runs", "jobs:read"),
        ("jobs:read jobs:run", "post", "imports", "jobs:write"),
        ("jobs:read jobs:run", "patch", "imports/{id}", "jobs:write"),
        ("jobs:read jobs:run", "delete", "imports/{id}", "jobs:write"),
        ("jobs:read jobs:write", "post", "imports/{id}/runs", "jobs:run"),
        ("jobs:read jobs:write", "post", "exports/{eid}/runs", "jobs:run"),
    ],
)
def test_scopes(api_as, acme_client, acme, acme_authz, audience, scope, method, path, needed):
    job = ImportJob.objects.create(partner=acme, authorization=acme_authz, name="x")
    exp = ExportJob.objects.create(
        partner=acme, authorization=acme_authz, audience=audience, name="y"
    )
    api = api_as(acme_client, scope=scope)
    url = path.format(id=job.pk, eid=exp.pk)
    response = api.call(method, url, {} if method in ("post", "patch") else None)
    assert error_of(response, 403, "insufficient_scope")["scope"] == needed
    assert not Run.objects.exists()


def test_no_token_is_401(client):
    assert client.get("/api/v1/imports").status_code == 401
    assert client.post("/api/v1/imports/1/runs").status_code == 401


# -- isolation: another partner's objects are 404 on every endpoint ---------------------------
@pytest.mark.parametrize(
    "method,path,data",
    [
        ("get", "imports/{imports}", None),
        ("patch", "imports/{imports}", {"name": "mine now"}),
        ("delete", "imports/{imports}", None),
        ("post", "imports/{imports}/runs", {}),
        ("get", "exports/{exports}", None),
        ("patch", "exports/{exports}", {"name": "mine now"}),
        ("delete", "exports/{exports}", None),
        ("post", "exports/{exports}/runs", {}),
        ("get", "runs/{runs}", None),
    ],
)
def test_other_partners_objects_are_404(acme_api, theirs, method, path, data):
    ids = {name: obj.pk for name, obj in theirs.items()}
    response = acme_api.call(method, path.format(**ids), data)
    body = error_of(response, 404, "not_found")
    missing = acme_api.call(method, path.format(**{k: v + 10_000 for k, v in ids.items()}), data)
    assert missing.status_code == 404 and missing.json() == body  # indistinguishable
    assert ImportJob.objects.get(pk=ids["imports"]).name == "globex in"
    assert ExportJob.objects.filter(pk=ids["exports"]).exists()
    assert Run.objects.filter(partner=theirs["imports"].partner).count() == 1


def test_other_partners_objects_are_never_listed(acme_api, theirs):
    for path in ("imports", "exports", "runs", f"runs?job={theirs['imports'].pk}"):
        assert acme_api.get(path).json()["count"] == 0


def test_openapi_documents_the_job_endpoints(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    paths = response.json()["paths"]
    expected = {
        "/api/v1/imports",
        "/api/v1/imports/{id}",
        "/api/v1/imports/{id}/runs",
        "/api/v1/exports",
        "/api/v1/exports/{id}",
        "/api/v1/exports/{id}/runs",
        "/api/v1/runs",
        "/api/v1/runs/{id}",
    }
    assert expected <= set(paths)
    assert "202" in paths["/api/v1/imports/{id}/runs"]["post"]["responses"]
