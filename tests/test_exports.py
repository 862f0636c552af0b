"""Export runs end to end: a real OpenSSH sshd, the real gpg, and the partner's programs
(OpenSSH ``sftp``, ``gpg``) on the other side. Runs on SQLite and on PostgreSQL
(DATABASE_URL), where the CSV cells come from SQL instead of Python."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from profiles.models import Audience
from profiles.store import upsert_profiles
from tests.support.exports import (
    Partner,
    gpg_decrypt,
    gunzip,
    is_pgp_message,
    make_profiles,
    parse_csv,
    parse_jsonl,
    sftp_authorization,
)
from transfers import exports, filenames, writers
from transfers.errors import ConfigError, TransferError, is_retryable
from transfers.models import ExportJob, Run
from transfers.runs import RunRecorder

if TYPE_CHECKING:  # imported by pytest_plugins; importing it here would defeat rewriting
    from tests.support.gpgkeys import KeySet
    from tests.support.sshd import KeyMaker, KeyPair, Sshd


WHEN = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
STAMP = "20250304050607"
ROOT = Path(__file__).resolve().parent.parent

PEOPLE: list[tuple[str, dict[str, Any]]] = [
    ("alice@example.com", {"first": "Alice", "country": "FR", "score": 10, "vip": True}),
    ("bob@example.com", {"first": 'Bob "the, builder"', "country": "FR", "score": 2.5}),
    ("carol@example.com", {"first": "Carol\nMultiline", "country": "DE", "vip": False}),
    ("dan@example.com", {"first": "Dän 日本", "country": "FR", "tags": ["a", "b"]}),
    ("erin@example.com", {"country": "FR", "score": None}),
]
FR = [p for p in PEOPLE if p[1].get("country") == "FR"]
FIELDS = [
    {"attribute": "identity", "column": "Email"},
    {"attribute": "first", "column": "First name"},
    {"attribute": "score"},
    {"attribute": "vip", "column": "VIP"},
    {"attribute": "tags"},
]


def expected_csv_rows(people: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    """What the partner must read back, computed independently of the writer."""
    spelled = {True: "true", False: "false", None: ""}
    rows = []
    for identity, attrs in sorted(people):
        row = [identity]
        for key in ("first", "score", "vip", "tags"):
            value = attrs.get(key)
            if isinstance(value, bool) or value is None:
                row.append(spelled[value])
            elif isinstance(value, list):
                row.append(json.dumps(value))
            else:
                row.append(str(value))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client_key(ssh_keypair: KeyMaker) -> KeyPair:
    return ssh_keypair("ed25519", comment="lyticsops-export")


@pytest.fixture
def server(sshd: Sshd, client_key: KeyPair) -> Sshd:
    sshd.authorize(client_key.public)
    return sshd


@pytest.fixture
def partner_side(server: Sshd, client_key: KeyPair, tmp_path: Path) -> Partner:
    workdir = tmp_path / "partner"
    workdir.mkdir()
    return Partner(server, client_key, workdir)


@pytest.fixture
def fr_audience(db) -> Audience:
    return Audience.objects.create(
        name="Clients Île-de-France / VIP",
        slug="fr",
        conditions=[{"field": "country", "op": "eq", "value": "FR"}],
    )


@pytest.fixture
def people(db) -> None:
    # The same store the import pipeline writes through.
    upsert_profiles([(identity, attrs, None) for identity, attrs in PEOPLE])


@pytest.fixture
def make_job(partner, server, client_key, fr_audience, gpg_keys: KeySet):
    def make(*, encrypt: bool = True, public_key: str | None = None, **fields) -> ExportJob:
        key = public_key or (gpg_keys.plain.public if encrypt else None)
        authz = sftp_authorization(partner, server, client_key, public_key=key)
        fields.setdefault("name", "Daily FR")
        fields.setdefault("fields", FIELDS)
        fields.setdefault("filename_template", "export-{audience}-{YYYY}{MM}{DD}{HH}{mm}{ss}.csv")
        fields.setdefault("audience", fr_audience)
        return ExportJob.objects.create(partner=partner, authorization=authz, **fields)

    return make


def new_run(job: ExportJob) -> Run:
    return Run.objects.create(
        kind=Run.Kind.EXPORT,
        partner=job.partner,
        export_job=job,
        status=Run.Status.RUNNING,
        started_at=WHEN,
    )


def export(job: ExportJob) -> Run:
    run = new_run(job)
    exports.run_export(run)
    run.refresh_from_db()
    return run


FINAL = f"export-Clients_Ile-de-France_VIP-{STAMP}.csv"


# --------------------------------------------------------------------------- round trip


@pytest.mark.django_db
def test_round_trip_pgp_csv_fetched_with_sftp_and_decrypted_with_gpg(
    make_job, people, partner_side: Partner, gpg_keys: KeySet
):
    job = make_job(compression=ExportJob.Compression.GZIP)

    run = export(job)

    name = FINAL + ".pgp"  # gzip is skipped: PGP compresses
    assert partner_side.files() == [name]
    encrypted = partner_side.fetch(name)
    assert is_pgp_message(encrypted)
    plain = gpg_decrypt(encrypted, gpg_keys.plain)
    rows = parse_csv(plain)
    assert rows[0] == ["Email", "First name", "score", "VIP", "tags"]
    assert rows[1:] == expected_csv_rows(FR)
    assert plain.endswith(b"\r\n") and plain.count(b"\r\n") == len(FR) + 1
    assert run.file_name == name
    assert run.rows_read == len(FR)
    assert run.bytes_transferred == len(encrypted)
    assert run.sha256 == hashlib.sha256(encrypted).hexdigest()
    assert "gzip skipped" in run.log
    assert f"Exported {len(FR)} rows" in run.log


@pytest.mark.django_db
def test_jsonl_gzip_without_encryption(make_job, people, partner_side: Partner):
    job = make_job(encrypt=False, format="jsonl", compression="gzip")

    run = export(job)

    name = FINAL + ".gz"
    assert partner_side.files() == [name]
    records = parse_jsonl(gunzip(partner_side.fetch(name)))
    assert records[0] == {
        "Email": "alice@example.com",
        "First name": "Alice",
        "score": 10,
        "VIP": True,
        "tags": None,
    }
    assert [r["Email"] for r in records] == [p[0] for p in sorted(FR)]
    assert records[2]["tags"] == ["a", "b"] and records[2]["First name"] == "Dän 日本"
    assert list(records[0]) == ["Email", "First name", "score", "VIP", "tags"]
    assert run.rows_read == len(FR)


@pytest.mark.django_db
def test_csv_semicolon_without_header(make_job, people, partner_side: Partner):
    job = make_job(encrypt=False, csv_delimiter=";", csv_header=False)

    export(job)

    data = partner_side.fetch(FINAL)
    assert parse_csv(data, delimiter=";") == expected_csv_rows(FR)
    assert b'"Bob ""the, builder"""' in data  # quotes doubled; ',' alone needs no quoting


