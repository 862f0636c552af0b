"""Fixtures for jobs and runs: an SFTP authorization, an audience, job factories, and a
fake pipeline (tests.support.fake_runs) that the dispatcher can be pointed at."""

from __future__ import annotations

from collections.abc import Callable

import pytest

FAKE_RUNNERS = {
    "import": "tests.support.fake_runs.run",
    "export": "tests.support.fake_runs.run",
}


@pytest.fixture
def sftp_authorization(partner):
    from authorizations.models import Authorization, Method

    return Authorization.objects.create(
        partner=partner,
        label="Acme SFTP",
        method=Method.SFTP_CLIENT,
        host="sftp.example.com",
        username="acme",
        password="not-a-real-password",
    )


@pytest.fixture
def other_authorization(other_partner):
    from authorizations.models import Authorization, Method

    return Authorization.objects.create(
        partner=other_partner,
        label="Globex SFTP",
        method=Method.SFTP_CLIENT,
        host="sftp.globex.example",
        username="globex",
        password="not-a-real-password",
    )


@pytest.fixture
def audience(db):
    from profiles.models import Audience

    return Audience.objects.create(name="Everyone", slug="everyone")


@pytest.fixture
def make_import_job(sftp_authorization) -> Callable[..., object]:
    from transfers.models import ImportJob

    def make(name: str = "members", **fields):
        fields.setdefault("partner", sftp_authorization.partner)
        fields.setdefault("authorization", sftp_authorization)
        return ImportJob.objects.create(name=name, **fields)

    return make


@pytest.fixture
def make_export_job(sftp_authorization, audience) -> Callable[..., object]:
    from transfers.models import ExportJob

    def make(name: str = "everyone", **fields):
        fields.setdefault("partner", sftp_authorization.partner)
        fields.setdefault("authorization", sftp_authorization)
        fields.setdefault("audience", audience)
        return ExportJob.objects.create(name=name, **fields)

    return make


@pytest.fixture
def fake_pipeline(settings):
    """Point the dispatcher at tests.support.fake_runs (behaviour from the job's name)."""
    settings.TRANSFERS_RUNNERS = dict(FAKE_RUNNERS)
    return settings.TRANSFERS_RUNNERS
