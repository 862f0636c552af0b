"""Starting and executing runs: the plain functions behind the Celery tasks.

- `start_run` records a queued `Run` and, once the transaction commits, enqueues
  `transfers.tasks.run_job` for it.
- `execute_run` takes the job's lease lock (`transfers.locks`), marks the run running,
  calls the import or export pipeline and records how it ended. It is idempotent, because
  with ``acks_late`` a message may be delivered more than once: a finished run is left as
  it is, and a run left ``running`` by a worker that died is restarted from the beginning
  once its lease has expired (the import ledger makes files already imported no-ops; an
  export writes to a temporary name, so nothing half-done is visible).
- Retryable errors (`transfers.errors.is_retryable`) put the run back to ``queued`` and
  raise `RetryRun`, which the task turns into a Celery retry with exponential backoff;
  permanent errors fail the run at once with a message a staff member can act on.
- `mark_stale_runs` (a beat task) restarts runs whose worker vanished without the broker
  redelivering their message (the filesystem broker cannot), and fails runs that no
  worker ever picked up.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone
from django.utils.module_loading import import_string

from transfers import locks, pgp
from transfers.errors import JobLocked, TransferError, is_retryable
from transfers.models import ExportJob, ImportJob, Job, Run

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({Run.Status.SUCCEEDED, Run.Status.PARTIAL, Run.Status.FAILED})
ACTIVE_STATUSES = (Run.Status.QUEUED, Run.Status.RUNNING)
# What an attempt starts from: counters describe the latest attempt, the log keeps history.
PROGRESS_RESET: dict[str, Any] = {
    "files_seen": 0,
    "files_imported": 0,
    "files_skipped": 0,
    "files_failed": 0,
    "rows_read": 0,
    "rows_upserted": 0,
    "rows_rejected": 0,
    "bytes_transferred": 0,
    "file_name": "",
    "sha256": "",
    "skipped_files": [],
    "rejected_rows": [],
}
DEFAULT_RUNNERS = {
    Run.Kind.IMPORT: "transfers.imports.run_import",
    Run.Kind.EXPORT: "transfers.exports.run_export",
}


class RetryRun(Exception):
    """The run hit a temporary problem and is queued again; the task must retry it."""

    retryable = True

    def __init__(self, run_id: int, next_attempt: int, countdown: int, reason: str) -> None:
        super().__init__(reason)
        self.run_id = run_id
        self.next_attempt = next_attempt
        self.countdown = countdown


# -- settings -----------------------------------------------------------------------------
def max_retries() -> int:
    return int(getattr(settings, "TRANSFERS_MAX_RETRIES", 5))


def retry_delay(attempt: int) -> int:
    """Seconds before attempt ``attempt + 1``: exponential, capped, with jitter.

    "Equal jitter" (half fixed, half random) keeps a floor under the wait, so a server that
    is down is not hammered, while runs that failed together do not retry in lockstep.
    """
    factor = int(getattr(settings, "TRANSFERS_RETRY_BACKOFF", 30))
    cap = int(getattr(settings, "TRANSFERS_RETRY_BACKOFF_MAX", 600))
    delay = min(cap, factor * 2 ** max(attempt - 1, 0))
    return delay // 2 + random.randint(0, delay - delay // 2)  # noqa: S311 - not crypto


def lock_retry_delay() -> int:
    base = int(getattr(settings, "TRANSFERS_LOCK_RETRY_DELAY", 30))
    return base + random.randint(0, max(base // 2, 0))  # noqa: S311 - not crypto


def lock_wait_max() -> timedelta:
    return timedelta(seconds=int(getattr(settings, "TRANSFERS_LOCK_WAIT_MAX", 2 * 3600)))


def queued_stale_after() -> timedelta:
    return timedelta(seconds=int(getattr(settings, "TRANSFERS_QUEUED_STALE_AFTER", 3 * 3600)))


# -- starting -----------------------------------------------------------------------------
def kind_of(job: Job) -> str:
    if isinstance(job, ImportJob):
        return Run.Kind.IMPORT
    if isinstance(job, ExportJob):
        return Run.Kind.EXPORT
    raise TypeError(f"not a job: {job!r}")


def active_runs(job: Job):
    return job.runs.filter(status__in=ACTIVE_STATUSES)


def start_run(job: Job, trigger: str, *, enqueue: bool = True) -> Run:
    """Record a queued run of ``job`` and hand it to a worker when the transaction commits.

    A scheduled start while a run of the job is still queued or running returns that run
    instead: runs that last longer than the schedule's period must not pile up.
    """
    kind = kind_of(job)
    if trigger == Run.Trigger.SCHEDULE:
        current = active_runs(job).order_by("queued_at").first()
        if current is not None:
            log.info("job %s: run %s still active, scheduled start skipped", job.pk, current.pk)
            return current
    run = Run.objects.create(
        kind=kind,
        partner_id=job.partner_id,
        import_job=job if kind == Run.Kind.IMPORT else None,
        export_job=job if kind == Run.Kind.EXPORT else None,
        trigger=trigger,
        status=Run.Status.QUEUED,
    )
    if enqueue:
        enqueue_run(run)
    return run


def enqueue_run(run: Run, attempt: int = 1) -> str:
    """Send the task after commit (a worker must find the row), with an id we store first."""
    from transfers.tasks import run_job

    task_id = str(uuid.uuid4())
    Run.objects.filter(pk=run.pk).update(celery_task_id=task_id)
    run.celery_task_id = task_id
    kwargs = {"run_id": run.pk, "attempt": attempt}

    def send() -> None:
        try:
            run_job.apply_async(kwargs=kwargs, task_id=task_id)
        except Exception as exc:  # the broker is down: say so on the run, not only in a 500
            log.exception("run %s: could not send the task", run.pk)
            fail(
                run,
                f"The task queue could not be reached ({type(exc).__name__}: {exc}). Check "
                "the broker (CELERY_BROKER_URL), then run the job again.",
            )

    transaction.on_commit(send)
    return task_id


def start_scheduled(model: type[Job], job_id: int) -> Run | None:
    """What beat's tasks do: start a run unless the job is gone or paused."""
    job = model.objects.filter(pk=job_id).first()
    if job is None:
        log.warning("%s %s no longer exists; schedule ignored", model.__name__, job_id)
        return None
    if not job.enabled:
        log.info("%s %s is disabled; scheduled run skipped", model.__name__, job_id)
        return None
    return start_run(job, Run.Trigger.SCHEDULE)


