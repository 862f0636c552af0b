"""Import runs: SFTP folder → unwrap (PGP / gzip / zip) → parse → profile store, once per file.

Entry point and contract (for the orchestrator: transfers.service, tasks, runjob)
---------------------------------------------------------------------------------
``run_import(run, recorder=None) -> None`` does the whole run for ``run.import_job``.

* The caller holds the job's lock, has marked the run RUNNING (started_at, attempts, counters
  reset for the attempt) and sets the final status, error and finished_at afterwards from the
  counters (`transfers.service.final_status`): ``partial`` when rows were rejected or a file
  failed, ``failed`` when files failed and nothing was imported.
* **Per-file problems do not raise.** A file that cannot be imported (corrupt, wrong PGP
  key, not PGP though named .gpg, zip with several members, bomb, missing identity column,
  a bad row with on-error "fail"...) is rolled back, counted in ``files_failed`` and listed
  with its reason in ``skipped_files`` (``status: "failed"``); the run goes on with the next
  file. ``skipped_files`` entries are ``{"name", "reason", "failed"}`` (``failed`` false for
  files skipped on purpose). Bad rows with on-error "skip" are counted in ``rows_rejected``
  and the first ones listed in ``rejected_rows`` (file, line, reason); the rest of the file
  is imported.
* **Problems of the whole run raise**, for the orchestrator to retry or fail:
  `transfers.sftp.SftpError` (connection, authentication, host key mismatch, missing folder,
  lost connection; ``retryable`` says which), `ConfigError` (the job or its authorization is
  set up wrong, including a PGP key that cannot be used or unlocked; permanent),
  `transfers.pgp.GpgUnavailable`/`GpgFailed` (retryable), and `TransferError` with
  ``retryable=True`` for a lost database connection or a deadlock. Files committed before
  the error stay imported; a retry of the same run skips them ("imported by an earlier
  attempt of this run").
* When it returns (or raises), the run's counters, file list, rejected rows and log are
  written to the database (and to the ``run`` object passed in).

Exactly once, all or nothing
----------------------------
Each file is imported in ONE database transaction together with its `ImportedFile` ledger
row: a worker killed mid-file leaves the profile store as if the file had never started,
and the next run imports it once. A file is skipped as already imported when the ledger has
the same name + size + mtime, or (checked at commit time, once the SHA-256 of the streamed
bytes is known) the same content: then the transaction is rolled back and a ledger row
marking the duplicate is written, so it is not downloaded again. A partial unique index on
(job, sha256) makes the content rule hold even against a concurrent run. The after-import
action (delete, or move into the archive folder, which is relative to the job's folder and
created when missing; an archived file is never overwritten) runs only after the commit; if
the worker dies in between, the next run finds the file already imported and applies the
action then. Files that failed are left where they are.

Which files: those matching the job's glob pattern (case-sensitive; hidden dot-files and
folders are ignored), oldest first (mtime, then name). Files still being uploaded are left
for the next run: a ``.part``/``.tmp``/``.filepart`` suffix, or a size/mtime that changed
between two listings ``IMPORT_STABILITY_SECONDS`` apart, or fewer bytes read than listed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, OperationalError, transaction

from authorizations.validation import validate_folder
from profiles.store import ProfileWriter
from transfers import decompress, formats, pgp, remote
from transfers.errors import ConfigError, FileRejected, TransferError
from transfers.formats import Rejection
from transfers.models import ImportedFile, ImportJob, Run
from transfers.runs import RunRecorder
from transfers.sftp import RemoteFile, SftpError

log = logging.getLogger(__name__)

PARTIAL_SUFFIXES = (".part", ".tmp", ".filepart")
READ_CHUNK = 1024 * 1024
TICK_EVERY_ROWS = 2000
# SFTP errors that concern one file; the others (connection lost...) end the run.
_FILE_SFTP_ERRORS = {"not_found", "permission", "server_error"}


def run_import(run: Run, recorder: RunRecorder | None = None) -> None:
    """Import the new files of ``run.import_job``; see the module docstring for the contract."""
    job = _load_job(run)
    own_recorder = recorder is None
    recorder = recorder or RunRecorder(run)
    try:
        _Import(job, run, recorder).run()
    finally:
        if own_recorder:
            recorder.close()
        else:
            recorder.flush(force=True)


def _load_job(run: Run) -> ImportJob:
    if run.import_job_id is None:
        raise ConfigError(f"Run #{run.pk} is not an import run.")
    return ImportJob.objects.select_related("authorization", "partner").get(pk=run.import_job_id)


def check_job(job: ImportJob) -> None:
    """Configuration errors found before touching any file (ConfigError)."""
    if not job.pattern.strip():
        raise ConfigError("The job has no filename pattern.")
    if job.format not in ("", *formats.FORMATS):
        raise ConfigError(f"Unknown import format {job.format!r}.")
    if len(job.csv_quotechar or '"') != 1:
        raise ConfigError("The CSV quote character must be one character.")
    formats.check_options(formats.options_for_job(job, "x.csv", 1))
    if job.after_import == ImportJob.AfterImport.MOVE and not _archive_folder(job):
        raise ConfigError(
            "The archive folder must be a folder inside the job's folder (e.g. 'archive')."
        )


# --------------------------------------------------------------------------- the run


@dataclass
class _FileStats:
    read: int = 0
    upserted: int = 0
    rejected: int = 0


class _Duplicate(Exception):
    def __init__(self, original: ImportedFile, sha256: str) -> None:
        self.original, self.sha256 = original, sha256


class _Changed(Exception):
    """The file's size differs from the listing: it changed while we read it."""


