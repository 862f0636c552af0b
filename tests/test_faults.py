"""Faults survived: each test breaks something real and checks nothing is lost or doubled.

Fault -> test (in this module unless another file is named):

- worker SIGKILLed mid-import (the file's transaction open), Celery worker restarted
  -> test_worker_killed_mid_import_is_redelivered_and_imports_once
- worker SIGKILLed mid-export (``.part`` half written), Celery worker restarted
  -> test_worker_killed_mid_export_is_redelivered_and_publishes_one_file
- a plain process SIGKILLed mid-file / mid-upload, then run again by hand
  -> test_imports.py::test_worker_killed_mid_file_leaves_nothing_and_rerun_imports_once,
     test_exports.py::test_killed_mid_upload_leaves_no_final_file_and_a_rerun_completes
- redelivery after a kill and the backoff timing of Celery retries (fake pipeline)
  -> test_celery_worker.py::test_killed_worker_message_is_redelivered_and_the_run_completes_once,
     test_celery_worker.py::test_retryable_errors_back_off_and_retry
- SFTP server killed mid-download
  -> test_sftp_server_killed_mid_download_is_retried_and_imports_once
- SFTP connection lost mid-upload
  -> test_exports.py::test_connection_lost_mid_upload_temp_removed_over_a_new_connection
- SFTP server that stalls: a socket that never answers; a server that stops sending
  -> test_stalled_server_times_out_backs_off_then_fails_clearly
- Redis (the broker) restarted with jobs queued, and crashed under a working worker
  -> test_broker_restart_loses_no_job_and_runs_none_twice
- PostgreSQL connection dropped during an upsert batch
  -> test_database_connection_dropped_mid_batch_rolls_the_file_back
- disk full where the export is written (managed storage; the partner's server)
  -> test_disk_full_export_fails_cleanly_and_leaves_no_partial_file
- gpg missing (``GPG_BINARY`` pointing nowhere; not on ``PATH``)
  -> test_gpg_missing_fails_pgp_runs_clearly_and_spares_the_others
- clock stepped an hour across a DST change, beat restarted (beat's real scheduler)
  -> test_daily_paris_export_runs_once_a_day_when_the_clock_jumps;
     DST with a steady clock: test_schedules.py::test_daily_paris_job_runs_once_a_day_across_dst
- secrets in logs (full import + export + token issuance, every logger at DEBUG)
  -> test_no_secret_is_ever_logged

Everything is real and on loopback: a paramiko SFTP server that crashes or stalls at a
chosen byte (`tests.support.faults.GatedSftpServer`), OpenSSH ``sshd``, ``gpg``, a
``redis-server`` and Celery workers of each test's own, a tmpfs for a full disk.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import os
import shutil
import time
import uuid
import zoneinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import time_machine
from celery import Celery
from django.db import connection

from authorizations.models import Authorization, Method, Partner
from profiles.models import Audience, Profile
from tests.support.faults import (
    ROOT,
    GatedSftpServer,
    RedisServer,
    SharedDatabase,
    SilentServer,
    migrated_sqlite,
    tiny_tmpfs,
    wait_until,
)
from tests.test_celery_worker import Worker, events
from transfers import service
from transfers.models import ExportJob, ImportedFile, ImportJob, Run
from transfers.service import RetryRun

ROWS = 12000  # 2.8 MB of CSV: more than the client's read-ahead window
BIO = "b" * 200
# Reached once the client has consumed (parsed, upserted) about 256 KiB of the file.
MID_FILE = 2 * 1024 * 1024 + 256 * 1024


def members_csv(rows: int = ROWS) -> bytes:
    lines = "".join(f"user{i:05d}@x.org,User {i},Paris,{BIO}\n" for i in range(rows))
    return ("email,name,city,bio\n" + lines).encode()


def expected_profiles(rows: int = ROWS) -> dict[str, dict[str, str]]:
    return {
        f"user{i:05d}@x.org": {"name": f"User {i}", "city": "Paris", "bio": BIO}
        for i in range(rows)
    }


def profiles(using: str = "default") -> dict[str, dict[str, Any]]:
    return {p.identity: p.attributes for p in Profile.objects.using(using).all()}


@pytest.fixture
def sftp_server(tmp_path: Path):
    data = tmp_path / "partner-sftp"
    data.mkdir()
    server = GatedSftpServer(data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fast_runs(settings):
    """Short timeouts and a known backoff; no stability wait; small upsert batches."""
    settings.IMPORT_STABILITY_SECONDS = 0
    settings.IMPORT_PROGRESS_INTERVAL = 0
    settings.IMPORT_BATCH_SIZE = 200
    settings.SFTP_CONNECT_TIMEOUT = 5
    settings.SFTP_IO_TIMEOUT = 5
    settings.TRANSFERS_MAX_RETRIES = 2
    settings.TRANSFERS_RETRY_BACKOFF = 10
    settings.TRANSFERS_RETRY_BACKOFF_MAX = 600
    return settings


def sftp_authorization(partner: Partner, server: Any, **fields: Any) -> Authorization:
    fields.setdefault("method", Method.SFTP_CLIENT)
    return Authorization.objects.create(
        partner=partner,
        label=fields.pop("label", "partner sftp"),
        host=server.host,
        port=server.port,
        username=getattr(server, "username", "partner"),
        password=getattr(server, "password", "not-used-here"),
        **fields,
    )


def import_job(authz: Authorization, **fields: Any) -> ImportJob:
    fields.setdefault("pattern", "members*")
    return ImportJob.objects.create(
        partner=authz.partner,
        authorization=authz,
        name=fields.pop("name", "members"),
        identity_field="email",
        **fields,
    )


def new_run(job: ImportJob | ExportJob) -> Run:
    return service.start_run(job, Run.Trigger.MANUAL, enqueue=False)


def attempt(run: Run, number: int) -> tuple[Run, RetryRun | None]:
    """One delivery of the run's task, as the worker makes it: (run after, retry or None)."""
    try:
        service.execute_run(run.pk, attempt=number)
    except RetryRun as retry:
        run.refresh_from_db()
        return run, retry
    run.refresh_from_db()
    return run, None


