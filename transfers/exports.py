"""Export runs: audience → CSV / JSON lines → (gzip) → (PGP) → atomic upload to SFTP.

`run_export(run, recorder=None)` is the entry point `transfers.service` calls. It returns
normally when the export is done (or deliberately wrote nothing) and raises otherwise;
errors carry ``retryable`` (`transfers.errors.is_retryable`), the service sets the status.

How a run goes, and why:

1. Everything that can be checked without data is checked first: the job's template,
   fields and format, and the partner's PGP public key (expired, revoked, sign-only keys
   are refused *before* a single profile is read, so nothing is ever encrypted to a dead
   key and no data leaves the database for nothing).
2. The audience is streamed in identity order, a chunk at a time, so memory stays flat
   whatever its size (`transfers.export_source`: a server-side cursor; on PostgreSQL a
   reading thread on its own connection, and for CSV PostgreSQL's COPY writing the very
   bytes the csv module would). Progress is written on the main connection in
   autocommit, so the admin sees it while the export goes.
3. Rows are written through a pipeline of streams, each writing large blocks to the
   next: row writer → gzip (skipped when encrypting: PGP compresses) → gpg (a subprocess,
   streaming) → SHA-256 and byte counter → pipelined SFTP writes to ``<final>.part``.
4. The remote size is checked against the bytes we sent, then the temporary file is
   renamed to its final name. An existing final name is handled by the job's collision
   rule (fail, or ``name-1.csv``, ``name-2.csv``...). The manifest, if asked for, is
   written the same way (``<final>.manifest.json.part`` → rename) after the data file.
5. Any failure removes the temporary file; the final name never holds a partial file.
   A worker killed outright cannot clean up: the next run of the job removes ``.part``
   files its template produced once they have been left untouched for a while.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any, BinaryIO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from authorizations.models import PGP_PUBLIC_METHODS
from transfers import export_source, filenames, pgp, remote, writers
from transfers.errors import ConfigError, TransferError
from transfers.export_source import Chunk
from transfers.models import ExportJob, Run
from transfers.runs import RunRecorder

log = logging.getLogger(__name__)

MAX_COUNTER = 999  # "-1" ... "-999": past that, something is wrong with the folder


def stale_part_seconds() -> float:
    """How long a ``.part`` file of this job must sit unchanged before a run removes it.

    A live upload touches its file every moment, so only a crashed run's leftovers are
    that old; the margin protects another job that happens to share the template."""
    return float(getattr(settings, "EXPORT_STALE_PART_SECONDS", 900))


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ExportPlan:
    """Everything a run decided before touching data."""

    columns: list[writers.Column]
    format: str
    delimiter: str
    header: bool
    gzip: bool
    public_key: str | None
    rendered: str  # the template's output, e.g. "export-vip-20250101.csv"
    suffixes: str  # what the pipeline appends: "", ".gz", ".pgp"
    collision: str
    manifest: bool
    empty_no_file: bool
    created: dt.datetime

    @property
    def name(self) -> str:
        return self.rendered + self.suffixes

    def candidate(self, counter: int) -> str:
        if counter == 0:
            return self.name
        return filenames.with_counter(self.rendered, counter, self.suffixes)


def validate_export_job(job: ExportJob) -> None:
    """The export-specific part of `ExportJob.clean()`: template, fields, delimiter,
    compression. Normalises ``fields`` (to ``[{"attribute", "column"}]``) and the delimiter."""
    errors: dict[str, list[str]] = {}

    def check(field: str, func: Callable[[], Any]) -> Any:
        try:
            return func()
        except ValidationError as exc:
            errors.setdefault(field, []).extend(exc.messages)
            return None

    check("filename_template", lambda: filenames.validate_template(job.filename_template))
    columns = check("fields", lambda: writers.parse_fields(job.fields))
    if columns is not None and job.fields:
        job.fields = [{"attribute": c.attribute, "column": c.name} for c in columns]
    if job.format == ExportJob.Format.CSV:
        delimiter = check("csv_delimiter", lambda: writers.normalise_delimiter(job.csv_delimiter))
        job.csv_delimiter = delimiter or job.csv_delimiter
    elif job.format not in ExportJob.Format.values:
        check("format", lambda: _invalid("Choose csv or jsonl."))
    if job.compression not in ExportJob.Compression.values:
        check("compression", lambda: _invalid("Choose none or gzip."))
    if errors:
        raise ValidationError(errors)


def _invalid(message: str) -> None:
    raise ValidationError(message, code="invalid")


def plan_export(job: ExportJob, when: dt.datetime) -> ExportPlan:
    """Check the job and its key; ConfigError says what a person must fix."""
    try:
        validate_export_job(job)
    except ValidationError as exc:
        problems = "; ".join(
            f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()
        )
        raise ConfigError(f"The export job is not configured correctly: {problems}") from None
    public_key = _usable_public_key(job)
    use_gzip = job.compression == ExportJob.Compression.GZIP and public_key is None
    rendered = filenames.render(
        job.filename_template,
        filenames.NameContext(
            when=when, audience=job.audience.name, job=job.name, partner=job.partner.name
        ),
    )
    return ExportPlan(
        columns=writers.parse_fields(job.fields),
        format=job.format,
        delimiter=writers.normalise_delimiter(job.csv_delimiter) if job.format == "csv" else ",",
        header=job.csv_header,
        gzip=use_gzip,
        public_key=public_key,
        rendered=rendered,
        suffixes=(".gz" if use_gzip else "") + (".pgp" if public_key else ""),
        collision=job.collision,
        manifest=job.write_manifest,
        empty_no_file=job.empty_audience == ExportJob.EmptyAudience.NO_FILE,
        created=when,
    )


def _usable_public_key(job: ExportJob) -> str | None:
    """The key to encrypt to (None: no encryption), refused now if it cannot be used."""
    authz = job.authorization
    if authz.method not in PGP_PUBLIC_METHODS:
        return None
    key = authz.pgp_public_key or ""
    if not key.strip():
        raise ConfigError(
            f"Authorization '{authz.label}' encrypts exports but has no PGP public key."
        )
    try:
        pgp.inspect_public_key(key)
    except pgp.PgpKeyError as exc:
        raise ConfigError(
            f"The partner's PGP public key cannot be used ({exc.code}): {exc} "
            "Nothing was exported; ask the partner for a valid key."
        ) from None
    return key


# --------------------------------------------------------------------------- writing


class _Digest(io.RawIOBase):
    """Passes bytes on to the remote file, hashing and counting them on the way.

    With PGP this is written to from gpg's output thread; ``size`` is only read by the
    main thread for progress, where a slightly stale value is fine."""

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._target.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True)
class Written:
    rows: int
    size: int
    sha256: str


ProgressCallback = Callable[[int, int], None]  # (rows so far, bytes so far)
Reopen = Callable[[], AbstractContextManager[remote.Folder]]  # a fresh connection
_LOST = frozenset({"reset", "timeout", "protocol", "refused", "unreachable"})  # SftpError kinds


def audience_chunks(job: ExportJob, plan: ExportPlan, **path: bool) -> Iterator[Chunk]:
    """The audience, read the fastest way that gives this plan's exact file."""
    source = export_source.Source(job, plan.columns, plan.format, plan.delimiter)
    return export_source.audience_chunks(source, **path)


