"""A real Celery worker (a subprocess) running runs through the real task and service.

The worker uses Redis as its broker (database 15, with a queue of this session's own) and a
migrated SQLite file as its database, which this test process reaches through an extra
database alias. The pipelines are replaced by tests.support.fake_runs (see
tests/support/worker_settings.py), which appends "start"/"end" events with times to a file,
so overlaps can be checked.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from django.db import connections

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_WORKER_REDIS_URL", "redis://127.0.0.1:6379/15")
ALIAS = "worker"
QUEUE = f"lyticsops-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
TIMINGS = {
    "TRANSFERS_LOCK_TTL": "2",
    "TRANSFERS_RETRY_BACKOFF": "2",
    "TRANSFERS_RETRY_BACKOFF_MAX": "4",
    "TRANSFERS_LOCK_RETRY_DELAY": "1",
    "TRANSFERS_MAX_RETRIES": "5",
    "CELERY_VISIBILITY_TIMEOUT": "4",
    "CELERY_UNACKED_RESTORE_INTERVAL": "1",
}


def _redis_or_skip():
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return client


class Worker:
    """A `celery worker` process group, its log file, and how to stop it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "lyticsops",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.time() + 60
        while b"ready." not in self.log.read_bytes():
            assert self.process.poll() is None, self.tail()
            assert time.time() < deadline, "the worker did not start\n" + self.tail()
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole group, pool children included: a machine that lost power."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory, django_db_blocker) -> Iterator[dict[str, str]]:
    redis_client = _redis_or_skip()
    base = tmp_path_factory.mktemp("worker")
    database = base / "worker.sqlite3"
    env = {
        **os.environ,
        **TIMINGS,
        "DJANGO_SETTINGS_MODULE": "tests.support.worker_settings",
        "DATABASE_URL": f"sqlite:///{database}",
        "CELERY_BROKER_URL": REDIS_URL,
        "FAKE_RUN_EVENTS": str(base / "events.jsonl"),
        "PYTHONPATH": str(ROOT),
        "TEST_WORKER_QUEUE": QUEUE,
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    _add_alias(database)
    with django_db_blocker.unblock():
        yield env
        connections[ALIAS].close()
    del connections.settings[ALIAS]
    # Only this session's keys: the database may be shared with other test runs.
    redis_client.delete(*redis_client.keys(f"*{QUEUE}*") or ["-"])


def _add_alias(database: Path) -> None:
    # The same connection options as the application's SQLite (WAL, busy timeout).
    conf = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(database),
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
    default = connections.settings["default"]
    filled = connections.configure_settings({"default": default, ALIAS: conf})[ALIAS]
    connections.settings[ALIAS] = filled


@pytest.fixture(scope="module")
def worker(worker_env, tmp_path_factory) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("worker-log") / "worker.log"
    process = Worker(worker_env, log)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def producer(worker_env) -> Iterator[Celery]:
    app = Celery("test-producer", broker=REDIS_URL)
    app.conf.task_default_queue = QUEUE
    yield app
    app.close()


@pytest.fixture(scope="module")
def setup_job(worker_env) -> Callable[[str], object]:
    from authorizations.models import Authorization, Method, Partner
    from transfers.models import ImportJob

    partner = Partner.objects.using(ALIAS).create(name="Worker test", slug="worker-test")
    authz = Authorization.objects.using(ALIAS).create(
        partner=partner,
        label="SFTP",
        method=Method.SFTP_CLIENT,
        host="sftp.example.com",
        username="u",
        password="not-a-real-password",
    )

    def make(name: str) -> ImportJob:
        job = ImportJob(partner=partner, authorization=authz, name=name)
        job.save(using=ALIAS)
        return job

    return make


def enqueue(producer: Celery, job) -> int:
    from transfers.models import Run

    run = Run.objects.using(ALIAS).create(
        kind=Run.Kind.IMPORT, partner_id=job.partner_id, import_job=job, trigger="api"
    )
    producer.send_task("transfers.tasks.run_job", kwargs={"run_id": run.pk, "attempt": 1})
    return run.pk


def wait_final(run_ids: list[int], worker: Worker, timeout: float = 60):
    from transfers.models import Run

    deadline = time.time() + timeout
    while True:
        runs = list(Run.objects.using(ALIAS).filter(pk__in=run_ids).order_by("pk"))
        if all(r.status in ("succeeded", "partial", "failed") for r in runs):
            return runs
        assert time.time() < deadline, f"runs not finished: {runs}\n{worker.tail()}"
        time.sleep(0.2)


def events(env: dict[str, str], run_id: int | None = None) -> list[dict]:
    path = Path(env["FAKE_RUN_EVENTS"])
    lines = path.read_text().splitlines() if path.exists() else []
    found = [json.loads(line) for line in lines]
    return [e for e in found if run_id is None or e["run"] == run_id]


def intervals(found: list[dict]) -> list[tuple[float, float]]:
    starts = {(e["run"], e["attempt"]): e["t"] for e in found if e["event"] == "start"}
    return sorted(
        (starts[(e["run"], e["attempt"])], e["t"])
        for e in found
        if e["event"] in ("end", "error") and (e["run"], e["attempt"]) in starts
    )


def test_same_job_never_runs_twice_at_once(worker, worker_env, producer, setup_job):
    job = setup_job("sleep=1.5")
    run_ids = [enqueue(producer, job) for _ in range(3)]
    runs = wait_final(run_ids, worker)
    assert [r.status for r in runs] == ["succeeded"] * 3
    found = [e for e in events(worker_env) if e["run"] in run_ids]
    spans = intervals(found)
    assert len(spans) == 3  # each run's pipeline ran exactly once
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two runs of the job overlapped: {spans}"
    # The worker has two processes, so a second run was there, waiting for the lock.
    assert any("Waiting: Another run of this job is in progress" in r.log for r in runs)


def test_retryable_errors_back_off_and_retry(worker, worker_env, producer, setup_job):
    run_id = enqueue(producer, setup_job("transient=2"))
    (run,) = wait_final([run_id], worker)
    assert (run.status, run.attempts, run.error) == ("succeeded", 3, "")
    assert "Attempt 1 failed: The SFTP server closed" in run.log
    assert "Attempt 2 failed" in run.log
    errors = [e["t"] for e in events(worker_env, run_id) if e["event"] == "error"]
    starts = [e["t"] for e in events(worker_env, run_id) if e["event"] == "start"]
    assert len(errors) == 2 and len(starts) == 3
    # Backoff factor 2 s, with jitter between half and all of it: >= 1 s, then >= 2 s.
    assert starts[1] - errors[0] >= 0.9
    assert starts[2] - errors[1] >= 1.9


def test_permanent_errors_fail_at_once(worker, worker_env, producer, setup_job):
    run_id = enqueue(producer, setup_job("permanent"))
    (run,) = wait_final([run_id], worker)
    assert (run.status, run.attempts) == ("failed", 1)
    assert run.error == "Authentication refused: check the username and key."
    assert [e["event"] for e in events(worker_env, run_id)] == ["start", "error"]


def test_killed_worker_message_is_redelivered_and_the_run_completes_once(
    worker, worker_env, producer, setup_job
):
    run_id = enqueue(producer, setup_job("sleep=2.5"))
    deadline = time.time() + 30
    while not events(worker_env, run_id):
        assert time.time() < deadline, worker.tail()
        time.sleep(0.1)
    worker.kill()  # mid-run: the message was never acknowledged (acks_late)
    worker.start()  # Redis gives it back after the visibility timeout (4 s here)
    (run,) = wait_final([run_id], worker)
    assert (run.status, run.attempts) == ("succeeded", 2)
    assert "stopped without finishing" in run.log
    kinds = [e["event"] for e in events(worker_env, run_id)]
    assert kinds == ["start", "start", "end"]  # killed once, completed once


def test_default_filesystem_broker_runs_a_job(worker_env, setup_job, tmp_path):
    """The embedded default (`make run`): kombu's filesystem transport, no server needed."""
    from django.conf import settings

    queue, processed = (
        tmp_path / "celery-broker" / "queue",
        tmp_path / "celery-broker" / "processed",
    )
    queue.mkdir(parents=True)
    processed.mkdir()
    env = {
        **worker_env,
        "CELERY_BROKER_URL": "filesystem://",
        "VAR_DIR": str(tmp_path),  # where the settings put the broker's folders
        "SECRET_KEY": settings.SECRET_KEY,
        "FIELD_ENCRYPTION_KEYS": ",".join(settings.FIELD_ENCRYPTION_KEYS),
    }
    fs_worker = Worker(env, tmp_path / "worker.log")
    producer = Celery("test-producer", broker="filesystem://")
    producer.conf.task_default_queue = QUEUE
    producer.conf.broker_transport_options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(processed),
        "control_folder": str(tmp_path / "celery-broker" / "control"),
    }
    fs_worker.start()
    try:
        run_id = enqueue(producer, setup_job("reject=1"))
        (run,) = wait_final([run_id], fs_worker)
        assert (run.status, run.rows_rejected) == ("partial", 1)
    finally:
        fs_worker.stop()
        producer.close()