def backoff_bounds(attempt_number: int, factor: int = 10, cap: int = 600) -> tuple[int, int]:
    """The countdown range of `service.retry_delay`: exponential, equal jitter."""
    delay = min(cap, factor * 2 ** (attempt_number - 1))
    return delay // 2, delay


def assert_imported_once(job: ImportJob, rows: int = ROWS, using: str = "default") -> None:
    assert profiles(using) == expected_profiles(rows)
    ledger = list(ImportedFile.objects.using(using).filter(job_id=job.pk))
    assert [(f.name, f.rows_upserted, f.duplicate_of_id) for f in ledger] == [
        ("members.csv", rows, None)
    ]


# --------------------------------------------------------------------------- SFTP faults


def count_batches(monkeypatch) -> list[int]:
    """Upsert batches written (into the file's transaction), as a list of one counter."""
    from profiles import store

    sent, original = [0], store.ProfileWriter._send

    def send(self: store.ProfileWriter) -> None:
        before = self.batches
        original(self)
        sent[0] += self.batches - before

    monkeypatch.setattr(store.ProfileWriter, "_send", send)
    return sent


@pytest.mark.django_db
def test_sftp_server_killed_mid_download_is_retried_and_imports_once(
    sftp_server: GatedSftpServer, partner: Partner, fast_runs, monkeypatch
) -> None:
    (sftp_server.data_dir / "members.csv").write_bytes(members_csv())
    job = import_job(sftp_authorization(partner, sftp_server))
    sftp_server.gate_at, sftp_server.crash_after = MID_FILE, 1.0
    run = new_run(job)
    batches = count_batches(monkeypatch)

    run, retry = attempt(run, 1)

    assert sftp_server.gate_reached.is_set()  # it died mid-file...
    assert batches[0] >= 3  # ...with rows upserted in the file's transaction
    assert retry is not None and retry.next_attempt == 2
    low, high = backoff_bounds(1)
    assert low <= retry.countdown <= high
    where = f"{sftp_server.host}:{sftp_server.port}"
    assert run.status == Run.Status.QUEUED
    assert run.error == (
        f"Attempt 1 failed: connection to {where} lost while downloading 'members.csv'. "
        f"Retrying in about {retry.countdown} s."
    )
    assert Profile.objects.count() == 0 and not ImportedFile.objects.exists()

    sftp_server.restart()  # same port, same host key: the pin still holds
    run, retry = attempt(run, 2)

    assert retry is None
    assert (run.status, run.attempts, run.files_imported, run.error) == ("succeeded", 2, 1, "")
    assert_imported_once(job)
    run3, _ = attempt(new_run(job), 1)  # and never again
    assert (run3.status, run3.files_imported, run3.files_skipped) == ("succeeded", 0, 1)
    assert_imported_once(job)


@pytest.mark.django_db
@pytest.mark.parametrize("stall", ["silent socket", "mid-download"])
def test_stalled_server_times_out_backs_off_then_fails_clearly(
    stall: str, tmp_path: Path, partner: Partner, fast_runs
) -> None:
    """Attempts 1 and 2 time out and are queued with growing countdowns; 3 gives up."""
    if stall == "silent socket":
        server: Any = SilentServer()
        fast_runs.SFTP_CONNECT_TIMEOUT = 1
        error = (
            f"timed out after 1 s waiting for the SSH greeting from 127.0.0.1:{server.port} "
            "(is this an SSH/SFTP port?)."
        )
    else:
        (tmp_path / "data").mkdir()
        server = GatedSftpServer(tmp_path / "data")
        server.gate_at = MID_FILE  # it answers, lists, sends 2.25 MiB, then nothing
        server.start()
        (server.data_dir / "members.csv").write_bytes(members_csv())
        fast_runs.SFTP_IO_TIMEOUT = 1
        error = f"no answer from 127.0.0.1:{server.port} for 1 s while downloading 'members.csv'."
    try:
        job = import_job(sftp_authorization(partner, server))
        run = new_run(job)
        countdowns = []
        for number in (1, 2):
            started = time.monotonic()
            run, retry = attempt(run, number)
            assert time.monotonic() - started < 8, "the timeout did not fire"
            assert retry is not None and retry.next_attempt == number + 1
            low, high = backoff_bounds(number)
            assert low <= retry.countdown <= high, (number, retry.countdown)
            countdowns.append(retry.countdown)
            assert run.status == Run.Status.QUEUED
            assert run.error == (
                f"Attempt {number} failed: {error} Retrying in about {retry.countdown} s."
            )
        assert countdowns[1] >= backoff_bounds(1)[1]  # backs off: never sooner than before
        assert stall == "silent socket" or server.gate_reached.is_set()

        run, retry = attempt(run, 3)

        assert retry is None and run.status == Run.Status.FAILED and run.attempts == 3
        assert run.error == (
            f"Gave up after 3 attempts. Last error: {error} Check that the server is "
            "reachable (Test connection on the authorization), then run the job again."
        )
        assert run.finished_at is not None
        assert Profile.objects.count() == 0 and not ImportedFile.objects.exists()
        if stall == "mid-download":  # the server recovers: the next run imports it once
            server.release()
            rerun, _ = attempt(new_run(job), 1)
            assert rerun.status == Run.Status.SUCCEEDED, rerun.error
            assert_imported_once(job)
    finally:
        server.stop()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.django_db(transaction=True)