# -- executing ----------------------------------------------------------------------------
def lock_key(run: Run) -> str:
    job_id = run.import_job_id if run.kind == Run.Kind.IMPORT else run.export_job_id
    return f"{run.kind}-job:{job_id}"


def _load(run_id: int) -> Run:
    return Run.objects.select_related("import_job", "export_job", "partner").get(pk=run_id)


def execute_run(run_id: int, *, attempt: int = 1, retry: bool = True) -> Run:
    """Run ``run_id`` now, under the job's lock; return the run as it ended.

    Raises `RetryRun` when the run should be tried again later (``retry=False``, for
    synchronous callers, fails it instead) and `Run.DoesNotExist` when it was deleted.
    """
    run = _load(run_id)
    if run.status in FINAL_STATUSES:
        log.info("run %s already %s; nothing to do", run.pk, run.status)
        return run
    try:
        with locks.job_lock(lock_key(run), locks.make_owner(f"run {run.pk}")) as lease:
            return _execute_locked(run_id, attempt, retry, lease)
    except JobLocked as exc:
        return _wait_for_lock(run, exc, attempt, retry)


def _execute_locked(run_id: int, attempt: int, retry: bool, lease: locks.Lease) -> Run:
    run = _load(run_id)  # read again under the lock: another worker may have finished it
    if run.status in FINAL_STATUSES:
        return run
    _claim(run, attempt)
    try:
        runner(run.kind)(run)
    except Exception as exc:
        return _on_error(run, exc, attempt, retry)
    finally:
        if lease.lost.is_set():
            append_log(run.pk, "Warning: the job's lock lease expired during this attempt.")
    return _finish(run)


def runner(kind: str) -> Callable[..., None]:
    """The pipeline entry point, imported only when needed (one missing half spares the other)."""
    path = getattr(settings, "TRANSFERS_RUNNERS", {}).get(kind) or DEFAULT_RUNNERS[kind]
    try:
        return import_string(path)
    except ImportError as exc:
        raise TransferError(
            f"{Run.Kind(kind).label} runs are not available in this installation "
            f"({path} cannot be imported)."
        ) from exc


