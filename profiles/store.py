"""Batched upserts into the profile store, with the merge rules of imports.

Merge rules (one record = identity, attributes, and optionally a time per attribute):

* Attributes are merged into the profile: keys the record does not carry are kept.
* A record *with* a time sets an attribute only if the profile holds no time for it or an
  older-or-equal one (so an older file never overwrites a newer value, while attributes only
  the older record carries are still added); the attribute's time is then the record's.
  Ties go to the record processed later.
* A record *without* a time always sets its attributes (the later-processed record wins)
  and forgets their times: the value's age is unknown from then on.
* Within one batch, records for the same identity are merged in Python by the same rules
  first, in file order, so a file with duplicate identities behaves as if its records were
  applied one after another ("last wins").

Times are fixed-width UTC text (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, see `transfers.formats`),
so comparing them as text (``COLLATE "C"`` in SQL) compares the instants.

Two implementations behind `ProfileWriter`, with identical results (tests run both):

* PostgreSQL: the batch is COPYed into a temporary staging table (one JSON array per row,
  so the only escaping left is doubling backslashes for COPY's text format), then one
  ``INSERT ... SELECT DISTINCT ON ... ON CONFLICT (identity) DO UPDATE`` performs the
  merge in SQL with jsonb functions. The merge reads the row it updates, so concurrent
  writers to the same profile cannot lose each other's attributes.
* Anything else (SQLite): fetch the batch's existing profiles, merge in Python, write with
  ``bulk_create(update_conflicts=True)``. SQLite serialises writers, so read-merge-write is
  safe inside the caller's transaction.

The writer does not open transactions: imports call it inside the one transaction that
also records the file as imported (all-or-nothing per file).
"""

from __future__ import annotations

import functools
import json
import json.encoder
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from profiles.models import Profile

DEFAULT_BATCH_SIZE = 20000
_LOOKUP_CHUNK = 500  # identities per IN (...) query on the portable path
_STAGE = "lyticsops_profile_stage"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} values cannot be stored in a profile")