def test_database_connection_dropped_mid_batch_rolls_the_file_back(
    sftp_server: GatedSftpServer, partner: Partner, fast_runs, monkeypatch
) -> None:
    """pg_terminate_backend from a second connection while the file's transaction holds
    upserted batches: the file is rolled back, the run retries, the retry imports it once."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: a dropped server connection cannot happen to SQLite")
    from django.db import connections

    from profiles import store

    (sftp_server.data_dir / "members.csv").write_bytes(members_csv())
    job = import_job(sftp_authorization(partner, sftp_server))
    run = new_run(job)
    seen: dict[str, int] = {}
    original = store._write_payload

    def write_payload(cursor: Any, payload: bytes, timed: bool) -> None:
        seen["batches"] = seen.get("batches", 0) + 1
        if seen["batches"] == 4:  # three batches sit in the open transaction
            cursor.execute("SELECT count(*) FROM profiles_profile")
            seen["inside"] = cursor.fetchone()[0]
            observer = connections.create_connection("default")
            try:
                with observer.cursor() as other:
                    other.execute("SELECT count(*) FROM profiles_profile")
                    seen["outside"] = other.fetchone()[0]
                    other.execute(
                        "SELECT pg_terminate_backend(%s)", [cursor.connection.info.backend_pid]
                    )
                    seen["terminated"] = int(other.fetchone()[0])
            finally:
                observer.close()
        original(cursor, payload, timed)

    monkeypatch.setattr(store, "_write_payload", write_payload)

    run, retry = attempt(run, 1)

    assert seen == {"batches": 4, "inside": 600, "outside": 0, "terminated": 1}
    assert retry is not None and run.status == Run.Status.QUEUED
    assert run.error == (
        "Attempt 1 failed: Database error: terminating connection due to administrator "
        f"command. Retrying in about {retry.countdown} s."
    )
    assert Profile.objects.count() == 0 and not ImportedFile.objects.exists()

    monkeypatch.setattr(store, "_write_payload", original)
    run, retry = attempt(run, 2)

    assert retry is None and (run.status, run.attempts) == ("succeeded", 2), run.error
    assert_imported_once(job)


# --------------------------------------------------------------------------- disk full


def note(i: int) -> str:
    return f"{i:06d} " + "x" * 100


def export_job(authz: Authorization, **fields: Any) -> ExportJob:
    audience, _ = Audience.objects.get_or_create(slug="everyone", defaults={"name": "Everyone"})
    fields.setdefault("filename_template", "members.csv")
    return ExportJob.objects.create(
        partner=authz.partner,
        authorization=authz,
        audience=audience,
        name=fields.pop("name", "members export"),
        fields=["identity", "note"],
        **fields,
    )


def expected_export(rows: int) -> bytes:
    lines = ["identity,note"] + [f"p{i:06d}@x.org,{note(i)}" for i in range(rows)]
    return ("\r\n".join(lines) + "\r\n").encode()


@pytest.mark.django_db
@pytest.mark.parametrize("target", ["managed storage", "partner sftp server"])
def test_disk_full_export_fails_cleanly_and_leaves_no_partial_file(
    target: str, partner: Partner, tmp_path: Path, settings, request
) -> None:
    """A 1 MiB tmpfs, nearly full: the upload hits ENOSPC half-way. The run fails with a
    message saying so, the temporary file is removed, nothing is at the final name and
    the partner's other file is untouched; once space is freed a rerun publishes it."""
    from profiles.store import upsert_profiles

    rows = 3000  # ~350 KB of CSV
    upsert_profiles((f"p{i:06d}@x.org", {"note": note(i)}, None) for i in range(rows))
    if target == "managed storage":
        root = tmp_path / "managed"
        settings.MANAGED_SFTP_ROOT = root
        folder = root / "acme-out" / "outbound"
        mount_point = root
    else:
        sshd = request.getfixturevalue("sshd")
        key = request.getfixturevalue("ssh_keypair")("ed25519", comment="disk-full")
        sshd.authorize(key.public)
        folder = mount_point = sshd.data_dir / "outbound"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(tiny_tmpfs(mount_point, "1m"))
        except OSError as exc:
            pytest.skip(f"cannot mount a small tmpfs here ({exc})")
        folder.mkdir(parents=True, exist_ok=True)
        filler, other = folder / "other-partner-file.bin", os.urandom(800 * 1024)
        filler.write_bytes(other)
        if target == "managed storage":
            authz = Authorization.objects.create(
                partner=partner, label="acme", method=Method.MANAGED_SFTP, username="acme-out"
            )
        else:
            authz = Authorization.objects.create(
                partner=partner,
                label="acme sftp",
                method=Method.SFTP_CLIENT,
                host=sshd.host,
                port=sshd.port,
                username=sshd.user,
                private_key=key.private,
            )
        job = export_job(authz, folder="outbound")

        run, retry = attempt(new_run(job), 1)

        assert retry is None and run.status == Run.Status.FAILED and run.attempts == 1
        if target == "managed storage":
            assert run.error == (
                "no space left on the managed SFTP storage writing 'members.csv.part' (disk "
                "full or quota reached); free some space, then run the job again."
            )
        else:
            assert run.error == (
                "the server refused uploading 'members.csv.part': Failure (is its disk full, "
                "or a quota reached?)."
            )
        assert sorted(os.listdir(folder)) == ["other-partner-file.bin"]  # temp removed
        assert filler.read_bytes() == other

        filler.unlink()  # space freed: the next run publishes one complete file
        run, retry = attempt(new_run(job), 1)
        assert run.status == Run.Status.SUCCEEDED, run.error
        assert sorted(os.listdir(folder)) == ["members.csv"]
        assert (folder / "members.csv").read_bytes() == expected_export(rows)