def _claim(run: Run, attempt: int) -> None:
    resumed = run.status == Run.Status.RUNNING
    now = timezone.now()
    fields = {
        **PROGRESS_RESET,
        "status": Run.Status.RUNNING,
        "started_at": now,
        "finished_at": None,
        "error": "",
        "attempts": F("attempts") + 1,
    }
    Run.objects.filter(pk=run.pk).update(**fields)
    if resumed:
        append_log(
            run.pk,
            "The previous attempt stopped without finishing (its worker was stopped or "
            "crashed); starting again. Files already imported are not imported twice.",
        )
    append_log(run.pk, f"Attempt {attempt} started (trigger: {run.get_trigger_display()}).")
    run.refresh_from_db()


def _finish(run: Run) -> Run:
    run.refresh_from_db()
    status, error = final_status(run)
    Run.objects.filter(pk=run.pk).update(status=status, error=error, finished_at=timezone.now())
    append_log(run.pk, f"Finished: {Run.Status(status).label}.")
    run.refresh_from_db()
    return run


def failed_files(run: Run) -> list[dict[str, Any]]:
    """Files that could not be imported (as opposed to skipped on purpose, e.g. seen before)."""
    return [
        entry
        for entry in run.skipped_files or []
        if isinstance(entry, dict)
        and (entry.get("failed") or entry.get("error") or entry.get("status") == "failed")
    ]


def final_status(run: Run) -> tuple[str, str]:
    """(status, error) of a run whose pipeline returned without raising."""
    failures = failed_files(run)
    failed = max(run.files_failed, len(failures))
    if failed:
        names = "; ".join(
            f"{f.get('name', '?')}: {f.get('error') or f.get('reason', 'failed')}"
            for f in failures[:5]
        )
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        message = f"{failed} file(s) could not be imported" + (
            f": {names}{more}." if names else "."
        )
        # Files an earlier attempt of this run committed are in the ledger, not the counters.
        if run.files_imported == 0 and run.rows_upserted == 0 and not run.files.exists():
            return Run.Status.FAILED, f"No file could be imported. {message}"
        return Run.Status.PARTIAL, message
    if run.rows_rejected:
        return Run.Status.PARTIAL, ""
    return Run.Status.SUCCEEDED, ""