def _chunk_encoder() -> Callable[[Any, int], list[str]]:
    """The C JSON encoder, built once. `JSONEncoder.encode` builds it again on every call,
    which costs more than encoding a small record."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return lambda value, _level: [_dumps(value)]
    basestring = json.encoder.encode_basestring  # non-ASCII kept as is (ensure_ascii=False)
    return make(None, _not_serializable, basestring, None, ":", ",", False, False, False)


_encode_chunks = _chunk_encoder()

# One pending record: its attributes and either one time for all of them (str), a time
# per attribute (dict, after merging duplicates), or None (no times).
Times = str | dict[str, str] | None


def merge_attributes(
    attributes: dict[str, Any],
    times: dict[str, str],
    new_attributes: Mapping[str, Any],
    new_times: Mapping[str, str],
) -> None:
    """The merge rule, in place. ``new_times`` maps those new attributes that carry a time."""
    for key, value in new_attributes.items():
        new_time = new_times.get(key)
        if new_time is None:
            attributes[key] = value
            times.pop(key, None)
            continue
        old_time = times.get(key)
        if old_time is None or new_time >= old_time:
            attributes[key] = value
            times[key] = new_time


def _expand(attributes: Mapping[str, Any], times: Times) -> dict[str, str]:
    if times is None:
        return {}
    if isinstance(times, str):
        return dict.fromkeys(attributes, times)
    return times


class ProfileWriter:
    """Collects records and upserts them in batches; `flush()` writes what is pending.

    ``method``: "auto" (COPY on PostgreSQL, portable elsewhere), "copy" or "portable".
    Use it as a context manager (or call `close()`): on PostgreSQL inside a transaction the
    batches are written by a background thread (`_Pipeline`) that must be stopped.
    """

    def __init__(
        self,
        *,
        using: str = DEFAULT_DB_ALIAS,
        batch_size: int | None = None,
        method: str = "auto",
    ) -> None:
        self.using = using
        self.connection = connections[using]
        self.batch_size = batch_size or getattr(settings, "IMPORT_BATCH_SIZE", DEFAULT_BATCH_SIZE)
        if method == "auto":
            method = "copy" if self.connection.vendor == "postgresql" else "portable"
        if method not in ("copy", "portable"):
            raise ValueError(f"unknown upsert method {method!r}")
        if method == "copy" and self.connection.vendor != "postgresql":
            raise ValueError("the COPY upsert needs PostgreSQL")
        self.method = method
        self.records = 0  # records accepted by add()
        self.batches = 0
        self._pending: dict[str, tuple[dict[str, Any], Times]] = {}
        self._timed = False  # does the pending batch carry any time?
        self._pipeline: _Pipeline | None = None

    def __enter__(self) -> ProfileWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, identity: str, attributes: dict[str, Any], time: str | None = None) -> None:
        """Queue one record (the writer may keep ``attributes``; do not reuse the dict)."""
        self.records += 1
        if time is not None:
            self._timed = True
        pending = self._pending
        previous = pending.get(identity)
        if previous is None:
            pending[identity] = (attributes, time)
            if len(pending) >= self.batch_size:
                self._send()
            return
        # A duplicate identity within the batch: merge now, by the same rule as the database.
        merged, merged_times = dict(previous[0]), dict(_expand(*previous))
        merge_attributes(merged, merged_times, attributes, _expand(attributes, time))
        pending[identity] = (merged, merged_times or None)

    def flush(self) -> None:
        """Write everything pending; when it returns, the rows are in the database."""
        self._send()
        if self._pipeline is not None:
            self._pipeline.wait()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._stop()

    def abort(self) -> None:
        """Drop what is pending and stop; the caller rolls its transaction back."""
        self._pending = {}
        if self._pipeline is not None:
            self._pipeline.cancel()
        self._stop()

    def _stop(self) -> None:
        if self._pipeline is not None:
            pipeline, self._pipeline = self._pipeline, None
            pipeline.stop()

    def _send(self) -> None:
        """Hand the pending batch over to be written (in the background when pipelined)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        timed, self._timed = self._timed, False
        self.batches += 1
        if self.method == "portable":
            self._flush_portable(batch)
            return
        payload = _copy_payload(batch)
        del batch
        if self._pipeline is None and self.connection.in_atomic_block:
            self._pipeline = _Pipeline(self.connection)
        if self._pipeline is not None:
            self._pipeline.submit(payload, timed)
            return
        # Outside a transaction: make the batch one (the staging table is ON COMMIT DROP).
        with transaction.atomic(using=self.using), self.connection.cursor() as cursor:
            _write_payload(cursor.cursor, payload, timed)

    # ---------------------------------------------------------------- portable path

    def _flush_portable(self, batch: dict[str, tuple[dict[str, Any], Times]]) -> None:
        existing = self._existing(list(batch))
        now = timezone.now()
        profiles = []
        for identity, (attributes, times) in batch.items():
            current = existing.get(identity)
            if current is None:
                merged, merged_times = dict(attributes), dict(_expand(attributes, times))
            else:
                merged, merged_times = current
                merge_attributes(merged, merged_times, attributes, _expand(attributes, times))
            profiles.append(
                Profile(
                    identity=identity,
                    attributes=merged,
                    attribute_times=merged_times,
                    created_at=now,
                    updated_at=now,
                )
            )
        Profile.objects.using(self.using).bulk_create(
            profiles,
            batch_size=_LOOKUP_CHUNK,
            update_conflicts=True,
            unique_fields=["identity"],
            update_fields=["attributes", "attribute_times", "updated_at"],
        )

    def _existing(self, identities: list[str]) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
        found: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
        manager = Profile.objects.using(self.using)
        for start in range(0, len(identities), _LOOKUP_CHUNK):
            chunk = identities[start : start + _LOOKUP_CHUNK]
            rows = manager.filter(identity__in=chunk).values_list(
                "identity", "attributes", "attribute_times"
            )
            for identity, attributes, times in rows:
                found[identity] = (dict(attributes or {}), dict(times or {}))
        return found

    # ---------------------------------------------------------------- PostgreSQL path


def _copy_payload(batch: dict[str, tuple[dict[str, Any], Times]]) -> bytes:
    """COPY text-format data: one JSON array per row, [identity, attributes] or [identity,
    attributes, time-or-times]. JSON text has no raw tab or newline, so the only escaping
    COPY needs is doubling backslashes, done once for the whole batch."""
    encode, join = _encode_chunks, "".join
    lines = [
        join(encode([identity, attributes] if times is None else [identity, attributes, times], 0))
        for identity, (attributes, times) in batch.items()
    ]
    return ("\n".join(lines) + "\n").replace("\\", "\\\\").encode("utf-8")


def _write_payload(cursor: Any, payload: bytes, timed: bool) -> None:
    """Stage one batch with COPY and merge it with one INSERT ... ON CONFLICT (psycopg cursor)."""
    now = timezone.now()
    cursor.execute(_CREATE_STAGE)
    with cursor.copy(f"COPY {_STAGE} (r) FROM STDIN") as copy:
        copy.write(payload)
    cursor.execute(_upsert_sql(timed), [now, now])
    cursor.execute(f"TRUNCATE {_STAGE}")