class _Import:
    def __init__(self, job: ImportJob, run: Run, recorder: RunRecorder) -> None:
        self.job = job
        self.run_obj = run
        self.recorder = recorder
        self.limits = decompress.Limits.from_settings()
        self.max_record = settings.IMPORT_MAX_RECORD_BYTES
        self.folder: Any = None
        self._archive_ready = False

    def run(self) -> None:
        job, recorder = self.job, self.recorder
        check_job(job)
        recorder.log(f"import job '{job.name}' (#{job.pk}) from folder '{_folder_label(job)}'")
        recorder.flush(force=True)
        with remote.open_folder(job) as folder:
            self.folder = folder
            candidates = self._candidates()
            for remote_file in candidates:
                self._import_file(remote_file)
                recorder.flush()
        recorder.log(
            f"finished: {recorder.files_imported} imported, {recorder.files_skipped} skipped, "
            f"{recorder.files_failed} failed; {recorder.rows_upserted} rows upserted, "
            f"{recorder.rows_rejected} rejected"
        )

    # ---------------------------------------------------------------- choosing files

    def _candidates(self) -> list[RemoteFile]:
        job, recorder = self.job, self.recorder
        matched = [f for f in self.folder.list_files() if _matches(f, job.pattern)]
        matched.sort(key=lambda f: (f.mtime, f.name))
        ledger = self._ledger({f.name for f in matched})
        ready, already = [], 0
        for remote_file in matched:
            entry = ledger.get((remote_file.name, remote_file.size, remote_file.mtime))
            recorder.add(files_seen=1)
            if remote_file.name.lower().endswith(PARTIAL_SUFFIXES):
                recorder.skip_file(remote_file.name, "still being uploaded (temporary suffix)")
            elif entry is not None and entry.run_id == self.run_obj.pk:
                recorder.skip_file(remote_file.name, "imported by an earlier attempt of this run")
                self._after_import(remote_file.name, leftover=True)
            elif entry is not None:
                already += 1
                recorder.add(files_skipped=1)
                self._after_import(remote_file.name, leftover=True)
            else:
                ready.append(remote_file)
        if already:
            recorder.log(f"{already} file(s) already imported by this job, skipped")
        if not matched:
            recorder.log(f"no file matches '{job.pattern}'")
        return self._stable(ready)

    def _ledger(self, names: set[str]) -> dict[tuple[str, int, int], ImportedFile]:
        found: dict[tuple[str, int, int], ImportedFile] = {}
        ordered = sorted(names)
        for start in range(0, len(ordered), 500):
            rows = ImportedFile.objects.filter(job=self.job, name__in=ordered[start : start + 500])
            for row in rows.only("name", "size", "mtime", "run_id"):
                found[(row.name, row.size, row.mtime)] = row
        return found

    def _stable(self, files: list[RemoteFile]) -> list[RemoteFile]:
        """Keep the files whose size and mtime did not change over the stability window."""
        wait = float(settings.IMPORT_STABILITY_SECONDS)
        if not files or wait <= 0:
            return files
        time.sleep(wait)
        now = {f.name: f for f in self.folder.list_files()}
        stable = []
        for before in files:
            after = now.get(before.name)
            if after is None:
                self.recorder.skip_file(before.name, "disappeared from the folder")
            elif (after.size, after.mtime) != (before.size, before.mtime):
                self.recorder.skip_file(
                    before.name, f"still being written (it changed within {wait:g} s)"
                )
            else:
                stable.append(before)
        return stable

    # ---------------------------------------------------------------- one file

    def _import_file(self, remote_file: RemoteFile) -> None:
        name, recorder = remote_file.name, self.recorder
        recorder.log(f"importing '{name}' ({remote_file.size} bytes)")
        try:
            imported = self._load(remote_file)
        except FileRejected as exc:
            recorder.fail_file(name, str(exc))
            return
        except _Changed:
            recorder.skip_file(name, "changed while it was being read; it is left for next run")
            return
        except SftpError as exc:
            if exc.kind not in _FILE_SFTP_ERRORS:
                raise
            if exc.kind == "not_found":
                recorder.skip_file(name, "disappeared before it could be read")
            else:
                recorder.fail_file(name, str(exc))
            return
        if imported:
            self._after_import(name)

    def _load(self, remote_file: RemoteFile) -> bool:
        """Import one file in one transaction; True if it is handled (imported/duplicate)."""
        stats = _FileStats()
        try:
            with contextlib.closing(_HashingReader(self.folder.open_read(remote_file.name))) as src:
                src.on_bytes = lambda n: self.recorder.add(bytes_transferred=n)
                return self._transaction(remote_file, src, stats)
        except BaseException:
            self.recorder.add(rows_upserted=-stats.upserted)  # rolled back
            raise

    def _transaction(self, remote_file: RemoteFile, src: _HashingReader, stats: _FileStats) -> bool:
        try:
            with transaction.atomic(), self.recorder.file_transaction():
                self._parse_into_store(remote_file.name, src, stats)
                src.drain()
                if src.count != remote_file.size:
                    raise _Changed()
                self._record(remote_file, src.hexdigest(), stats)
        except _Duplicate as dup:
            self.recorder.add(rows_upserted=-stats.upserted)
            stats.upserted = 0
            self._record_duplicate(remote_file, dup)
            return True
        except IntegrityError:
            # Same file or content committed by a concurrent run (normally impossible: the
            # job lock serialises runs). Nothing of ours was kept.
            self.recorder.add(rows_upserted=-stats.upserted)
            stats.upserted = 0
            self.recorder.skip_file(remote_file.name, "imported concurrently by another run")
            return False
        except (pgp.PgpKeyError, pgp.PgpDecryptError) as exc:
            raise _classify_pgp_error(exc) from exc
        except DataError as exc:
            raise FileRejected(f"The database refused a record of this file: {exc}") from exc
        except OperationalError as exc:
            raise TransferError(f"Database error: {exc}", retryable=True) from exc
        self.recorder.add(files_imported=1)
        self.recorder.log(
            f"imported '{remote_file.name}': {stats.read} rows read, {stats.upserted} upserted, "
            f"{stats.rejected} rejected"
        )
        return True

    def _parse_into_store(self, name: str, src: _HashingReader, stats: _FileStats) -> None:
        authz = self.job.authorization
        unwrapped = decompress.unwrap(
            src,  # type: ignore[arg-type]
            name,
            private_key=authz.pgp_private_key or None,
            passphrase=authz.pgp_passphrase or None,
            limits=self.limits,
        )
        # The writer closes first (its last batch written, its thread stopped), then the
        # unwrapping ends (PGP integrity verified); an error in either rolls the file back.
        with unwrapped as plain, ProfileWriter() as writer:
            if plain.layers:
                self.recorder.log(f"'{name}': unwrapping {' + '.join(plain.layers)}")
            options = formats.options_for_job(self.job, plain.name, self.max_record)
            parser = formats.parse(plain.stream, options)
            self._consume(parser, writer, name, stats)
        if stats.read == 0:
            empty = "the file is empty" if parser.empty else "the file has a header but no rows"
            self.recorder.log(f"'{name}': {empty}; nothing to import")

    def _consume(
        self, parser: formats.Parser, writer: ProfileWriter, name: str, stats: _FileStats
    ) -> None:
        recorder = self.recorder
        fail_on_bad_row = self.job.on_error == ImportJob.OnError.FAIL
        read = upserted = 0
        for item in parser:
            read += 1
            if isinstance(item, Rejection):
                stats.rejected += 1
                recorder.reject_row(name, item.line, item.reason)
                if fail_on_bad_row:
                    raise FileRejected(
                        f"Line {item.line}: {item.reason}. The job fails a file on its first bad "
                        "row (on error: fail), so nothing from this file was imported."
                    )
            else:
                writer.add(item.identity, item.attributes, item.time)
                upserted += 1
            if read == TICK_EVERY_ROWS:
                self._count_rows(stats, read, upserted)
                read = upserted = 0
                recorder.tick()
        self._count_rows(stats, read, upserted)

    def _count_rows(self, stats: _FileStats, read: int, upserted: int) -> None:
        stats.read += read
        stats.upserted += upserted
        self.recorder.add(rows_read=read, rows_upserted=upserted)

    def _record(self, remote_file: RemoteFile, sha256: str, stats: _FileStats) -> None:
        """The ledger row, in the file's transaction; a same-content file makes it a duplicate."""
        original = (
            ImportedFile.objects.filter(job=self.job, sha256=sha256, duplicate_of__isnull=True)
            .order_by("pk")
            .first()
        )
        if original is not None:
            raise _Duplicate(original, sha256)
        ImportedFile.objects.create(
            job=self.job,
            run=self.run_obj,
            name=remote_file.name,
            size=remote_file.size,
            mtime=remote_file.mtime,
            sha256=sha256,
            rows_read=stats.read,
            rows_upserted=stats.upserted,
            rows_rejected=stats.rejected,
        )

    def _record_duplicate(self, remote_file: RemoteFile, dup: _Duplicate) -> None:
        original = dup.original
        with transaction.atomic():
            ImportedFile.objects.get_or_create(
                job=self.job,
                name=remote_file.name,
                size=remote_file.size,
                mtime=remote_file.mtime,
                defaults={"run": self.run_obj, "sha256": dup.sha256, "duplicate_of": original},
            )
        when = original.imported_at.strftime("%Y-%m-%d %H:%M UTC")
        self.recorder.skip_file(
            remote_file.name, f"same content as '{original.name}', imported {when}"
        )

    # ---------------------------------------------------------------- after the commit

    def _after_import(self, name: str, leftover: bool = False) -> None:
        action = self.job.after_import
        if action == ImportJob.AfterImport.LEAVE:
            return
        try:
            if action == ImportJob.AfterImport.DELETE:
                self.folder.remove(name)
                done = "deleted"
            else:
                target = self._archive_target(name)
                self.folder.rename(name, target)
                done = f"moved to '{target}'"
        except SftpError as exc:
            if exc.retryable:
                raise
            self.recorder.log(
                f"could not apply the after-import action to '{name}': {exc}; the file stays "
                "and will be skipped as already imported",
                level=logging.WARNING,
            )
            return
        late = " (left over from an earlier run)" if leftover else ""
        self.recorder.log(f"'{name}' {done}{late}")

    def _archive_target(self, name: str) -> str:
        archive = _archive_folder(self.job)
        if not self._archive_ready:
            if not self.folder.exists(archive):
                self.folder.mkdir(archive)
            self._archive_ready = True
        target = f"{archive}/{name}"
        if self.folder.exists(target):  # never overwrite an archived file
            stem, dot, rest = name.partition(".")
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            target = f"{archive}/{stem}-{stamp}{dot}{rest}"
        return target


