"""A worker process for the crash-safety tests: set up, run (and be killed), inspect.

    python tests/support/import_worker.py setup '{"host": ..., "port": ..., ...}'
    python tests/support/import_worker.py run JOB_ID [--pause-after-batches N]
    python tests/support/import_worker.py inspect JOB_ID

The database is whatever DATABASE_URL says (a SQLite file, or the PostgreSQL test
database). ``run --pause-after-batches N`` prints ``BATCH k`` after each upsert batch and
stops for good after the N-th, in the middle of the file's transaction, so the test can
SIGKILL the process at a known point.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lyticsops.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402


def setup(spec: dict) -> None:
    from authorizations.models import Authorization, Method, Partner
    from transfers.models import ImportJob

    if spec.get("migrate"):
        call_command("migrate", verbosity=0, interactive=False)
    partner, _ = Partner.objects.get_or_create(slug="crash", defaults={"name": "Crash Test"})
    authz = Authorization.objects.create(
        partner=partner,
        label="crash sftp",
        method=Method.SFTP_CLIENT,
        host=spec["host"],
        port=spec["port"],
        username=spec["user"],
        private_key=spec["private_key"],
        folder=spec["folder"],
    )
    job = ImportJob.objects.create(
        partner=partner,
        authorization=authz,
        name="crash",
        pattern=spec.get("pattern", "*"),
        identity_field="email",
    )
    print(json.dumps({"job": job.pk}), flush=True)


def run(job_id: int, pause_after: int | None) -> None:
    from profiles import store
    from transfers.imports import run_import
    from transfers.models import ImportJob, Run

    original_send = store.ProfileWriter._send

    def send(self: store.ProfileWriter) -> None:
        sent = self.batches
        original_send(self)
        if self.batches == sent:
            return  # nothing was pending
        if self._pipeline is not None:
            self._pipeline.wait()  # the batch is in the database (uncommitted)
        print(f"BATCH {self.batches}", flush=True)
        if pause_after is not None and self.batches >= pause_after:
            time.sleep(300)  # mid-file, transaction open: waiting for SIGKILL

    store.ProfileWriter._send = send  # type: ignore[method-assign]
    job = ImportJob.objects.get(pk=job_id)
    run_obj = Run.objects.create(kind=Run.Kind.IMPORT, partner=job.partner, import_job=job)
    run_import(run_obj)
    run_obj.refresh_from_db()
    print("DONE " + json.dumps({"imported": run_obj.files_imported}), flush=True)


def inspect(job_id: int) -> None:
    from profiles.models import Profile
    from transfers.models import ImportedFile

    ledger = list(
        ImportedFile.objects.filter(job_id=job_id).values("name", "rows_upserted", "duplicate_of")
    )
    print(json.dumps({"profiles": Profile.objects.count(), "ledger": ledger}), flush=True)


def main(argv: list[str]) -> None:
    command = argv[0]
    if command == "setup":
        setup(json.loads(argv[1]))
    elif command == "run":
        pause = int(argv[3]) if len(argv) > 3 and argv[2] == "--pause-after-batches" else None
        run(int(argv[1]), pause)
    elif command == "inspect":
        inspect(int(argv[1]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
