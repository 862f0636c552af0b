"""Reading an export's audience: chunks of rows, streamed in identity order.

Three ways, chosen by `audience_chunks`, all giving the same file:

* **Portable** (SQLite, or inside a transaction): Django's ``QuerySet.iterator`` on the
  main connection (a server-side cursor on PostgreSQL, chunked fetches on SQLite); cells
  are computed in Python (`_row_builder`), or by SQL on PostgreSQL.
* **Read-ahead rows** (PostgreSQL, JSON lines or unusual CSV): the same query in a thread
  on a connection of its own, a few chunks ahead of the writer (`_ReadAhead`).
* **Read-ahead COPY** (PostgreSQL, CSV): PostgreSQL writes the CSV itself (``COPY (query)
  TO STDOUT (FORMAT csv)``), and Python only moves bytes. The query maps empty strings to
  NULL and each row's line end is made CRLF, so the bytes are exactly those the csv
  module writes (a test compares them); the header is still written by the csv module.

Why a thread and a connection of its own on PostgreSQL: the server produces the next
chunk while the writer (and gpg) handle this one; the thread's transaction makes the
cursor stream from one snapshot (outside a transaction Django must declare it WITH HOLD,
which makes PostgreSQL copy the whole result before the first row); and the main
connection stays free, in autocommit, for the run's progress that the admin shows. The
queue between them is bounded, so memory does not depend on the audience size.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import islice
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.db.models import F, TextField, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import NullIf

from transfers import writers
from transfers.errors import TransferError
from transfers.models import ExportJob

READ_AHEAD_CHUNKS = 4  # chunks held between the reading thread and the writer


def chunk_size() -> int:
    """Rows per fetch: big enough to amortise a round trip, small enough for RAM."""
    return int(getattr(settings, "EXPORT_CHUNK_SIZE", 5000))


def copy_block_bytes() -> int:
    """COPY output is handed to the writer in blocks of about this size."""
    return int(getattr(settings, "EXPORT_COPY_BLOCK_BYTES", 1024 * 1024))


@dataclass(frozen=True)
class Source:
    """What to read: the columns, the format and the CSV delimiter of the export."""

    job: ExportJob
    columns: list[writers.Column]
    format: str
    delimiter: str = ","


@dataclass(frozen=True)
class CsvBlock:
    """Rows the database already wrote as CSV, byte for byte as `writers.CsvWriter` would."""

    data: bytes
    rows: int


Chunk = list[Sequence[Any]] | CsvBlock


def audience_chunks(
    source: Source,
    *,
    sql_cells: bool | None = None,
    read_ahead: bool | None = None,
    copy: bool | None = None,
) -> Iterator[Chunk]:
    """The audience in identity order, as lists of rows (cells in column order) or as
    `CsvBlock`s. Lazy: no query runs before the first chunk is asked for.

    The keyword arguments force a path (tests compare the paths); by default the fastest
    correct one is taken."""
    on_postgresql = connection.vendor == "postgresql"
    if read_ahead is None:
        read_ahead = on_postgresql and not connection.in_atomic_block
    if copy is None:
        copy = read_ahead and on_postgresql and _copy_can_write(source)
    if copy:
        yield from _read_ahead(_copy_reader(_copy_sql(source), source.delimiter))
        return
    queryset, build = _query(source, sql_cells)
    size = chunk_size()
    if not read_ahead:
        yield from _batches(queryset.iterator(chunk_size=size), size, build)
        return
    sql, params = queryset.query.get_compiler(using=queryset.db).as_sql()
    for rows in _read_ahead(_fetch_reader(sql, params, size)):
        yield rows if build is None else [build(row) for row in rows]


# --------------------------------------------------------------------------- queries


def _query(source: Source, sql_cells: bool | None) -> tuple[Any, Callable[[Any], Any] | None]:
    """The values_list query, and the Python step turning its rows into cells (if any)."""
    queryset = source.job.audience.profiles().order_by("identity")
    if sql_cells is None:
        sql_cells = source.format == ExportJob.Format.CSV and connection.vendor == "postgresql"
    if sql_cells:
        # No per-row Python: ->> already spells values the way writers.csv_cell() does.
        aliases = {f"c{i}": _cell(c) for i, c in enumerate(source.columns)}
        return queryset.annotate(**aliases).values_list(*aliases), None
    needs_attributes = any(not c.is_identity for c in source.columns)
    fields = ("identity", "attributes") if needs_attributes else ("identity",)
    return queryset.values_list(*fields), _row_builder(source)


def _cell(column: writers.Column) -> Any:
    return F("identity") if column.is_identity else KeyTextTransform(column.attribute, "attributes")


def _copy_can_write(source: Source) -> bool:
    """Whether PostgreSQL's CSV output is byte-identical to the csv module's here.

    Not for one column: the csv module quotes an empty lone field (so the line is not
    blank) and PostgreSQL quotes a lone ``\\.``. COPY takes one-byte delimiters only."""
    return (
        source.format == ExportJob.Format.CSV
        and len(source.columns) >= 2
        and len(source.delimiter.encode("utf-8")) == 1
    )


def _copy_sql(source: Source) -> tuple[str, Sequence[Any]]:
    queryset = source.job.audience.profiles().order_by("identity")
    # PostgreSQL writes '' as "" (to tell it from NULL); the csv module writes both as
    # nothing. NULLIF makes PostgreSQL do the same.
    aliases = {
        f"c{i}": NullIf(_cell(c), Value(""), output_field=TextField())
        for i, c in enumerate(source.columns)
    }
    query = queryset.annotate(**aliases).values_list(*aliases)
    return query.query.get_compiler(using=query.db).as_sql()


def _row_builder(source: Source) -> Callable[[tuple], list[Any]]:
    """Turns (identity, attributes) into the writer's cells, in Python (portable path)."""
    keys = [None if c.is_identity else c.attribute for c in source.columns]
    cell = writers.csv_cell if source.format == ExportJob.Format.CSV else _same

    def build(row: tuple) -> list[Any]:
        identity = row[0]
        attributes = row[1] if len(row) > 1 else None
        if isinstance(attributes, str):  # raw jsonb text (the read-ahead path)
            attributes = json.loads(attributes)
        if not isinstance(attributes, dict):
            attributes = {}
        return [identity if key is None else cell(attributes.get(key)) for key in keys]

    return build


