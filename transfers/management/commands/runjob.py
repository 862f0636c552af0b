"""``python manage.py runjob JOB_ID [--export]``: run a job now, here, and print the run.

For operators and tests: the run is recorded like any other (trigger "manual") but
executed in this process instead of by a worker. It still takes the job's lock, so it
never overlaps a worker's run of the same job. A temporary error is not retried: the run
fails with a message saying so. The exit status is 0 when the run succeeded or was
partial, 1 when it failed.
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

from transfers import service
from transfers.models import ExportJob, ImportJob, Run


class Command(BaseCommand):
    help = "Run an import job (or an export job with --export) now and print the run as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)
        parser.add_argument("--export", action="store_true", help="JOB_ID is an export job.")

    def handle(self, *args, job_id: int, export: bool, **options) -> None:
        model = ExportJob if export else ImportJob
        job = model.objects.filter(pk=job_id).first()
        if job is None:
            raise CommandError(f"There is no {model._meta.verbose_name} with id {job_id}.")
        run = service.start_run(job, Run.Trigger.MANUAL, enqueue=False)
        run = service.execute_run(run.pk, retry=False)
        self.stdout.write(json.dumps(service.run_summary(run), indent=2, ensure_ascii=False))
        if run.status == Run.Status.FAILED:
            sys.exit(1)