@pytest.mark.django_db
def test_identity_only_when_no_fields(make_job, people, partner_side: Partner):
    job = make_job(encrypt=False, fields=[], filename_template="ids.csv")

    export(job)

    assert parse_csv(partner_side.fetch("ids.csv")) == [["identity"]] + [[p[0]] for p in sorted(FR)]


@pytest.mark.django_db
def test_manifest_describes_the_file(make_job, people, partner_side: Partner, gpg_keys: KeySet):
    job = make_job(write_manifest=True)

    export(job)

    name = FINAL + ".pgp"
    assert partner_side.files() == [name, name + ".manifest.json"]
    data = partner_side.fetch(name)
    manifest = json.loads(partner_side.fetch(name + ".manifest.json"))
    assert manifest == {
        "name": name,
        "size": len(data),
        "rows": len(FR),
        "sha256": hashlib.sha256(data).hexdigest(),
        "created": "2025-03-04T05:06:07Z",
        "format": "csv",
        "compression": "none",
        "encrypted": True,
    }


@pytest.mark.django_db
def test_managed_account_is_written_locally(partner, fr_audience, people, settings, tmp_path):
    from authorizations.models import Authorization, Method

    settings.MANAGED_SFTP_ROOT = tmp_path / "managed"
    (tmp_path / "managed" / "acme-out" / "outbound").mkdir(parents=True)
    account = Authorization.objects.create(
        partner=partner, label="Acme account", method=Method.MANAGED_SFTP, username="acme-out"
    )
    job = ExportJob.objects.create(
        partner=partner,
        authorization=account,
        audience=fr_audience,
        name="to our server",
        folder="outbound",
        fields=FIELDS,
        filename_template="fr-{YYYY}-{MM}-{DD}.csv",
        write_manifest=True,
    )

    run = export(job)

    folder = tmp_path / "managed" / "acme-out" / "outbound"
    assert sorted(os.listdir(folder)) == ["fr-2025-03-04.csv", "fr-2025-03-04.csv.manifest.json"]
    assert parse_csv((folder / "fr-2025-03-04.csv").read_bytes())[1:] == expected_csv_rows(FR)
    assert run.file_name == "fr-2025-03-04.csv"