# --------------------------------------------------------------------------- helpers


def _archive_folder(job: ImportJob) -> str:
    """The archive folder, relative to the job's folder ('' when unusable)."""
    try:
        return validate_folder(job.archive_folder)
    except ValidationError:
        return ""


def _folder_label(job: ImportJob) -> str:
    return remote.job_folder(job) or "(login folder)"


def _matches(remote_file: RemoteFile, pattern: str) -> bool:
    name = remote_file.name
    return (
        not remote_file.is_dir
        and not name.startswith(".")
        and fnmatch.fnmatchcase(name, pattern.strip())
    )


def _classify_pgp_error(exc: pgp.PgpError) -> TransferError:
    """Our key's problems are configuration errors (every file would fail); the file's
    problems (encrypted to another key, corrupt, not encrypted) reject that file only."""
    if isinstance(exc, pgp.PgpKeyError):
        return ConfigError(f"The authorization's PGP private key cannot be used: {exc}")
    code = getattr(exc, "code", "")
    if code in ("bad_passphrase", "passphrase_required"):
        return ConfigError(f"The authorization's PGP private key cannot be unlocked: {exc}")
    return FileRejected(f"PGP decryption failed: {exc}")


class _HashingReader:
    """The remote file as downloaded: SHA-256 and byte count computed while streaming."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._sha = hashlib.sha256()
        self.count = 0
        self.on_bytes: Any = None

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            self._sha.update(data)
            self.count += len(data)
            if self.on_bytes is not None:
                self.on_bytes(len(data))
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read what the parser left (trailing bytes) so the checksum covers the whole file."""
        while self.read(READ_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._source.close()