# --------------------------------------------------------------------------- gpg missing


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["GPG_BINARY", "PATH"])
def test_gpg_missing_fails_pgp_runs_clearly_and_spares_the_others(
    how: str, sftp_server: GatedSftpServer, partner: Partner, fast_runs, gpg_keys, monkeypatch
) -> None:
    from tests.support.exports import gpg_decrypt
    from tests.support.imports import encrypt

    data = sftp_server.data_dir
    for name in ("in", "in-plain", "out", "out-plain"):
        (data / name).mkdir()
    secret = gpg_keys.protected
    (data / "in" / "members.csv.gpg").write_bytes(encrypt(members_csv(), secret))
    (data / "in-plain" / "members.csv").write_bytes(members_csv(100))
    pgp_import = import_job(
        sftp_authorization(
            partner,
            sftp_server,
            label="pgp in",
            method=Method.SFTP_CLIENT_PGP_PRIVATE,
            pgp_private_key=secret.secret,
            pgp_passphrase=secret.passphrase,
        ),
        folder="in",
        name="pgp import",
    )
    plain_import = import_job(
        sftp_authorization(partner, sftp_server, label="in"), folder="in-plain", name="plain"
    )
    pgp_export = export_job(
        sftp_authorization(
            partner,
            sftp_server,
            label="pgp out",
            method=Method.SFTP_CLIENT_PGP_PUBLIC,
            pgp_public_key=gpg_keys.plain.public,
        ),
        folder="out",
        name="pgp export",
    )
    plain_export = export_job(
        sftp_authorization(partner, sftp_server, label="out"), folder="out-plain", name="plain"
    )

    if how == "GPG_BINARY":
        monkeypatch.setenv("GPG_BINARY", "/nonexistent/bin/gpg")
        missing = "gpg is not installed (no executable '/nonexistent/bin/gpg' found on PATH)"
    else:
        monkeypatch.delenv("GPG_BINARY", raising=False)
        monkeypatch.setenv("PATH", "/nonexistent/bin")
        missing = "gpg is not installed (no executable 'gpg' found on PATH)"
    missing += "; install GnuPG 2.2+ or set GPG_BINARY."

    # Runs without PGP do not notice.
    assert attempt(new_run(plain_import), 1)[0].status == Run.Status.SUCCEEDED
    assert attempt(new_run(plain_export), 1)[0].status == Run.Status.SUCCEEDED
    assert os.listdir(data / "out-plain") == ["members.csv"]

    # PGP runs are queued again with the cause, then give up with what to do.
    import_run, export_run = new_run(pgp_import), new_run(pgp_export)
    for number in (1, 2):
        for run in (import_run, export_run):
            run, retry = attempt(run, number)
            assert retry is not None and run.status == Run.Status.QUEUED
            assert run.error == (
                f"Attempt {number} failed: {missing} Retrying in about {retry.countdown} s."
            )
    import_run, _ = attempt(import_run, 3)
    assert (import_run.status, import_run.error) == (
        "failed",
        f"Gave up after 3 attempts. Last error: {missing} Fix gpg on the worker machines as "
        "the error says, then run the job again.",
    )
    assert profiles() == expected_profiles(100)  # only the plain file
    assert not ImportedFile.objects.filter(job=pgp_import).exists()
    assert os.listdir(data / "out") == []  # no partial, nothing encrypted to nobody

    monkeypatch.undo()  # gpg is back
    rerun, _ = attempt(new_run(pgp_import), 1)
    assert rerun.status == Run.Status.SUCCEEDED, rerun.error
    assert profiles() == expected_profiles()
    assert ImportedFile.objects.filter(job=pgp_import).count() == 1
    export_run, retry = attempt(export_run, 3)
    assert retry is None and export_run.status == Run.Status.SUCCEEDED, export_run.error
    assert os.listdir(data / "out") == ["members.csv.pgp"]
    plain = gpg_decrypt((data / "out" / "members.csv.pgp").read_bytes(), gpg_keys.plain)
    assert plain.count(b"\n") == ROWS + 1


# --------------------------------------------------------------------------- real workers