@pytest.mark.django_db
def test_through_the_service_success_and_permanent_failure(
    make_job, people, partner_side: Partner, gpg_keys: KeySet
):
    """The orchestration calls run_export and sets the status from what it raises."""
    from transfers import service

    good = make_job(name="good")
    run = service.execute_run(service.start_run(good, Run.Trigger.MANUAL, enqueue=False).pk)
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert run.rows_read == len(FR) and run.file_name.endswith(".csv.pgp")
    assert run.duration_seconds is not None
    assert "Exported 4 rows" in run.log and run.log.rstrip().endswith("Finished: Succeeded.")

    expired = make_job(name="expired", public_key=gpg_keys.expired.public)
    run = service.execute_run(service.start_run(expired, Run.Trigger.MANUAL, enqueue=False).pk)
    assert run.status == Run.Status.FAILED
    assert "PGP public key cannot be used (expired)" in run.error
    assert run.attempts == 1  # permanent: not retried


# --------------------------------------------------------------------------- collisions


@pytest.mark.django_db
def test_collision_fail_leaves_the_existing_file_alone(make_job, people, server: Sshd):
    job = make_job(collision=ExportJob.Collision.FAIL)
    existing = server.data_dir / (FINAL + ".pgp")
    existing.write_bytes(b"the partner's file")

    with pytest.raises(TransferError) as info:
        export(job)

    assert "already exists" in str(info.value) and not is_retryable(info.value)
    assert existing.read_bytes() == b"the partner's file"
    assert sorted(os.listdir(server.data_dir)) == [FINAL + ".pgp"]  # no .part left behind


@pytest.mark.django_db
def test_collision_counter_goes_before_the_extension(make_job, people, server: Sshd):
    job = make_job(collision=ExportJob.Collision.COUNTER, write_manifest=True)
    (server.data_dir / (FINAL + ".pgp")).write_bytes(b"old")
    stem = FINAL.removesuffix(".csv")
    # A stale manifest alone also makes the name taken.
    (server.data_dir / f"{stem}-1.csv.pgp.manifest.json").write_bytes(b"{}")

    run = export(job)

    assert run.file_name == f"{stem}-2.csv.pgp"
    names = sorted(os.listdir(server.data_dir))
    assert f"{stem}-2.csv.pgp" in names and f"{stem}-2.csv.pgp.manifest.json" in names
    assert (server.data_dir / (FINAL + ".pgp")).read_bytes() == b"old"
    assert not [n for n in names if n.endswith(".part")]


# --------------------------------------------------------------------------- empty audience


@pytest.mark.django_db
def test_empty_audience_header_only(make_job, partner_side: Partner):
    job = make_job(encrypt=False, empty_audience=ExportJob.EmptyAudience.HEADER_ONLY)

    run = export(job)

    assert partner_side.fetch(FINAL) == b"Email,First name,score,VIP,tags\r\n"
    assert run.rows_read == 0 and run.file_name == FINAL


@pytest.mark.django_db
def test_empty_audience_no_file_does_not_even_connect(make_job, server: Sshd):
    job = make_job(encrypt=False, empty_audience=ExportJob.EmptyAudience.NO_FILE)
    server.stop()  # any connection attempt would now fail the run

    run = export(job)

    assert os.listdir(server.data_dir) == []
    assert run.file_name == "" and run.rows_read == 0
    assert "no file written" in run.log


# --------------------------------------------------------------------------- PGP key


@pytest.mark.django_db
@pytest.mark.parametrize("which", ["expired", "revoked", "sign_only"])
def test_unusable_partner_key_is_refused_before_any_data_is_read(
    make_job, people, server: Sshd, gpg_keys: KeySet, which: str
):
    job = make_job(public_key=getattr(gpg_keys, which).public)
    run = new_run(job)

    with CaptureQueriesContext(connection) as queries, pytest.raises(ConfigError) as info:
        exports.run_export(run)

    assert "PGP public key cannot be used" in str(info.value)
    assert not is_retryable(info.value)
    assert not [q for q in queries.captured_queries if "profiles_profile" in q["sql"]]
    assert os.listdir(server.data_dir) == []


# --------------------------------------------------------------------------- failures


