"""Job orchestration: the lease lock, starting and executing runs, retries, final status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from transfers import locks, service, tasks
from transfers.errors import ConfigError, JobLocked, TransferError, is_retryable
from transfers.models import JobLock, Run

ROOT = Path(__file__).resolve().parent.parent


# -- the lock -----------------------------------------------------------------------------
def test_lock_is_exclusive_and_released_on_exit(db):
    with locks.job_lock("import-job:1", "first", ttl=30) as lease:
        assert lease.owner == "first"
        with pytest.raises(JobLocked, match="in progress") as caught:
            with locks.job_lock("import-job:1", "second", ttl=30):
                pass
        assert caught.value.retryable
        with locks.job_lock("import-job:2", "second", ttl=30):  # another key: independent
            pass
    assert not JobLock.objects.filter(key="import-job:1").exists()
    with locks.job_lock("import-job:1", "second", ttl=30):
        pass


def test_lock_released_on_error(db):
    with pytest.raises(RuntimeError), locks.job_lock("import-job:1", "first", ttl=30):
        raise RuntimeError("boom")
    assert locks.try_acquire("import-job:1", "second", 30)


def test_expired_lease_is_taken_over_and_not_released_by_the_old_owner(db):
    with locks.job_lock("export-job:3", "old", ttl=30):
        # The old owner stalled for longer than its lease: someone else takes over...
        JobLock.objects.filter(key="export-job:3").update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert locks.try_acquire("export-job:3", "new", 30)
    # ... and the old owner's exit must not free the new owner's lock.
    assert JobLock.objects.get(key="export-job:3").owner == "new"


def test_crashed_holder_lease_expires(db):
    # A worker that dies never renews: its lease lapses after the TTL by itself.
    assert locks.try_acquire("import-job:9", "crashed", 0.3)
    assert not locks.try_acquire("import-job:9", "other", 30)
    time.sleep(0.5)
    assert locks.try_acquire("import-job:9", "other", 30)
    assert locks.holder("import-job:9").owner == "other"


def test_heartbeat_keeps_a_long_run_locked(transactional_db):
    with locks.job_lock("import-job:5", "long", ttl=0.6) as lease:
        time.sleep(1.5)  # more than twice the TTL
        assert not locks.try_acquire("import-job:5", "other", 30)
        assert not lease.lost.is_set()
    assert locks.try_acquire("import-job:5", "other", 30)


def test_threads_racing_for_one_lock_never_both_win(transactional_db):
    if connection.vendor == "sqlite":
        pytest.skip("in-memory SQLite test database; processes race on a file database below")
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def contend(name: str) -> None:
        barrier.wait()
        try:
            with locks.job_lock("import-job:42", name, ttl=30):
                winners.append(name)
                time.sleep(0.3)  # hold it while the others try
        except JobLocked:
            pass
        finally:
            connection.close()

    threads = [threading.Thread(target=contend, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def _race_db_url(tmp_path: Path) -> str:
    """A database the racing processes share: the test database on PostgreSQL, else a file."""
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        return (
            f"postgres://{settings['USER']}:{settings['PASSWORD'] or ''}@{settings['HOST']}:"
            f"{settings['PORT'] or 5432}/{settings['NAME']}"
        )
    url = f"sqlite:///{tmp_path / 'locks.sqlite3'}"
    _script(url, "setup").check_returncode()
    return url


def _script(url: str, *args: str, wait: bool = True):
    env = {**os.environ, "DATABASE_URL": url}
    command = [sys.executable, "-m", "tests.support.lock_race", *args]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_processes_racing_win_each_lock_exactly_once(transactional_db, tmp_path):
    url = _race_db_url(tmp_path)
    # Free keys (won by inserting) and keys whose lease expired (won by taking over).
    # SQLite serialises writers with a sleeping busy handler: fewer keys keep this quick.
    count = 30 if connection.vendor == "postgresql" else 10
    fresh = [f"race-new:{n}" for n in range(count)]
    expired = [f"race-expired:{n}" for n in range(count)]
    _seed_expired(url, expired)
    start = time.time() + 3  # every racer starts at once, after its Django setup
    racers = [_script(url, "race", str(start), *fresh, *expired, wait=False) for _ in range(3)]
    won: list[str] = []
    for racer in racers:
        out, _ = racer.communicate(timeout=60)
        assert racer.returncode == 0
        won.extend(json.loads(out.strip().splitlines()[-1]))
    assert sorted(won) == sorted(fresh + expired)  # every key won, and by one racer only


def _seed_expired(url: str, keys: list[str]) -> None:
    past = timezone.now() - timedelta(minutes=5)
    if connection.vendor == "postgresql":
        JobLock.objects.bulk_create(JobLock(key=k, owner="dead", expires_at=past) for k in keys)
        return
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.executemany(
            "INSERT INTO transfers_joblock (key, owner, expires_at) VALUES (?, 'dead', ?)",
            [(k, past.strftime("%Y-%m-%d %H:%M:%S.%f")) for k in keys],
        )


def test_process_killed_while_holding_releases_on_lease_expiry(transactional_db, tmp_path):
    url = _race_db_url(tmp_path)
    holder = _script(url, "hold", "crash:1", "1.0", wait=False)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(2.0)  # twice the TTL: only the heartbeat keeps it
        assert _script(url, "race", "0", "crash:1").stdout.strip() == "[]"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        time.sleep(1.0)  # the TTL
        deadline = time.time() + 10
        while _script(url, "race", "0", "crash:1").stdout.strip() != '["crash:1"]':
            assert time.time() < deadline, "the dead holder's lease never expired"
            time.sleep(0.2)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# -- retry classification ------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc,retryable",
    [
        (TimeoutError("timed out"), True),
        (ConnectionResetError("reset"), True),
        (TransferError("server closed", retryable=True), True),
        (JobLocked("busy"), True),
        (service.RetryRun(1, 2, 3, "later"), True),
        (ConfigError("auth refused"), False),
        (TransferError("host key mismatch"), False),
        (KeyError("bug"), False),
    ],
)
def test_retry_classification(exc, retryable):
    assert is_retryable(exc) is retryable


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap(settings):
    settings.TRANSFERS_RETRY_BACKOFF = 10
    settings.TRANSFERS_RETRY_BACKOFF_MAX = 60
    for attempt, full in [(1, 10), (2, 20), (3, 40), (4, 60), (9, 60)]:
        delays = {service.retry_delay(attempt) for _ in range(50)}
        assert all(full // 2 <= d <= full for d in delays)
        assert len(delays) > 1  # jittered


# -- starting runs ------------------------------------------------------------------------
def test_start_run_queues_and_enqueues_after_commit(
    make_import_job, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda **kw: sent.append(kw))
    job = make_import_job()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = service.start_run(job, Run.Trigger.API)
        assert sent == []  # nothing leaves before the transaction commits
    run.refresh_from_db()
    assert (run.status, run.kind, run.trigger) == ("queued", "import", "api")
    assert run.partner_id == job.partner_id and run.import_job_id == job.pk
    assert run.celery_task_id
    for callback in callbacks:
        callback()
    assert sent == [{"kwargs": {"run_id": run.pk, "attempt": 1}, "task_id": run.celery_task_id}]


def test_start_run_for_an_export(make_export_job):
    run = service.start_run(make_export_job(), Run.Trigger.MANUAL, enqueue=False)
    assert (run.kind, run.export_job_id, run.import_job_id) == ("export", run.export_job.pk, None)
    assert run.celery_task_id == ""


def test_scheduled_start_coalesces_with_an_active_run(make_import_job):
    job = make_import_job()
    first = service.start_run(job, Run.Trigger.SCHEDULE, enqueue=False)
    assert service.start_run(job, Run.Trigger.SCHEDULE, enqueue=False) == first
    manual = service.start_run(job, Run.Trigger.MANUAL, enqueue=False)
    assert manual != first  # people asking for a run get one (the lock serialises them)


def test_scheduled_tasks_skip_disabled_and_missing_jobs(make_import_job, make_export_job):
    job = make_import_job(enabled=False)
    assert tasks.scheduled_import(job.pk) is None
    assert not job.runs.exists()
    assert tasks.scheduled_import(999_999) is None
    export = make_export_job()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service, "enqueue_run", lambda run, attempt=1: "id")
        run_id = tasks.scheduled_export(export.pk)
    assert Run.objects.get(pk=run_id).trigger == "schedule"


# -- executing runs: final status ---------------------------------------------------------
def _run(make_job, name: str) -> Run:
    return service.start_run(make_job(name=name), Run.Trigger.MANUAL, enqueue=False)


@pytest.mark.usefixtures("fake_pipeline")
@pytest.mark.parametrize(
    "name,status,error",
    [
        ("clean", "succeeded", ""),
        ("reject=3", "partial", ""),
        (
            "failfile",
            "partial",
            "1 file(s) could not be imported: members-2.csv.gpg: wrong PGP key",
        ),
        ("allfail", "failed", "No file could be imported."),
        ("permanent", "failed", "Authentication refused: check the username and key."),
        ("bug", "failed", "Unexpected error (KeyError"),
    ],
)
def test_final_status_rules(make_import_job, name, status, error):
    run = service.execute_run(_run(make_import_job, name).pk)
    assert run.status == status
    assert error in run.error if error else run.error == ""
    assert run.started_at and run.finished_at and run.attempts == 1
    assert not JobLock.objects.exists()  # released


@pytest.mark.usefixtures("fake_pipeline")
def test_export_runs_dispatch_to_the_export_runner(make_export_job, settings):
    settings.TRANSFERS_RUNNERS = {"export": "tests.support.fake_runs.run"}  # import: default
    run = service.execute_run(_run(make_export_job, "reject=1").pk)
    assert run.status == "partial"


def test_missing_pipeline_module_fails_with_a_clear_message(make_export_job, settings):
    settings.TRANSFERS_RUNNERS = {"export": "transfers.no_such_module.run_export"}
    run = service.execute_run(_run(make_export_job, "x").pk)
    assert run.status == "failed"
    assert "Export runs are not available" in run.error


@pytest.mark.usefixtures("fake_pipeline")
def test_retryable_error_requeues_and_signals_a_retry(make_import_job, settings):
    settings.TRANSFERS_RETRY_BACKOFF = 10
    run = _run(make_import_job, "transient=1")
    with pytest.raises(service.RetryRun) as caught:
        service.execute_run(run.pk, attempt=1)
    assert caught.value.next_attempt == 2 and 5 <= caught.value.countdown <= 10
    run.refresh_from_db()
    assert run.status == "queued"
    assert "Attempt 1 failed: The SFTP server closed the connection." in run.error
    run = service.execute_run(run.pk, attempt=2)
    assert (run.status, run.error, run.attempts) == ("succeeded", "", 2)
    assert "Attempt 1 failed" in run.log and "Attempt 2 started" in run.log


@pytest.mark.usefixtures("fake_pipeline")
def test_retryable_error_gives_up_after_max_retries(make_import_job, settings):
    settings.TRANSFERS_MAX_RETRIES = 2
    run = service.execute_run(_run(make_import_job, "transient=9").pk, attempt=3)
    assert run.status == "failed"
    assert run.error.startswith("Gave up after 3 attempts. Last error: The SFTP server closed")


@pytest.mark.usefixtures("fake_pipeline")
def test_synchronous_execution_does_not_retry(make_import_job):
    run = service.execute_run(_run(make_import_job, "transient=1").pk, retry=False)
    assert run.status == "failed" and "run the job again later" in run.error


@pytest.mark.usefixtures("fake_pipeline")
def test_finished_run_is_not_run_again(make_import_job, monkeypatch):
    run = service.execute_run(_run(make_import_job, "clean").pk)
    monkeypatch.setattr(service, "runner", lambda kind: pytest.fail("ran twice"))
    assert service.execute_run(run.pk).status == "succeeded"


@pytest.mark.usefixtures("fake_pipeline")
def test_run_left_running_by_a_dead_worker_is_restarted(make_import_job):
    run = _run(make_import_job, "clean")
    Run.objects.filter(pk=run.pk).update(status="running", attempts=1, rows_read=999)
    run = service.execute_run(run.pk, attempt=2)  # the redelivered message
    assert (run.status, run.attempts, run.rows_read) == ("succeeded", 2, 10)
    assert "stopped without finishing" in run.log


@pytest.mark.usefixtures("fake_pipeline")
def test_locked_job_waits_without_using_an_attempt(make_import_job):
    run = _run(make_import_job, "clean")
    assert locks.try_acquire(service.lock_key(run), "someone else", 30)
    with pytest.raises(service.RetryRun) as caught:
        service.execute_run(run.pk, attempt=2)
    assert caught.value.next_attempt == 2  # waiting is not a failed attempt
    run.refresh_from_db()
    assert run.status == "queued" and run.attempts == 0
    assert "Waiting: Another run of this job is in progress" in run.log


@pytest.mark.usefixtures("fake_pipeline")
def test_locked_job_gives_up_after_waiting_too_long(make_import_job):
    run = _run(make_import_job, "clean")
    Run.objects.filter(pk=run.pk).update(queued_at=timezone.now() - timedelta(hours=3))
    locks.try_acquire(service.lock_key(run), "someone else", 30)
    run = service.execute_run(run.pk)
    assert run.status == "failed" and "was cancelled" in run.error


# -- stale runs ---------------------------------------------------------------------------
def test_mark_stale_runs(make_import_job, monkeypatch, django_capture_on_commit_callbacks):
    enqueued = []
    monkeypatch.setattr(service, "enqueue_run", lambda run, attempt=1: enqueued.append(attempt))
    dead = _run(make_import_job, "dead")
    alive = _run(make_import_job, "alive")
    worn_out = _run(make_import_job, "worn out")
    lost = _run(make_import_job, "lost")
    fresh = _run(make_import_job, "fresh")
    Run.objects.filter(pk__in=[dead.pk, alive.pk]).update(status="running", attempts=1)
    Run.objects.filter(pk=worn_out.pk).update(status="running", attempts=6)
    Run.objects.filter(pk=lost.pk).update(queued_at=timezone.now() - timedelta(hours=4))
    locks.try_acquire(service.lock_key(alive), "a live worker", 30)

    assert tasks.mark_stale_runs() == {"requeued": 1, "failed": 2}
    states = dict(Run.objects.values_list("pk", "status"))
    assert states[dead.pk] == "queued" and enqueued == [2]
    assert states[alive.pk] == "running"
    assert states[worn_out.pk] == "failed"
    assert states[lost.pk] == "failed"
    assert states[fresh.pk] == "queued"
    assert "No worker picked this run up" in Run.objects.get(pk=lost.pk).error


# -- the task wrapper ---------------------------------------------------------------------
def test_run_job_task_turns_retry_run_into_a_celery_retry(make_import_job, monkeypatch):
    calls = {}

    def fake_execute(run_id, *, attempt, retry):
        raise service.RetryRun(run_id, attempt + 1, 42, "closed")

    def fake_retry(**kwargs):
        calls.update(kwargs)
        return RuntimeError("retry")

    monkeypatch.setattr(service, "execute_run", fake_execute)
    monkeypatch.setattr(tasks.run_job, "retry", fake_retry)
    with pytest.raises(RuntimeError, match="retry"):
        tasks.run_job.run(run_id=7, attempt=2)
    assert calls["kwargs"] == {"run_id": 7, "attempt": 3} and calls["countdown"] == 42


def test_run_job_task_ignores_a_deleted_run(db):
    assert tasks.run_job.run(run_id=123456) is None


def test_run_job_task_settings():
    assert tasks.run_job.acks_late is True
    assert tasks.run_job.reject_on_worker_lost is True


# -- runjob command -----------------------------------------------------------------------
@pytest.mark.usefixtures("fake_pipeline")
def test_runjob_prints_the_run_summary(make_import_job, make_export_job):
    job = make_import_job(name="reject=2")
    out = StringIO()
    call_command("runjob", str(job.pk), stdout=out)
    summary = json.loads(out.getvalue())
    assert summary["status"] == "partial" and summary["trigger"] == "manual"
    assert summary["rows"] == {"read": 10, "upserted": 8, "rejected": 2}
    assert summary["job"] == {"id": job.pk, "name": "reject=2"}

    export = make_export_job(name="permanent")
    out = StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("runjob", str(export.pk), "--export", stdout=out)
    assert exit_.value.code == 1
    assert json.loads(out.getvalue())["status"] == "failed"


def test_unreachable_broker_fails_the_run_with_a_clear_message(
    make_import_job, monkeypatch, django_capture_on_commit_callbacks
):
    def refuse(**kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(tasks.run_job, "apply_async", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        run = service.start_run(make_import_job(), Run.Trigger.MANUAL)
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error.startswith("The task queue could not be reached")