# A dead worker's message is handed out again 3 s after its delivery; a dead worker's
# lease expires after 2 s; backoff stays under the visibility timeout (see settings).
WORKER_SETTINGS = {
    "CELERY_VISIBILITY_TIMEOUT": "3",
    "CELERY_UNACKED_RESTORE_INTERVAL": "1",
    "TRANSFERS_LOCK_TTL": "2",
    "TRANSFERS_LOCK_RETRY_DELAY": "1",
    "TRANSFERS_RETRY_BACKOFF": "1",
    "TRANSFERS_RETRY_BACKOFF_MAX": "2",
    "IMPORT_STABILITY_SECONDS": "0",
    "IMPORT_BATCH_SIZE": "200",
    "IMPORT_PROGRESS_INTERVAL": "0.2",
    "SFTP_CONNECT_TIMEOUT": "5",
    "LOG_LEVEL": "INFO",
}
FINAL = ("succeeded", "partial", "failed")
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def base_env(var_dir: Path) -> dict[str, str]:
    from django.conf import settings

    return {
        **os.environ,
        **WORKER_SETTINGS,
        "DJANGO_SETTINGS_MODULE": "lyticsops.settings",
        "VAR_DIR": str(var_dir),
        "SECRET_KEY": settings.SECRET_KEY,
        "FIELD_ENCRYPTION_KEYS": ",".join(settings.FIELD_ENCRYPTION_KEYS),
        "DEBUG": "1",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory) -> Path | None:
    """Migrated once per module and copied by each test (SQLite only)."""
    if connection.vendor != "sqlite":
        return None
    base = tmp_path_factory.mktemp("faults-db")
    return migrated_sqlite(base / "template.sqlite3", base_env(base / "var"))


@pytest.fixture
def shared_db(sqlite_template, tmp_path: Path, django_db_blocker):
    """Tests using it are marked ``django_db(transaction=True)``: on PostgreSQL the worker
    shares the test database, so rows must be committed (and are flushed afterwards)."""
    with django_db_blocker.unblock():
        db = SharedDatabase.for_test("faults", sqlite_template, tmp_path)
        try:
            yield db
        finally:
            db.close()


@pytest.fixture
def broker(tmp_path: Path):
    """Our own redis-server, persistent as in production (append-only file, everysec)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis = RedisServer(tmp_path / "redis", appendfsync="everysec")
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()


@pytest.fixture
def producer(broker: RedisServer):
    app = Celery("faults-producer", broker=broker.url)
    app.conf.broker_connection_timeout = 5
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def workers(shared_db: SharedDatabase, broker: RedisServer, tmp_path: Path):
    """``workers(**env)`` -> a Celery worker (not started) on the shared db and broker."""
    made: list[Worker] = []

    def make(**extra: str) -> Worker:
        env = {**base_env(tmp_path / "var"), "DATABASE_URL": shared_db.url}
        env |= {"CELERY_BROKER_URL": broker.url, **extra}
        worker = Worker(env, tmp_path / f"worker-{len(made)}.log")
        made.append(worker)
        return worker

    try:
        yield make
    finally:
        for worker in made:
            worker.kill()


def seed_partner(db: SharedDatabase, server: Any) -> Authorization:
    partner = Partner.objects.using(db.alias).create(name="Faults", slug="faults")
    return Authorization.objects.using(db.alias).create(
        partner=partner,
        label="partner sftp",
        method=Method.SFTP_CLIENT,
        host=server.host,
        port=server.port,
        username=server.username,
        password=server.password,
    )


def enqueue(producer: Celery, db: SharedDatabase, job: ImportJob | ExportJob) -> Run:
    """What `service.start_run` does, on the shared database and our broker."""
    is_import = isinstance(job, ImportJob)
    task_id = str(uuid.uuid4())
    run = Run.objects.using(db.alias).create(
        kind=Run.Kind.IMPORT if is_import else Run.Kind.EXPORT,
        partner_id=job.partner_id,
        import_job=job if is_import else None,
        export_job=None if is_import else job,
        trigger=Run.Trigger.API,
        celery_task_id=task_id,
    )
    kwargs = {"run_id": run.pk, "attempt": 1}
    producer.send_task("transfers.tasks.run_job", kwargs=kwargs, task_id=task_id)
    return run


def wait_final(db: SharedDatabase, runs: list[Run], worker: Worker, timeout: float) -> list[Run]:
    ids = [run.pk for run in runs]

    def done() -> list[Run] | None:
        found = list(Run.objects.using(db.alias).filter(pk__in=ids).order_by("pk"))
        return found if all(r.status in FINAL for r in found) else None

    try:
        return wait_until(done, timeout, "the runs to finish", step=0.2)
    except AssertionError as exc:
        found = Run.objects.using(db.alias).filter(pk__in=ids).values("pk", "status", "log")
        raise AssertionError(f"{exc}: {list(found)}\n{worker.tail()}") from None


def restart_after_visibility(worker: Worker, enqueued: float) -> None:
    """Start the worker once the dead one's message is visible again (3 s after it was
    handed out), so the new worker's start-up sweep gives it back at once."""
    time.sleep(max(0.0, enqueued + 3.5 - time.monotonic()))
    worker.start()


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_import_is_redelivered_and_imports_once(
    sftp_server: GatedSftpServer, shared_db: SharedDatabase, producer: Celery, workers
) -> None:
    db = shared_db
    (sftp_server.data_dir / "members.csv").write_bytes(members_csv())
    sftp_server.gate_at = MID_FILE  # the download stops there until released
    authz = seed_partner(db, sftp_server)
    job = ImportJob(partner=authz.partner, authorization=authz, name="members")
    job.pattern, job.identity_field = "members*", "email"
    job.save(using=db.alias)
    worker = workers()
    worker.start()

    run = enqueue(producer, db, job)
    enqueued = time.monotonic()
    wait_until(sftp_server.gate_reached.is_set, 60, "the worker to be mid-file")
    wait_until(db.in_write_transaction, 30, "the file's transaction")
    time.sleep(1)  # it parses and upserts the 2.25 MiB it was sent, then waits for more
    assert db.in_write_transaction()
    worker.kill()  # SIGKILL, pool included, the file's transaction open

    assert Profile.objects.using(db.alias).count() == 0
    assert not ImportedFile.objects.using(db.alias).exists()
    assert Run.objects.using(db.alias).get(pk=run.pk).status == Run.Status.RUNNING
    sftp_server.release()
    wait_until(lambda: sftp_server.sessions == 0, 30, "the dead session to end")
    restart_after_visibility(worker, enqueued)

    (run,) = wait_final(db, [run], worker, 90)
    assert (run.status, run.attempts, run.files_imported) == ("succeeded", 2, 1), run.log
    assert "stopped without finishing" in run.log
    assert_imported_once(job, using=db.alias)

    (again,) = wait_final(db, [enqueue(producer, db, job)], worker, 60)
    assert (again.status, again.files_imported, again.files_skipped) == ("succeeded", 0, 1)
    assert_imported_once(job, using=db.alias)


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_export_is_redelivered_and_publishes_one_file(
    sftp_server: GatedSftpServer, shared_db: SharedDatabase, producer: Celery, workers
) -> None:
    from profiles.store import upsert_profiles

    db = shared_db
    people = expected_profiles()
    upsert_profiles(((k, v, None) for k, v in people.items()), using=db.alias)
    out = sftp_server.data_dir / "out"
    out.mkdir()
    gate = 1024 * 1024
    sftp_server.gate_at = gate  # the upload stops at 1 MiB until released
    authz = seed_partner(db, sftp_server)
    audience = Audience.objects.using(db.alias).create(name="Everyone", slug="everyone")
    job = ExportJob(partner=authz.partner, authorization=authz, audience=audience)
    job.name, job.folder, job.filename_template = "members", "out", "members.csv"
    job.fields = ["identity", "name", "city", "bio"]
    job.save(using=db.alias)
    worker = workers()
    worker.start()

    run = enqueue(producer, db, job)
    enqueued = time.monotonic()
    wait_until(sftp_server.gate_reached.is_set, 60, "the worker to be mid-upload")
    part = out / "members.csv.part"
    wait_until(lambda: part.exists() and part.stat().st_size == gate, 10, "1 MiB uploaded")
    worker.kill()

    assert os.listdir(out) == ["members.csv.part"]  # nothing at the final name
    sftp_server.release()
    wait_until(lambda: sftp_server.sessions == 0, 30, "the dead session to end")
    restart_after_visibility(worker, enqueued)

    (run,) = wait_final(db, [run], worker, 90)
    assert (run.status, run.attempts, run.rows_read) == ("succeeded", 2, ROWS), run.log
    assert "stopped without finishing" in run.log
    assert os.listdir(out) == ["members.csv"]  # one file, complete, no temporary left
    lines = [f"{k},{v['name']},{v['city']},{v['bio']}\r\n" for k, v in sorted(people.items())]
    expected = "identity,name,city,bio\r\n" + "".join(lines)
    assert (out / "members.csv").read_bytes() == expected.encode()