class _Pipeline:
    """Writes batches in a background thread while the caller prepares the next one.

    It uses the caller's connection, so the writes belong to the caller's transaction (the
    file's: all or nothing); psycopg connections are thread-safe and release the GIL while
    PostgreSQL works, so parsing (Python, one core) and merging (PostgreSQL, another core)
    overlap. One batch is queued at most: memory stays bounded. The caller must not use the
    connection until `wait()`/`stop()` returned; an error is re-raised on the caller's side.
    """

    def __init__(self, wrapper: Any) -> None:
        wrapper.ensure_connection()
        self._wrapper = wrapper
        self._raw = wrapper.connection  # the psycopg connection in the caller's transaction
        self._queue: queue.Queue[tuple[bytes, bool] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._work, name="profile-upsert", daemon=True)
        self._thread.start()

    def submit(self, payload: bytes, timed: bool) -> None:
        self._raise()
        self._queue.put((payload, timed))

    def wait(self) -> None:
        self._queue.join()
        self._raise()

    def cancel(self) -> None:
        """Skip what is queued (the transaction is being rolled back anyway)."""
        self._cancelled = True

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None and not self._cancelled:
                    with self._wrapper.wrap_database_errors, self._raw.cursor() as cursor:
                        _write_payload(cursor, *item)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()


# ON COMMIT DROP: the staging table lives as long as the transaction (the file's).
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ("
    "seq bigint GENERATED ALWAYS AS IDENTITY, r jsonb NOT NULL) ON COMMIT DROP"
)


@functools.cache
def _upsert_sql(timed: bool = True) -> str:
    table = '"%s"' % Profile._meta.db_table  # noqa: UP031
    # For new profiles the staged times are the times. For existing ones, per attribute:
    # take the new value when it has no time, the profile has no time for it, or the new
    # time is not older; drop the time of untimed values. The '{}' shortcuts keep the
    # common untimed case to plain `||`. A batch without any time skips the per-row times
    # expression altogether (it costs about a fifth of the statement).
    times = "'{}'::jsonb"
    if timed:
        times = """CASE jsonb_typeof(r -> 2)
                       WHEN 'object' THEN r -> 2
                       WHEN 'string' THEN (
                           SELECT COALESCE(jsonb_object_agg(k, r -> 2), '{}'::jsonb)
                           FROM jsonb_object_keys(r -> 1) AS k)
                       ELSE '{}'::jsonb
                   END"""
    new_wins = (
        "(EXCLUDED.attribute_times ->> {k}) IS NULL OR (p.attribute_times ->> {k}) IS NULL "
        'OR (EXCLUDED.attribute_times ->> {k}) COLLATE "C" '
        '>= (p.attribute_times ->> {k}) COLLATE "C"'
    )
    return f"""
        INSERT INTO {table} AS p (identity, attributes, attribute_times, created_at, updated_at)
        SELECT DISTINCT ON (s.identity COLLATE "C")
               s.identity, s.attributes, s.times, %s, %s
        FROM (
            SELECT seq, r ->> 0 AS identity, r -> 1 AS attributes,
                   {times} AS times
            FROM {_STAGE}
        ) AS s
        ORDER BY s.identity COLLATE "C", s.seq DESC
        ON CONFLICT (identity) DO UPDATE SET
            attributes = CASE
                WHEN EXCLUDED.attribute_times = '{{}}'::jsonb
                    THEN p.attributes || EXCLUDED.attributes
                ELSE p.attributes || COALESCE((
                    SELECT jsonb_object_agg(n.key, n.value)
                    FROM jsonb_each(EXCLUDED.attributes) AS n
                    WHERE {new_wins.format(k="n.key")}
                ), '{{}}'::jsonb)
            END,
            attribute_times = CASE
                WHEN EXCLUDED.attribute_times = '{{}}'::jsonb AND p.attribute_times = '{{}}'::jsonb
                    THEN p.attribute_times
                ELSE (p.attribute_times - ARRAY(
                        SELECT k FROM jsonb_object_keys(EXCLUDED.attributes) AS k
                        WHERE (EXCLUDED.attribute_times ->> k) IS NULL))
                    || COALESCE((
                        SELECT jsonb_object_agg(t.k, EXCLUDED.attribute_times -> t.k)
                        FROM jsonb_object_keys(EXCLUDED.attribute_times) AS t(k)
                        WHERE {new_wins.format(k="t.k")}
                    ), '{{}}'::jsonb)
            END,
            updated_at = EXCLUDED.updated_at
    """  # noqa: S608 (no user input in this text)


def upsert_profiles(
    records: Iterable[tuple[str, dict[str, Any], str | None]],
    *,
    using: str = DEFAULT_DB_ALIAS,
    batch_size: int | None = None,
    method: str = "auto",
) -> int:
    """Upsert (identity, attributes, time) records in batches; returns how many were given."""
    with ProfileWriter(using=using, batch_size=batch_size, method=method) as writer:
        for identity, attributes, time in records:
            writer.add(identity, attributes, time)
    return writer.records