def write_file(
    out: BinaryIO, plan: ExportPlan, chunks: Iterator[Chunk], progress: ProgressCallback
) -> Written:
    """Write every row through the plan's streams into ``out`` (not closed here)."""
    digest = _Digest(out)
    rows = 0
    with ExitStack() as stack:
        sink: BinaryIO = digest  # type: ignore[assignment]
        if plan.public_key:
            sink = stack.enter_context(pgp.open_encrypting(sink, plan.public_key))
        elif plan.gzip:
            sink = stack.enter_context(writers.gzip_stream(sink, mtime=plan.created.timestamp()))
        writer = writers.make_writer(
            sink, plan.columns, format=plan.format, delimiter=plan.delimiter, header=plan.header
        )
        writer.write_header()
        for chunk in chunks:
            if isinstance(chunk, export_source.CsvBlock):
                writer.write_block(chunk.data)  # type: ignore[attr-defined]  # CSV only
                rows += chunk.rows
            else:
                writer.write_rows(chunk)
                rows += len(chunk)
            progress(rows, digest.size)
        writer.finish()
    progress(rows, digest.size)  # gpg's last bytes arrive when its stream is closed
    return Written(rows=rows, size=digest.size, sha256=digest.sha256)


# --------------------------------------------------------------------------- the run