@pytest.mark.django_db
def test_failure_mid_upload_removes_the_temporary_file(
    make_job, people, server: Sshd, monkeypatch, settings
):
    settings.EXPORT_CHUNK_SIZE = 2
    job = make_job(encrypt=False)
    seen: list[list[str]] = []

    def write_rows_then_fail(self, rows):
        seen.append(sorted(os.listdir(server.data_dir)))
        if len(seen) == 2:
            raise ConnectionResetError("database connection lost")
        original(self, rows)

    original = writers.CsvWriter.write_rows
    monkeypatch.setattr(writers.CsvWriter, "write_rows", write_rows_then_fail)

    with pytest.raises(ConnectionResetError):
        export(job)

    assert seen[0] == [FINAL + ".part"]  # it was being written under the temporary name
    assert os.listdir(server.data_dir) == []


@pytest.mark.django_db
def test_connection_lost_mid_upload_temp_removed_over_a_new_connection(
    make_job, people, server: Sshd, monkeypatch, settings
):
    from transfers import remote

    settings.EXPORT_CHUNK_SIZE = 1
    job = make_job(encrypt=False)
    sessions: list[Any] = []
    original_open = remote.open_folder

    @contextmanager
    def spying_open(*args, **kwargs):
        with original_open(*args, **kwargs) as session:
            sessions.append(session)
            yield session

    original_write = writers.CsvWriter.write_rows

    def drop_connection(self, rows):
        original_write(self, rows)
        sessions[0]._transport.close()  # the network goes away

    monkeypatch.setattr(remote, "open_folder", spying_open)
    monkeypatch.setattr(writers.CsvWriter, "write_rows", drop_connection)

    with pytest.raises(Exception) as info:
        export(job)

    assert is_retryable(info.value), info.value
    assert len(sessions) == 2  # the second connection removed the temporary file
    assert os.listdir(server.data_dir) == []


@pytest.mark.django_db
def test_failure_at_rename_removes_the_temporary_file(make_job, people, server: Sshd, monkeypatch):
    from transfers.sftp import SftpError, SftpSession

    def refuse(self, old, new):
        raise SftpError("permission", "permission denied renaming")

    monkeypatch.setattr(SftpSession, "rename", refuse)
    job = make_job()

    with pytest.raises(SftpError):
        export(job)

    assert os.listdir(server.data_dir) == []


@pytest.mark.django_db
def test_stale_part_of_this_job_is_swept(make_job, people, server: Sshd, settings):
    settings.EXPORT_STALE_PART_SECONDS = 60
    job = make_job(encrypt=False)
    old = time.time() - 3600
    for name in ("export-x-20240101000000.csv.part", "someone-else.csv.part"):
        (server.data_dir / name).write_bytes(b"partial")
        os.utime(server.data_dir / name, (old, old))
    (server.data_dir / "export-y-20240101000000.csv.part").write_bytes(b"live")  # fresh

    run = export(job)

    assert sorted(os.listdir(server.data_dir)) == [
        FINAL,
        "export-y-20240101000000.csv.part",
        "someone-else.csv.part",
    ]
    assert "left behind by an interrupted earlier run" in run.log


@pytest.mark.django_db
def test_progress_is_persisted_while_running(make_job, people, monkeypatch, settings):
    settings.EXPORT_CHUNK_SIZE = 1
    job = make_job(encrypt=False)
    run = new_run(job)
    recorder = RunRecorder(run, interval=0)
    persisted: list[int] = []
    original = writers.CsvWriter.write_rows

    def spy(self, rows):
        persisted.append(Run.objects.get(pk=run.pk).rows_read)
        original(self, rows)

    monkeypatch.setattr(writers.CsvWriter, "write_rows", spy)

    exports.run_export(run, recorder)

    assert persisted == list(range(len(FR)))