@pytest.mark.django_db(transaction=True)
def test_broker_restart_loses_no_job_and_runs_none_twice(
    shared_db: SharedDatabase, broker: RedisServer, producer: Celery, workers, tmp_path: Path
) -> None:
    """Runs through the real task and service; the pipeline is tests.support.fake_runs,
    which logs a start and an end event per execution."""
    db = shared_db
    nowhere = SimpleNamespace(host="sftp.invalid", port=22, username="u", password="unused")
    authz = seed_partner(db, nowhere)
    jobs = []
    for name in ("sleep=0.2 a", "sleep=0.2 b", "sleep=0.2 c", *(f"sleep=1.5 {n}" for n in "wxyz")):
        job = ImportJob(partner=authz.partner, authorization=authz, name=name)
        job.save(using=db.alias)
        jobs.append(job)
    env = {"DJANGO_SETTINGS_MODULE": "tests.support.worker_settings"}
    env["FAKE_RUN_EVENTS"] = str(tmp_path / "events.jsonl")
    worker = workers(**env)

    # 1. Six runs queued, no worker; Redis restarted (cleanly, as `compose restart` does).
    queued = [enqueue(producer, db, job) for job in jobs[:3] * 2]
    assert broker.client().llen("celery") == 6
    broker.stop()
    broker.start()
    assert broker.client().llen("celery") == 6  # the append-only file kept them
    worker.start()
    runs = wait_final(db, queued, worker, 90)
    assert [r.status for r in runs] == ["succeeded"] * 6

    # 2. Four runs under way or waiting; Redis crashes (SIGKILL) and comes back.
    busy = [enqueue(producer, db, job) for job in jobs[3:]]
    enqueued = time.monotonic()
    wait_until(lambda: any(events(worker.env, r.pk) for r in busy), 30, "a run to start")
    time.sleep(max(0.0, enqueued + 1.2 - time.monotonic()))  # appendfsync everysec
    broker.kill()
    broker.start()
    runs = wait_final(db, busy, worker, 90)
    assert [r.status for r in runs] == ["succeeded"] * 4
    # The messages of the runs that were executing could not be acknowledged: they come
    # back (from the append-only file) and are recognised as done.
    wait_until(lambda: "already succeeded; nothing to do" in worker.tail(), 30, "redelivery")

    for run in [*queued, *busy]:  # every run executed exactly once
        kinds = [e["event"] for e in events(worker.env, run.pk)]
        assert kinds == ["start", "end"], (run.pk, kinds, worker.tail())


# --------------------------------------------------------------------------- DST clock jumps