def run_export(run: Run, recorder: RunRecorder | None = None) -> None:
    """Export ``run``'s job once. Raises on failure; the caller records the status."""
    own_recorder = recorder is None
    recorder = recorder if recorder is not None else RunRecorder(run)
    try:
        _export(run, recorder)
    finally:
        # Before the service appends its own log lines: the recorder writes its whole log.
        recorder.close() if own_recorder else recorder.flush(force=True)


def _export(run: Run, recorder: RunRecorder) -> None:
    job = _load_job(run)
    started = time.monotonic()
    plan = plan_export(job, run.started_at or timezone.now())
    if job.compression == ExportJob.Compression.GZIP and plan.public_key:
        recorder.log("gzip skipped: the file is PGP-encrypted and PGP compresses it already.")
    chunks = audience_chunks(job, plan)
    try:
        first = next(chunks, None)
        if first is None and plan.empty_no_file:
            recorder.log("The audience is empty; no file written (the job asks for none).")
            return
        with remote.open_folder(job) as folder:
            remove_stale_parts(folder, job, recorder)
            all_chunks = chain([first] if first else [], chunks)
            reopen = partial(remote.open_folder, job)
            final, written = export_to_folder(folder, plan, all_chunks, recorder, reopen)
        _record_done(run, recorder, final, written, time.monotonic() - started)
    finally:
        chunks.close()  # releases the server-side cursor at once, also on failure


def _load_job(run: Run) -> ExportJob:
    if run.kind != Run.Kind.EXPORT or run.export_job_id is None:
        raise ConfigError(f"Run {run.pk} is not an export run.")
    return ExportJob.objects.select_related("audience", "partner", "authorization").get(
        pk=run.export_job_id
    )


def export_to_folder(
    folder: remote.Folder,
    plan: ExportPlan,
    chunks: Iterator[Chunk],
    recorder: RunRecorder,
    reopen: Reopen | None = None,
) -> tuple[str, Written]:
    """Upload to ``<name>.part``, verify, publish under the final name, then the manifest.

    ``reopen`` gives a fresh connection to remove the temporary file with when the
    failure was the connection itself."""
    temp = plan.name + filenames.PART_SUFFIX
    published = False
    try:
        written = _upload(folder, temp, plan, chunks, recorder)
        final = publish(folder, temp, plan)
        published = True
    finally:
        if not published:
            _remove_quietly(folder, temp, recorder, reopen)
    recorder.log(f"Uploaded '{final}': {written.rows} rows, {written.size} bytes.")
    if plan.manifest:
        write_manifest(folder, final, plan, written, reopen)
        recorder.log(f"Manifest written: '{final}{filenames.MANIFEST_SUFFIX}'.")
    return final, written


def _upload(
    folder: remote.Folder,
    temp: str,
    plan: ExportPlan,
    chunks: Iterator[Chunk],
    recorder: RunRecorder,
) -> Written:
    out = folder.open_write(temp)
    try:
        written = write_file(out, plan, chunks, _progress(recorder))
        out.close()  # the last write is synchronous: every pipelined write is checked here
    except BaseException:
        _abort(out)
        raise
    _check_size(folder, temp, written.size)
    return written


def _progress(recorder: RunRecorder) -> ProgressCallback:
    """Feeds the recorder's counters (it persists them at most every second or so)."""
    reported = [0, 0]

    def update(rows: int, size: int) -> None:
        recorder.add(rows_read=rows - reported[0], bytes_transferred=size - reported[1])
        reported[:] = [rows, size]
        recorder.tick()

    return update


def _abort(out: BinaryIO) -> None:
    abort = getattr(out, "abort", None)
    with suppress(Exception):
        abort() if abort is not None else out.close()


def _check_size(folder: remote.Folder, name: str, expected: int) -> None:
    size = folder.stat(name).size
    if size != expected:
        raise TransferError(
            f"The upload of '{name}' is incomplete: {expected} bytes sent, the server has {size}.",
            retryable=True,
        )