def _same(value: Any) -> Any:
    return value


def _batches(
    rows: Iterator[Any], size: int, build: Callable[[Any], Any] | None
) -> Iterator[list[Any]]:
    while True:
        piece = islice(rows, size)
        batch = list(piece) if build is None else [build(row) for row in piece]
        if not batch:
            return
        yield batch


# --------------------------------------------------------------------------- readers

Put = Callable[[Any], None]
Reader = Callable[[Any, Put], None]  # (psycopg connection, put) -> None


def _fetch_reader(sql: str, params: Sequence[Any], size: int) -> Reader:
    def read(raw: Any, put: Put) -> None:
        with raw.cursor(name=f"export_{uuid.uuid4().hex}") as cursor:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(size):
                put(rows)

    return read


def _copy_reader(query: tuple[str, Sequence[Any]], delimiter: str) -> Reader:
    sql, params = query
    statement = f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, DELIMITER %s)"
    block_bytes = copy_block_bytes()

    def read(raw: Any, put: Put) -> None:
        with raw.cursor() as cursor, cursor.copy(statement, [*params, delimiter]) as copy:
            lines: list[bytes] = []
            size = 0
            # PostgreSQL sends one message per row, ending in "\n"; a line break inside
            # a quoted value is in the middle of a message, so only the last byte is the
            # row's end: swapping it for CRLF is exact.
            for message in copy:
                lines.append(bytes(message[:-1]))
                size += len(message)
                if size >= block_bytes:
                    put(CsvBlock(b"\r\n".join(lines) + b"\r\n", len(lines)))
                    lines, size = [], 0
            if lines:
                put(CsvBlock(b"\r\n".join(lines) + b"\r\n", len(lines)))

    return read


def _read_ahead(reader: Reader) -> Iterator[Any]:
    feed = _ReadAhead(reader)
    try:
        yield from feed
    finally:
        feed.close()


class _ReadAhead:
    """Runs ``reader`` in a thread, on its own connection and transaction (see the module
    notes); what it puts is yielded in order, its exception re-raised here."""

    _END = object()

    def __init__(self, reader: Reader, alias: str = "default") -> None:
        self._reader, self._alias = reader, alias
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="export-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            wrapper = connections.create_connection(self._alias)
            try:
                wrapper.ensure_connection()
                with wrapper.connection.transaction():
                    self._reader(wrapper.connection, self._put)
            finally:
                wrapper.close()
            self._put(self._END)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the consumer, which raises it
            with suppress(_Stopped):
                self._put(_Failure(exc))

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            with suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return
        raise _Stopped  # the consumer is gone: unwind the reader (rolls back, closes)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, _Failure):
                raise _database_error(item.error)
            yield item

    def close(self) -> None:
        self._stop.set()
        with suppress(queue.Empty):
            while True:
                self._queue.get_nowait()  # unblock a reader waiting to put
        self._thread.join(timeout=30)


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _database_error(error: BaseException) -> BaseException:
    """A lost database connection is worth a retry; anything else is raised as it is."""
    import psycopg

    if isinstance(error, psycopg.OperationalError):
        failure = TransferError(f"Reading the audience failed: {error}", retryable=True)
        failure.__cause__ = error
        return failure
    return error
