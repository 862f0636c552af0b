"""A separate process for the kill test, with its own database (DATABASE_URL).

    python -m tests.support.export_worker setup '<json>'   # migrate, create data; prints job id
    python -m tests.support.export_worker run <job id> [--slow] [--sweep-now]

``--slow`` paces the writer so that a test can watch the ``.part`` file grow and kill the
process mid-upload; ``--sweep-now`` lets the run remove any stale ``.part`` at once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from typing import Any

WHEN = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


def setup(config: dict[str, Any]) -> None:
    from django.core.management import call_command

    from authorizations.models import Authorization, Method, Partner
    from profiles.models import Audience
    from profiles.store import upsert_profiles
    from transfers.models import ExportJob

    call_command("migrate", verbosity=0, interactive=False)
    partner = Partner.objects.create(name="Acme", slug="acme")
    authz = Authorization.objects.create(
        partner=partner,
        label="Acme SFTP",
        method=Method.SFTP_CLIENT,
        host=config["host"],
        port=config["port"],
        username=config["user"],
        private_key=config["private_key"],
    )
    audience = Audience.objects.create(name="Members", slug="members")
    records = ((f"user{i:06d}@example.com", {"n": i}, None) for i in range(config["rows"]))
    upsert_profiles(records)
    job = ExportJob.objects.create(
        partner=partner,
        authorization=authz,
        audience=audience,
        name="members",
        fields=["identity", "n"],
        filename_template="members-{YYYY}{MM}{DD}.csv",
    )
    print(job.pk)


def run(job_id: int, *, slow: bool, sweep_now: bool) -> None:
    from django.conf import settings

    from transfers import exports, writers
    from transfers.models import ExportJob, Run

    if sweep_now:
        settings.EXPORT_STALE_PART_SECONDS = 0
    if slow:
        settings.EXPORT_CHUNK_SIZE = 500
        writers.BUFFER_SIZE = 64 * 1024  # reach the server in small steps
        original = writers.CsvWriter.write_rows

        def paced(self: writers.CsvWriter, rows: Any) -> None:
            original(self, rows)
            time.sleep(0.03)

        writers.CsvWriter.write_rows = paced  # type: ignore[method-assign]
    job = ExportJob.objects.get(pk=job_id)
    run_ = Run.objects.create(
        kind=Run.Kind.EXPORT,
        partner=job.partner,
        export_job=job,
        status=Run.Status.RUNNING,
        started_at=WHEN,
    )
    exports.run_export(run_)


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lyticsops.settings")
    import django

    django.setup()
    if argv[0] == "setup":
        setup(json.loads(argv[1]))
    elif argv[0] == "run":
        run(int(argv[1]), slow="--slow" in argv, sweep_now="--sweep-now" in argv)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