def publish(folder: remote.Folder, temp: str, plan: ExportPlan) -> str:
    """Rename ``temp`` to the first free final name the collision rule allows."""
    for counter in range(MAX_COUNTER + 1):
        name = plan.candidate(counter)
        if not _taken(folder, name, plan):
            folder.rename(temp, name)
            return name
        if plan.collision == ExportJob.Collision.FAIL:
            raise TransferError(
                f"'{name}' already exists in the target folder and the job is set to fail "
                "on a name collision; nothing was overwritten.",
                retryable=False,
            )
    raise TransferError(
        f"'{plan.name}' and its numbered variants up to -{MAX_COUNTER} all exist; "
        "clean up the target folder or change the file name template.",
        retryable=False,
    )


def _taken(folder: remote.Folder, name: str, plan: ExportPlan) -> bool:
    # With a manifest, its name must be free as well: a stale manifest beside a fresh
    # file would describe the wrong data.
    if folder.exists(name):
        return True
    return plan.manifest and folder.exists(name + filenames.MANIFEST_SUFFIX)


def manifest_bytes(final: str, plan: ExportPlan, written: Written) -> bytes:
    document = {
        "name": final,
        "size": written.size,
        "rows": written.rows,
        "sha256": written.sha256,
        "created": plan.created.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "format": plan.format,
        "compression": "gzip" if plan.gzip else "none",
        "encrypted": bool(plan.public_key),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def write_manifest(
    folder: remote.Folder,
    final: str,
    plan: ExportPlan,
    written: Written,
    reopen: Reopen | None = None,
) -> None:
    """The manifest names the data file it describes; written atomically like it."""
    name = final + filenames.MANIFEST_SUFFIX
    temp = name + filenames.PART_SUFFIX
    data = manifest_bytes(final, plan, written)
    done = False
    try:
        folder.upload(io.BytesIO(data), temp)
        _check_size(folder, temp, len(data))
        folder.rename(temp, name)
        done = True
    finally:
        if not done:
            _remove_quietly(folder, temp, None, reopen)


def _remove_quietly(
    folder: remote.Folder, name: str, recorder: RunRecorder | None, reopen: Reopen | None
) -> None:
    """Remove a temporary file, on a fresh connection if the failure took ours down.

    Best effort: what is left anyway is swept by a later run (`remove_stale_parts`)."""
    try:
        _remove_if_there(folder, name)
        return
    except Exception as exc:
        error: Exception = exc
    if reopen is not None and getattr(error, "kind", None) in _LOST:
        try:
            with reopen() as fresh:
                _remove_if_there(fresh, name)
            return
        except Exception as exc:
            error = exc
    log.warning("could not remove temporary file %r: %s", name, error)
    if recorder is not None:
        with suppress(Exception):
            recorder.log(f"Could not remove the temporary file '{name}': {error}")


def _remove_if_there(folder: remote.Folder, name: str) -> None:
    if folder.exists(name):
        folder.remove(name)


def remove_stale_parts(folder: remote.Folder, job: ExportJob, recorder: RunRecorder) -> None:
    """Remove ``.part`` files a crashed run of this job left behind (see module notes)."""
    cutoff = time.time() - stale_part_seconds()
    for entry in folder.list_files():
        name = entry.name
        if not name.endswith(filenames.PART_SUFFIX) or entry.mtime > cutoff:
            continue
        if not filenames.made_by_template(name, job.filename_template):
            continue
        try:
            folder.remove(name)
        except Exception as exc:  # not fatal: it is only litter, and has a unique name
            log.warning("could not remove stale %r: %s", name, exc)
            continue
        recorder.log(f"Removed '{name}', left behind by an interrupted earlier run.")


def _record_done(
    run: Run, recorder: RunRecorder, final: str, written: Written, seconds: float
) -> None:
    # The recorder owns the counters and the log; the file's identity is ours to write.
    Run.objects.filter(pk=run.pk).update(file_name=final[:1024], sha256=written.sha256)
    run.file_name, run.sha256 = final[:1024], written.sha256
    rate = written.rows / seconds if seconds > 0 else 0.0
    recorder.log(
        f"Exported {written.rows} rows to '{final}' ({written.size} bytes, SHA-256 "
        f"{written.sha256}) in {seconds:.1f} s ({rate:.0f} rows/s)."
    )