def beat_with_clock_jumps(
    job: ExportJob, start: dt.datetime, end: dt.datetime, jump_at: dt.datetime, jump: dt.timedelta
) -> list[dt.datetime]:
    """Run django-celery-beat's DatabaseScheduler (the one beat uses, with the project's
    Celery configuration) from ``start`` to ``end``, sleeping as long as it asks (at most
    15 min, ``beat --max-interval 900``). While it sleeps over ``jump_at`` the clock is
    stepped by ``jump`` (NTP step, resumed VM, hand-set clock) and beat is restarted,
    reading its state back from the database. Beat saves its state every 3 minutes while
    awake; here the restart comes before that (the worst case), so only what it saves on
    sending a task survives. Sending a task starts the run at once (its worker finishes
    it)."""
    from django.utils import timezone
    from django_celery_beat.models import PeriodicTask, PeriodicTasks
    from django_celery_beat.schedulers import DatabaseScheduler

    from lyticsops.celery import app

    started: list[dt.datetime] = []

    class Beat(DatabaseScheduler):
        producer = None  # type: ignore[assignment]  # nothing is sent to a broker

        def apply_async(self, entry, producer=None, advance=True, **kwargs):
            entry = self.reserve(entry) if advance else entry
            try:
                if entry.task == "transfers.tasks.scheduled_export":
                    run = service.start_scheduled(ExportJob, entry.kwargs["job_id"])
                    assert run is not None
                    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
                    started.append(timezone.now())
            finally:  # what celery.beat.Scheduler.apply_async does after sending
                self._tasks_since_sync += 1
                if self.should_sync():
                    self._do_sync()

    def start_beat() -> Beat:
        beat = Beat(app=app, max_interval=900)
        # Only this job's schedule (beat's own entries would wake it every 5 minutes).
        PeriodicTask.objects.exclude(pk=job.periodic_task_id).update(enabled=False)
        PeriodicTasks.update_changed()
        return beat

    now, beat, jumped = start, None, False
    try:
        while now < end:
            with time_machine.travel(now, tick=False):
                if beat is None:
                    beat = start_beat()
                else:
                    beat._do_sync()  # its periodic save, while it was asleep
                for _ in range(10):  # one due task per tick
                    delay = beat.tick()
                    if delay:
                        break
            wake = now + dt.timedelta(seconds=max(delay, 1))
            if not jumped and wake >= jump_at:
                wake, jumped = wake + jump, True
                beat._finalize.cancel()  # no save at exit: it "crashed"
                beat = None  # restarted after the clock was stepped
            now = wake
    finally:
        if beat is not None:
            beat._finalize.cancel()
    return started


@pytest.mark.django_db(transaction=True)  # beat's scheduler commits and reconnects
@pytest.mark.parametrize(
    "start,jump_at,jump,expected",
    [
        # Spring forward (2025-03-30, 02:30 does not exist; due at 03:30 CEST = 01:30 UTC),
        # and the clock jumps an hour forward over that moment: it runs late, once.
        (
            dt.datetime(2025, 3, 29, tzinfo=dt.UTC),
            dt.datetime(2025, 3, 30, 1, 0, tzinfo=dt.UTC),
            dt.timedelta(hours=1),
            ["03-29 02:30+01", "03-30 04:00+02", "03-31 02:30+02"],
        ),
        # Fall back (2025-10-26, 02:30 happens twice): after the first 02:30 the clock is
        # stepped an hour back, so 02:30 comes round a third time: it ran once.
        (
            dt.datetime(2025, 10, 25, tzinfo=dt.UTC),
            dt.datetime(2025, 10, 26, 0, 45, tzinfo=dt.UTC),
            dt.timedelta(hours=-1),
            ["10-25 02:30+02", "10-26 02:30+02", "10-27 02:30+01"],
        ),
    ],
    ids=["spring-forward-clock-jumps-ahead", "fall-back-clock-jumps-back"],
)
def test_daily_paris_export_runs_once_a_day_when_the_clock_jumps(
    make_export_job, start, jump_at, jump, expected
) -> None:
    with time_machine.travel(start - dt.timedelta(hours=1), tick=False):  # set up beforehand
        job = make_export_job(
            schedule_kind="daily", daily_time=dt.time(2, 30), schedule_timezone="Europe/Paris"
        )
    started = beat_with_clock_jumps(job, start, start + dt.timedelta(days=3), jump_at, jump)

    local = [s.astimezone(PARIS) for s in started]
    assert [f"{t:%m-%d %H:%M%z}"[:-2] for t in local] == expected
    assert len({t.date() for t in local}) == len(local) == 3  # once a day, every day
    assert job.runs.filter(trigger=Run.Trigger.SCHEDULE).count() == 3


# --------------------------------------------------------------------------- secrets in logs


class _Collect(logging.Handler):
    """Formats each record with a project formatter, after the given filters, on a copy
    (a redacting filter must not change what the other handlers see)."""

    def __init__(self, formatter: logging.Formatter, filters: list[logging.Filter]) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.record_filters = filters
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        record = copy.copy(record)
        for item in self.record_filters:
            item.filter(record)
        self.lines.append(self.format(record))


