"""Celery tasks: thin wrappers around `transfers.service`.

``run_job`` is acknowledged late (after it returns), so a message whose worker dies is
delivered again; `service.execute_run` makes a second delivery harmless. Retries are
decided by the service (which knows the run and the error) and carried out here with
Celery's ``retry`` and the countdown the service computed (exponential, with jitter).
"""

from __future__ import annotations

import logging

from celery import shared_task

from transfers import service
from transfers.models import ExportJob, ImportJob, Run

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job(self, run_id: int, attempt: int = 1) -> str | None:
    # The number of attempts is bounded by the service (TRANSFERS_MAX_RETRIES); waiting for
    # another run of the job to finish is not an attempt, hence max_retries=None here.
    try:
        run = service.execute_run(run_id, attempt=attempt, retry=not self.request.is_eager)
    except Run.DoesNotExist:
        log.warning("run %s was deleted before it could run", run_id)
        return None
    except service.RetryRun as retry:
        raise self.retry(
            kwargs={"run_id": run_id, "attempt": retry.next_attempt},
            countdown=retry.countdown,
            exc=retry,
        ) from retry
    return run.status


@shared_task
def scheduled_import(job_id: int) -> int | None:
    run = service.start_scheduled(ImportJob, job_id)
    return run.pk if run else None


@shared_task
def scheduled_export(job_id: int) -> int | None:
    run = service.start_scheduled(ExportJob, job_id)
    return run.pk if run else None


@shared_task
def mark_stale_runs() -> dict[str, int]:
    return service.mark_stale_runs()