def describe(exc: BaseException) -> str:
    """A message for the run's error field: ours are written for staff; others are not."""
    if isinstance(exc, TransferError) or hasattr(exc, "retryable"):
        return _sentence(str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return "The connection timed out."
    if isinstance(exc, ConnectionError):
        return f"The connection failed ({type(exc).__name__}: {exc})."
    return (
        f"Unexpected error ({type(exc).__name__}: {exc}). This is probably a bug; the "
        "worker log has the details."
    )


def _sentence(text: str) -> str:
    # Messages are followed by advice ("Retrying in ...", "Check ..."): end them properly.
    text = text.strip()
    return text if text.endswith((".", "!", "?", ":")) else text + "."


def _on_error(run: Run, exc: Exception, attempt: int, retry: bool) -> Run:
    message = describe(exc)
    # Errors that classify themselves (as describe() sees them) are expected: no traceback.
    known = isinstance(exc, TransferError) or hasattr(exc, "retryable") or is_retryable(exc)
    log.log(
        logging.WARNING if known else logging.ERROR,
        "run %s attempt %s: %s",
        run.pk,
        attempt,
        message,
        exc_info=not known,
    )
    if not is_retryable(exc):
        return fail(run, message)
    if not retry:
        return fail(run, f"{message} This is usually temporary: run the job again later.")
    if attempt > max_retries():
        return fail(
            run, f"Gave up after {attempt} attempts. Last error: {message} {give_up_advice(exc)}"
        )
    countdown = retry_delay(attempt)
    note = f"Attempt {attempt} failed: {message} Retrying in about {countdown} s."
    Run.objects.filter(pk=run.pk).update(status=Run.Status.QUEUED, error=note)
    append_log(run.pk, note)
    raise RetryRun(run.pk, attempt + 1, countdown, message) from exc


def give_up_advice(exc: BaseException) -> str:
    """What to check before running the job again, by where the last error came from."""
    if isinstance(exc, pgp.PgpError):  # gpg missing or failing on the worker machine
        return "Fix gpg on the worker machines as the error says, then run the job again."
    if isinstance(exc.__cause__, DatabaseError):
        return "Check that the database is reachable and healthy, then run the job again."
    return (
        "Check that the server is reachable (Test connection on the authorization), then "
        "run the job again."
    )


def _wait_for_lock(run: Run, exc: JobLocked, attempt: int, retry: bool) -> Run:
    waited = timezone.now() - run.queued_at
    if not retry or waited > lock_wait_max():
        minutes = int(waited.total_seconds() // 60)
        return fail(
            run,
            f"{exc} This run waited {minutes} min for it and was cancelled; start it again "
            "once the other run has finished.",
        )
    countdown = lock_retry_delay()
    if "is in progress" not in run.log[-400:]:  # one line, not one per poll
        append_log(run.pk, f"Waiting: {exc}")
    # Waiting for the lock is not a failed attempt: the attempt number stays the same.
    raise RetryRun(run.pk, attempt, countdown, str(exc)) from exc


def fail(run: Run, message: str) -> Run:
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.FAILED, error=message, finished_at=timezone.now()
    )
    append_log(run.pk, f"Failed: {message}")
    run.refresh_from_db()
    return run


def append_log(run_id: int, line: str) -> None:
    """Append in the database (no read-modify-write): the pipeline may be logging too."""
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
    Run.objects.filter(pk=run_id).update(log=Concat(F("log"), Value(f"{stamp} {line}\n")))


# -- housekeeping -------------------------------------------------------------------------
def mark_stale_runs() -> dict[str, int]:
    """Restart runs whose worker died; fail runs no worker ever picked up.

    A run is ``running`` only while its worker holds the job's lease, so ``running``
    without a live lease means the worker is gone. With Redis or RabbitMQ the broker
    redelivers its message anyway (``acks_late``); the filesystem broker cannot, so this
    re-enqueues it. Two deliveries are harmless: `execute_run` is idempotent.
    """
    counts = {"requeued": 0, "failed": 0}
    for run in Run.objects.filter(status=Run.Status.RUNNING):
        if locks.holder(lock_key(run)) is not None:
            continue
        # Conditional on the attempt: a worker that resumed it meanwhile has moved it on.
        mine = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING, attempts=run.attempts)
        if run.attempts > max_retries():
            message = (
                f"The worker running this job stopped {run.attempts} times before it could "
                "finish (crash, restart or out of memory). Check the worker logs, then run "
                "the job again."
            )
            if mine.update(status=Run.Status.FAILED, error=message, finished_at=timezone.now()):
                append_log(run.pk, f"Failed: {message}")
                counts["failed"] += 1
            continue
        if mine.update(status=Run.Status.QUEUED):
            append_log(run.pk, "Its worker stopped without finishing; queued again.")
            enqueue_run(run, attempt=run.attempts + 1)
            counts["requeued"] += 1
    counts["failed"] += _fail_never_started()
    return counts


def _fail_never_started() -> int:
    # Longer than any legitimate wait (retry backoff, waiting for the lock), so the
    # message was lost: no worker, or a restart of a worker on the filesystem broker.
    cutoff = timezone.now() - queued_stale_after()
    message = (
        "No worker picked this run up. Check that a Celery worker is running and "
        "connected to the broker, then run the job again."
    )
    failed = 0
    for run_id in Run.objects.filter(status=Run.Status.QUEUED, queued_at__lt=cutoff).values_list(
        "pk", flat=True
    ):
        mine = Run.objects.filter(pk=run_id, status=Run.Status.QUEUED)
        if mine.update(status=Run.Status.FAILED, error=message, finished_at=timezone.now()):
            append_log(run_id, f"Failed: {message}")
            failed += 1
    return failed


# -- reporting ----------------------------------------------------------------------------
def run_summary(run: Run) -> dict[str, Any]:
    """The run as JSON-ready data (the runjob command prints it)."""
    job = run.job
    return {
        "id": run.pk,
        "kind": run.kind,
        "job": {"id": job.pk, "name": job.name} if job else None,
        "partner": run.partner.slug,
        "status": run.status,
        "trigger": run.trigger,
        "attempts": run.attempts,
        "queued_at": _iso(run.queued_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_seconds": run.duration_seconds,
        "files": {
            "seen": run.files_seen,
            "imported": run.files_imported,
            "skipped": run.files_skipped,
            "failed": run.files_failed,
        },
        "rows": {
            "read": run.rows_read,
            "upserted": run.rows_upserted,
            "rejected": run.rows_rejected,
        },
        "bytes_transferred": run.bytes_transferred,
        "file_name": run.file_name,
        "sha256": run.sha256,
        "skipped_files": run.skipped_files,
        "rejected_rows": run.rejected_rows,
        "error": run.error,
    }


def _iso(value) -> str | None:
    return value.isoformat() if value else None