@pytest.fixture
def every_log(caplog):
    """Every record of every logger at DEBUG: pytest's capture of the raw records, plus
    handlers on the root logger formatting with the project's formatters (plain and
    JSON), without its redacting filter (code must not hand a secret to a logger at all)
    and with it. The project's own console handler redacts records in place, so it is
    taken off meanwhile: the other handlers see what the code logged."""
    from lyticsops.logging import ContextFilter, JsonFormatter, PlainFormatter, RedactingFilter

    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            caplog.set_level(logging.DEBUG, logger=name)  # paramiko, gnupg, django...
    redacting = [
        h for h in logging.root.handlers if any(isinstance(f, RedactingFilter) for f in h.filters)
    ]
    plain = PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handlers = [
        _Collect(plain, [ContextFilter()]),
        _Collect(JsonFormatter(), [ContextFilter()]),
        _Collect(JsonFormatter(), [ContextFilter(), RedactingFilter()]),
    ]
    for handler in redacting:
        logging.root.removeHandler(handler)
    for handler in handlers:
        logging.root.addHandler(handler)
    forced = connection.force_debug_cursor
    connection.force_debug_cursor = True  # SQL statements with their parameters, too
    try:
        yield lambda: [caplog.text, *("\n".join(h.lines) for h in handlers)]
    finally:
        connection.force_debug_cursor = forced
        for handler in handlers:
            logging.root.removeHandler(handler)
        for handler in redacting:
            logging.root.addHandler(handler)


@pytest.mark.django_db
def test_no_secret_is_ever_logged(
    every_log, sftp_server, ssh_keypair, gpg_keys, make_client, acme, client, oauth, settings
) -> None:
    """A full import (SSH key with passphrase, then PGP private key with passphrase) and a
    full export (password, PGP public key), a failed login, an API client's secret traded
    for a token and the token used: no secret the test made is in any log line."""
    import secrets

    from django.conf import settings as conf

    from tests.support.imports import encrypt

    settings.IMPORT_STABILITY_SECONDS = 0
    sftp_server.password = "pw-" + secrets.token_urlsafe(16)
    ssh_passphrase = "pp-" + secrets.token_urlsafe(16)
    key = ssh_keypair("ed25519", passphrase=ssh_passphrase, comment="no-secret-logged")
    sftp_server.accept_public_key(key.public)
    sftp_server.allowed_auths = ["publickey", "password"]
    pgp_key = gpg_keys.protected
    data = sftp_server.data_dir
    (data / "in").mkdir()
    (data / "out").mkdir()
    (data / "in" / "members.csv.gpg").write_bytes(encrypt(members_csv(50), pgp_key))

    importing = Authorization.objects.create(
        partner=acme,
        label="acme in",
        method=Method.SFTP_CLIENT_PGP_PRIVATE,
        host=sftp_server.host,
        port=sftp_server.port,
        username=sftp_server.username,
        private_key=key.private,
        passphrase=ssh_passphrase,
        password=sftp_server.password,
        pgp_private_key=pgp_key.secret,
        pgp_passphrase=pgp_key.passphrase,
        folder="in",
    )
    exporting = Authorization.objects.create(
        partner=acme,
        label="acme out",
        method=Method.SFTP_CLIENT_PGP_PUBLIC,
        host=sftp_server.host,
        port=sftp_server.port,
        username=sftp_server.username,
        password=sftp_server.password,
        pgp_public_key=gpg_keys.plain.public,
        folder="out",
    )
    wrong = Authorization.objects.create(
        partner=acme,
        label="acme wrong",
        method=Method.SFTP_CLIENT,
        host=sftp_server.host,
        port=sftp_server.port,
        username=sftp_server.username,
        password=sftp_server.password + "-wrong",
        folder="in",
    )
    api_client = make_client(acme)

    # The partner's machine: a token for its secret, then the API.
    token = oauth.get_token(client, api_client)
    api = oauth.Api(client, token)
    pulled = import_job(importing)
    assert api.get("imports").status_code == 200
    assert api.post(f"imports/{pulled.pk}/runs", {}).status_code in (200, 201, 202)
    oauth.token_request(
        client,
        {
            "grant_type": "client_credentials",
            "client_id": api_client.client_id,
            "client_secret": api_client.secret + "x",
        },
    )

    # The workers' side: import, export, a refused login.
    run, _ = attempt(new_run(pulled), 1)
    assert (run.status, run.rows_upserted) == ("succeeded", 50), run.error
    run, _ = attempt(new_run(export_job(exporting, folder="out")), 1)
    assert run.status == "succeeded" and os.listdir(data / "out") == ["members.csv.pgp"]
    run, _ = attempt(new_run(import_job(wrong, name="wrong")), 1)
    assert run.status == "failed" and "authentication failed" in run.error

    runs = [f"{r.log}\n{r.error}" for r in Run.objects.all()]
    texts = [*every_log(), *runs]
    for seen in (  # the capture did see all of it, down to SSH and SQL details
        "importing 'members.csv.gpg'",
        "Authentication (publickey) successful",
        "Exported 50 rows",
        "token issued",
        "INSERT INTO",  # SQL with its parameters (the stored secrets are ciphertext)
    ):
        assert all(seen in text for text in texts[:4]), seen
    secrets_made = {
        "SFTP password": sftp_server.password,
        "SSH private key": key.private.strip().splitlines()[1],
        "SSH key passphrase": ssh_passphrase,
        "PGP private key": pgp_key.secret.strip().splitlines()[3],
        "PGP passphrase": pgp_key.passphrase,
        "API client secret": api_client.secret,
        "access token": token,
        "SECRET_KEY": conf.SECRET_KEY,
        **{f"field key {i}": k for i, k in enumerate(conf.FIELD_ENCRYPTION_KEYS)},
        "OpenSSH key marker": "BEGIN OPENSSH PRIVATE KEY",
        "PGP key marker": "BEGIN PGP PRIVATE KEY BLOCK",
    }
    for text in texts:
        for what, secret in secrets_made.items():
            assert secret not in text, f"{what} found in the logs"
