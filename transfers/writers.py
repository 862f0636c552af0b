"""Row writers for exports: the job's field list, CSV (RFC 4180) and JSON lines.

Rows reach a writer as tuples of *cells*, one per column, already in the writer's
representation (see `csv_cell` / the JSON values of `jsonl`): the query can then produce
CSV-ready text straight from the database (PostgreSQL ``attributes->>'x'``) and the
writer does no per-value Python work at all. Writers emit UTF-8 bytes into a binary
stream through large buffers, because everything below them (gzip, gpg, SFTP) is
cheaper per call with big writes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, BinaryIO, Protocol

from django.core.exceptions import ValidationError

IDENTITY = "identity"
BUFFER_SIZE = 1024 * 1024
_ATTRIBUTE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_FORBIDDEN_DELIMITERS = {'"', "\r", "\n", ""}


@dataclass(frozen=True)
class Column:
    """One exported column: where the value comes from and what the column is called."""

    attribute: str  # "identity" or a key of Profile.attributes
    name: str

    @property
    def is_identity(self) -> bool:
        return self.attribute == IDENTITY


def parse_fields(raw: Any) -> list[Column]:
    """The job's ``fields`` as columns; raises ValidationError naming each bad entry.

    An entry is ``"email"`` or ``{"attribute": "email", "column": "E-mail"}``; no entries
    means just the identity."""
    if raw in (None, "", []):
        return [Column(IDENTITY, IDENTITY)]
    if not isinstance(raw, list):
        raise ValidationError("Fields must be a list.", code="invalid_fields")
    problems: list[str] = []
    columns: list[Column] = []
    for number, entry in enumerate(raw, start=1):
        try:
            columns.append(_parse_field(entry))
        except ValueError as exc:
            problems.append(f"field {number}: {exc}")
    names = [c.name for c in columns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"column names must be unique: {', '.join(duplicates)}")
    if problems:
        raise ValidationError(problems, code="invalid_fields")
    return columns


def _parse_field(entry: Any) -> Column:
    if isinstance(entry, str):
        entry = {"attribute": entry}
    if not isinstance(entry, dict):
        raise ValueError('must be an attribute name or {"attribute": ..., "column": ...}')
    unknown = set(entry) - {"attribute", "column"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
    attribute = entry.get("attribute")
    if not isinstance(attribute, str) or not _ATTRIBUTE.match(attribute):
        raise ValueError("'attribute' must be an attribute name (letters, digits, _ . -)")
    column = entry.get("column") or attribute
    if not isinstance(column, str) or len(column) > 255:
        raise ValueError("'column' must be a text of at most 255 characters")
    if any(ord(c) < 32 for c in column):
        raise ValueError("'column' must not contain line breaks or control characters")
    return Column(attribute, column)


def normalise_delimiter(value: str) -> str:
    """The CSV delimiter as one character (``\\t`` typed in a form means a tab)."""
    value = "\t" if value in ("\\t", "tab") else value
    if len(value) != 1 or value in _FORBIDDEN_DELIMITERS:
        raise ValidationError(
            'The delimiter must be one character other than a quote or a line break (use "\\t" '
            "for a tab).",
            code="invalid_delimiter",
        )
    return value


# --------------------------------------------------------------------------- cells


def csv_cell(value: Any) -> str | None:
    """A JSON attribute value as CSV text, spelled as PostgreSQL's ``->>`` spells it.

    Keeping both spellings equal means the fast SQL path and the portable Python path
    produce byte-identical files."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # jsonb keeps numbers as numeric, whose text has no exponent: 1e-05 -> 0.00001.
        text = repr(value)
        return format(Decimal(text), "f") if "e" in text else text
    # Objects and arrays as JSON text; PostgreSQL's jsonb output uses ", " and ": ".
    return json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------- writers


class RowWriter(Protocol):
    def write_header(self) -> None: ...

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None: ...

    def finish(self) -> None:
        """Push every buffered byte to the binary stream (which stays open)."""


class _Sink(io.RawIOBase):
    """Adapts any object with ``write(bytes)`` to the raw stream a BufferedWriter wants."""

    def __init__(self, target: BinaryIO) -> None:
        self._target = target

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._target.write(bytes(data))
        return len(data)


def _text_stream(binary: BinaryIO) -> io.TextIOWrapper:
    # newline="": the csv module writes its own line terminators; nothing is translated.
    buffered = io.BufferedWriter(_Sink(binary), buffer_size=BUFFER_SIZE)
    return io.TextIOWrapper(buffered, encoding="utf-8", newline="", write_through=False)


class CsvWriter:
    """RFC 4180: CRLF line ends, fields quoted when they contain the delimiter, a quote or
    a line break, quotes doubled. ``None`` cells are written as empty fields."""

    def __init__(
        self, binary: BinaryIO, columns: Sequence[Column], delimiter: str = ",", header=True
    ) -> None:
        self._text = _text_stream(binary)
        self._csv = csv.writer(
            self._text,
            delimiter=normalise_delimiter(delimiter),
            quotechar='"',
            doublequote=True,
            quoting=csv.QUOTE_MINIMAL,
            lineterminator="\r\n",
        )
        self._columns = columns
        self._header = header

    def write_header(self) -> None:
        if self._header:
            self._csv.writerow([c.name for c in self._columns])

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        self._csv.writerows(rows)

    def write_block(self, data: bytes) -> None:
        """Rows already encoded in exactly this writer's dialect (PostgreSQL's COPY)."""
        self._text.flush()  # what the csv module wrote so far goes first
        self._text.buffer.write(data)

    def finish(self) -> None:
        self._text.flush()
        self._text.detach().flush()  # the BufferedWriter; the binary stream stays open


class JsonLinesWriter:
    """One JSON object per line, keys in column order, UTF-8 (not \\u-escaped)."""

    def __init__(self, binary: BinaryIO, columns: Sequence[Column]) -> None:
        self._text = _text_stream(binary)
        self._names = [c.name for c in columns]
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def write_header(self) -> None:
        pass  # JSON lines carry the names in every row

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        names, encode = self._names, self._encode
        self._text.write("".join(encode(dict(zip(names, row, strict=True))) + "\n" for row in rows))

    def finish(self) -> None:
        self._text.flush()
        self._text.detach().flush()


def gzip_stream(binary: BinaryIO, *, mtime: float = 0) -> gzip.GzipFile:
    """A gzip member written into ``binary``; close it to write the trailer.

    Level 6 (zlib's default) is the usual size/speed trade-off; a fixed ``mtime`` and no
    file name in the header keep the output reproducible."""
    return gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=binary, mtime=mtime)


def make_writer(
    binary: BinaryIO,
    columns: Sequence[Column],
    *,
    format: str,
    delimiter: str = ",",
    header: bool = True,
) -> RowWriter:
    if format == "csv":
        return CsvWriter(binary, columns, delimiter, header)
    if format == "jsonl":
        return JsonLinesWriter(binary, columns)
    raise ValueError(f"unknown export format {format!r}")