def _worker(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.export_worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_killed_mid_upload_leaves_no_final_file_and_a_rerun_completes(
    server: Sshd, client_key: KeyPair, tmp_path: Path
):
    """SIGKILL (no cleanup can run) while the .part file grows; then run again."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'worker.sqlite3'}",
        "VAR_DIR": str(tmp_path / "var"),
        "DEBUG": "1",
    }
    config = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "private_key": client_key.private,
        "rows": 60000,
    }
    setup = _worker("setup", json.dumps(config), env=env)
    out, err = setup.communicate(timeout=180)
    assert setup.returncode == 0, err.decode()
    job_id = out.decode().split()[-1]

    slow = _worker("run", job_id, "--slow", env=env)
    part = server.data_dir / "members-20250304.csv.part"
    sizes = _watch_growth(part, slow)
    slow.send_signal(signal.SIGKILL)
    slow.wait(timeout=10)

    assert sizes[-1] > sizes[0] > 0, sizes
    assert os.listdir(server.data_dir) == [part.name]  # no file at the final name

    rerun = _worker("run", job_id, "--sweep-now", env=env)
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err.decode()
    assert os.listdir(server.data_dir) == ["members-20250304.csv"]
    rows = parse_csv((server.data_dir / "members-20250304.csv").read_bytes())
    assert rows[0] == ["identity", "n"]
    assert rows[1:] == [[f"user{i:06d}@example.com", str(i)] for i in range(60000)]


def _watch_growth(part: Path, worker: subprocess.Popen[bytes]) -> list[int]:
    """Sizes of ``part`` until it has grown twice (the upload is under way)."""
    sizes: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise AssertionError(f"worker ended early: {worker.stderr.read().decode()}")
        if part.exists():
            size = part.stat().st_size
            if size > (sizes[-1] if sizes else 0):
                sizes.append(size)
            if len(sizes) >= 3:
                return sizes
        time.sleep(0.01)
    raise AssertionError(f"the .part file did not grow: {sizes}")


# --------------------------------------------------------------------------- PostgreSQL path


TRICKY: list[tuple[str, dict[str, Any]]] = [
    ("p1", {"first": 'x,y"z\n', "score": 1.25, "vip": True, "tags": {"a": None, "b": [1, 2]}}),
    ("p2", {}),
    ("p3", {"score": 0, "vip": None, "first": "", "tags": []}),
    ("p4", {"first": " lead;semi\ttab\r\nCRLF", "score": -3e-05, "tags": "\\."}),
    ("p5", {"first": "Zoë 日本 \u2028 end", "score": 10**20, "vip": False, "tags": '"'}),
]


def _postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the SQL cell, read-ahead and COPY paths are PostgreSQL only")


@pytest.mark.django_db
def test_sql_cells_and_python_cells_agree(make_job):
    _postgresql_only()
    make_profiles(TRICKY)
    job = make_job(encrypt=False, audience=Audience.objects.create(name="all", slug="all"))
    plan = exports.plan_export(job, WHEN)

    def cells(**path: bool) -> list[tuple]:
        return [tuple(row) for chunk in exports.audience_chunks(job, plan, **path) for row in chunk]

    via_sql = cells(read_ahead=False)
    assert via_sql == cells(read_ahead=False, sql_cells=False)
    assert via_sql[0] == ("p1", 'x,y"z\n', "1.25", "true", '{"a": null, "b": [1, 2]}')


def _file(job: ExportJob, plan: exports.ExportPlan, **path: bool) -> bytes:
    out = io.BytesIO()
    exports.write_file(out, plan, exports.audience_chunks(job, plan, **path), lambda r, b: None)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_every_read_path_writes_the_same_bytes(partner, make_job, delimiter: str):
    """COPY, read-ahead rows and the portable path: byte-identical CSV (committed data:
    the read-ahead paths use a connection of their own)."""
    _postgresql_only()
    make_profiles(TRICKY)
    audience = Audience.objects.create(name="all", slug="all")
    job = make_job(encrypt=False, audience=audience, csv_delimiter=delimiter)
    plan = exports.plan_export(job, WHEN)

    portable = _file(job, plan, read_ahead=False, sql_cells=False)

    assert _file(job, plan, read_ahead=True, copy=True) == portable
    assert _file(job, plan, read_ahead=True, copy=False) == portable
    assert _file(job, plan, read_ahead=False) == portable
    assert parse_csv(portable, delimiter)[1:] == [
        [
            identity,
            *(writers.csv_cell(attrs.get(k)) or "" for k in ("first", "score", "vip", "tags")),
        ]
        for identity, attrs in TRICKY
    ]


@pytest.mark.django_db(transaction=True)
def test_read_ahead_export_end_to_end_with_visible_progress(
    make_job, partner_side: Partner, gpg_keys: KeySet, settings
):
    """Outside a transaction on PostgreSQL (as in a worker): COPY in a reading thread,
    while progress is committed on the main connection for others to see."""
    _postgresql_only()
    settings.EXPORT_COPY_BLOCK_BYTES = 1  # one row per block, to watch progress
    make_profiles([(f"u{i:04d}", {"first": f"n{i}", "score": i}) for i in range(50)])
    job = make_job(audience=Audience.objects.create(name="all", slug="all"))
    run = new_run(job)
    seen: list[int] = []
    watcher = connections.create_connection("default")

    def watch(rows: int, size: int) -> None:
        with watcher.cursor() as cursor:
            cursor.execute("select rows_read from transfers_run where id = %s", [run.pk])
            seen.append(cursor.fetchone()[0])

    recorder = RunRecorder(run, interval=0)
    original = recorder.tick
    recorder.tick = lambda: (original(), watch(0, 0))  # type: ignore[method-assign]
    try:
        exports.run_export(run, recorder)
    finally:
        watcher.close()

    run.refresh_from_db()
    rows = parse_csv(gpg_decrypt(partner_side.fetch(run.file_name), gpg_keys.plain))
    assert [r[0] for r in rows[1:]] == [f"u{i:04d}" for i in range(50)]
    assert run.rows_read == 50
    assert seen[:3] == [1, 2, 3] and seen[-1] == 50  # committed as it went


# --------------------------------------------------------------------------- file names


def test_filename_template_fields_and_safe_names():
    context = filenames.NameContext(
        when=dt.datetime(2025, 12, 31, 23, 59, 58, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        audience="../Équipe Zürich — straße/ñ 😀",
        job=".hidden job",
        partner="Ørsted Æbler Łódź",
    )
    name = filenames.render("{partner}_{job}_{audience}_{YYYY}{MM}{DD}{HH}{mm}{ss}.csv", context)
    assert name == "Orsted_AEbler_Lodz_hidden_job_Equipe_Zurich_strasse_n_20260101045958.csv"


def test_filename_keeps_letters_without_ascii_spelling():
    assert filenames.safe_part("日本の顧客") == "日本の顧客"
    assert filenames.safe_part("...") == "unnamed"
    assert filenames.safe_part("-rf /") == "rf"
    assert len(filenames.safe_part("é" * 500).encode()) <= filenames.MAX_PART_BYTES


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("export-{date}.csv", "Unknown placeholder {date}"),
        ("export-{YYYY.csv", "Braces"),
        ("out/export.csv", "no '/'"),
        (".export.csv", "must not start"),
        ("export.csv.part", "'.part'"),
        ("", "Enter a file name template"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str):
    with pytest.raises(ValidationError) as info:
        filenames.validate_template(template)
    assert message in " ".join(info.value.messages)


def test_counter_goes_before_the_extension():
    assert filenames.with_counter("a.b.csv", 2, ".gz.pgp") == "a.b-2.csv.gz.pgp"
    assert filenames.with_counter("noext", 1) == "noext-1"


def test_made_by_template():
    template = "export-{audience}-{YYYY}{MM}{DD}.csv"
    assert filenames.made_by_template("export-vip-20250101.csv.gz.pgp.part", template)
    assert filenames.made_by_template("export-vip-20250101-3.csv.pgp.manifest.json.part", template)
    assert not filenames.made_by_template("export-vip-2025.csv.part", template)
    assert not filenames.made_by_template("other-vip-20250101.csv.part", template)


# --------------------------------------------------------------------------- validation


@pytest.mark.django_db
def test_export_job_clean_reports_template_fields_and_delimiter(make_job):
    job = make_job(encrypt=False)
    job.filename_template = "x-{nope}.csv"
    job.fields = [{"attribute": "a b"}, "email", {"attribute": "email"}]
    job.csv_delimiter = '"'
    with pytest.raises(ValidationError) as info:
        job.full_clean()
    errors = info.value.message_dict
    assert "Unknown placeholder {nope}" in " ".join(errors["filename_template"])
    assert "field 1" in " ".join(errors["fields"])
    assert "unique: email" in " ".join(errors["fields"])
    assert "csv_delimiter" in errors


@pytest.mark.django_db
def test_export_job_clean_normalises(make_job):
    job = make_job(encrypt=False, fields=["email", {"attribute": "first", "column": "First"}])
    job.csv_delimiter = "\\t"
    job.full_clean()
    assert job.csv_delimiter == "\t"
    assert job.fields == [
        {"attribute": "email", "column": "email"},
        {"attribute": "first", "column": "First"},
    ]


def test_csv_cells_spell_json_values_like_postgresql():
    assert [writers.csv_cell(v) for v in (None, "x", True, False, 3, 2.5)] == [
        None,
        "x",
        "true",
        "false",
        "3",
        "2.5",
    ]
    assert writers.csv_cell({"a": [1, "é"]}) == '{"a": [1, "é"]}'
