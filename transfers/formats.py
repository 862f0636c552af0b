"""Incremental parsers for import files: CSV, JSON array and JSON lines.

Every parser reads a binary stream a piece at a time (memory does not grow with the file)
and yields, in file order, either a `Record` (identity, attributes, normalised time) or a
`Rejection` (line number and a reason a person can act on). Problems that concern the whole
file (no identity column, a JSON document that is not an array, malformed JSON we cannot
resynchronise after) raise `FileRejected`.

Rules shared by all formats
---------------------------
* Field mapping (``{"source": "attribute"}``): when set, only mapped fields become
  attributes. The identity field and the timestamp field may be named by their source name
  or their mapped name; the identity is never stored as an attribute (exports read it as
  ``identity``), the timestamp is (under its mapped name) when it is mapped or no mapping is set.
* Identity: a non-empty string (surrounding blanks removed) or an integer, at most 255
  characters.
* Timestamp: ISO 8601 (a date, or date and time; no zone means UTC) or Unix epoch seconds
  (a number or a numeric string). It is normalised to ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC,
  fixed width) so that times compare correctly as text, in Python and in SQL alike.
* Values that no database can store the same way are rejected per row: NUL characters,
  lone surrogates (what undecodable bytes turn into, see below), NaN/Infinity.

Encoding errors are reported per row with the line number: bytes the configured encoding
cannot decode are turned into lone surrogates by the ``lyticsops-import`` error handler and
the row containing them is rejected. CSV values stay strings; an empty cell is the empty
string (it overwrites an earlier value, like any other value).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

from transfers.errors import ConfigError, FileRejected

CSV = "csv"
JSON = "json"
JSONL = "jsonl"
FORMATS = (CSV, JSON, JSONL)
MAX_IDENTITY_LENGTH = 255
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
_EXTENSIONS = {"csv": CSV, "txt": CSV, "tsv": CSV, "json": JSON, "jsonl": JSONL, "ndjson": JSONL}
_READ_SIZE = 256 * 1024
_UTC = dt.UTC


class Record(NamedTuple):
    line: int
    identity: str
    attributes: dict[str, Any]
    time: str | None  # normalised UTC timestamp, or None when the job names no timestamp


class Rejection(NamedTuple):
    line: int
    reason: str


Item = Record | Rejection


@dataclass(frozen=True)
class ParseOptions:
    """What a parser needs to know; built from an ImportJob by `options_for_job`."""

    format: str
    identity_field: str
    timestamp_field: str = ""
    field_mapping: Mapping[str, str] = field(default_factory=dict)
    delimiter: str = ","
    quotechar: str = '"'
    encoding: str = "utf-8"
    header: bool = True
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES


def options_for_job(job: Any, file_name: str, max_record_bytes: int) -> ParseOptions:
    """ParseOptions of an ImportJob for one file (the format may come from its name)."""
    return ParseOptions(
        format=job.format or format_for_name(file_name),
        identity_field=job.identity_field.strip(),
        timestamp_field=job.timestamp_field.strip(),
        field_mapping=dict(job.field_mapping or {}),
        delimiter=normalise_delimiter(job.csv_delimiter),
        quotechar=job.csv_quotechar or '"',
        encoding=job.csv_encoding or "utf-8",
        header=job.csv_header,
        max_record_bytes=max_record_bytes,
    )


def format_for_name(name: str) -> str:
    """csv/json/jsonl from the file name's extension (after compression/PGP suffixes)."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        raise FileRejected(
            f"Cannot tell the format of '{name}' from its name: set the job's format "
            "(CSV, JSON array or JSON lines)."
        ) from None


def normalise_delimiter(value: str) -> str:
    """Accept a typed "\\t" or "tab" for a tab; a delimiter must be one character."""
    value = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(value, value)
    if len(value) != 1:
        raise ConfigError(f"The CSV delimiter must be one character (got {value!r}).")
    return value


def check_options(options: ParseOptions) -> None:
    """Configuration problems, found before any file is read."""
    if options.format not in FORMATS:
        raise ConfigError(f"Unknown import format {options.format!r}.")
    if not options.identity_field:
        raise ConfigError("The job names no identity field.")
    try:
        codecs.lookup(options.encoding)
    except LookupError:
        raise ConfigError(f"Unknown CSV encoding {options.encoding!r}.") from None
    mapping = options.field_mapping
    if not isinstance(mapping, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
    ):
        raise ConfigError("The field mapping must map column names to attribute names.")


def parse(stream: BinaryIO, options: ParseOptions) -> Parser:
    """The parser for ``options.format``; iterate it for Records and Rejections."""
    check_options(options)
    parser_class = {CSV: CsvParser, JSON: JsonArrayParser, JSONL: JsonLinesParser}
    return parser_class[options.format](stream, options)


# --------------------------------------------------------------------------- encoding errors

_ERROR_HANDLER = "lyticsops-import"


# Bumped by the error handler: parsers compare it to know that a decode error happened.
_decode_errors = [0]


def _mark_undecodable(exc: UnicodeError) -> tuple[str, int]:
    """Replace each undecodable byte with the lone surrogate U+DC00+byte (never valid text)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _decode_errors[0] += 1
    bad = exc.object[exc.start : exc.end]
    return "".join(chr(0xDC00 + b) for b in bad), exc.end


codecs.register_error(_ERROR_HANDLER, _mark_undecodable)

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable_reason(text: str, encoding: str) -> str | None:
    """Why a decoded text cannot be stored (NUL, undecodable bytes), or None."""
    match = _UNSTORABLE.search(text)
    if match is None:
        return None
    char = match.group()
    if char == "\x00":
        return "contains a NUL character, which cannot be stored"
    if "\udc00" <= char <= "\udcff":
        bad = " ".join(f"0x{ord(c) - 0xDC00:02x}" for c in re.findall("[\udc00-\udcff]+", text)[0])
        return f"bytes that are not valid {encoding} ({bad}); check the file's encoding"
    return "contains an unpaired UTF-16 surrogate, which cannot be stored"


def _decoding_name(encoding: str) -> str:
    # A UTF-8 byte order mark is not part of the first column's name.
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


# --------------------------------------------------------------------------- timestamps

_EPOCH = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def parse_timestamp(value: Any) -> str:
    """Normalised UTC text of an ISO 8601 or epoch-seconds value; ValueError if neither."""
    if isinstance(value, bool) or value is None:
        raise ValueError("not a timestamp")
    if isinstance(value, (int, float)):
        moment = _from_epoch(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty")
        if _EPOCH.fullmatch(text):
            moment = _from_epoch(float(text))
        else:
            moment = dt.datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=_UTC)
    else:
        raise ValueError("not a timestamp")
    return moment.astimezone(_UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _from_epoch(seconds: float) -> dt.datetime:
    if not math.isfinite(seconds):
        raise ValueError("not a finite number")
    try:
        return dt.datetime.fromtimestamp(seconds, _UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError("out of range") from exc


class _TimestampCache:
    """Files repeat the same timestamps a lot; parsing each once saves most of the cost."""

    def __init__(self, size: int = 4096) -> None:
        self._cache: dict[Any, str] = {}
        self._size = size

    def __call__(self, value: Any) -> str:
        try:
            return self._cache[value]
        except (KeyError, TypeError):
            pass
        result = parse_timestamp(value)
        if len(self._cache) >= self._size:
            self._cache.clear()
        if isinstance(value, (str, int, float)):
            self._cache[value] = result
        return result


def _positional(name: str) -> str:
    return f"col{name}" if name.isdigit() else name


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text if len(text) <= limit else text[:limit] + "…")


# --------------------------------------------------------------------------- field plan


class _FieldPlan:
    """Mapping, identity and timestamp resolution shared by the parsers."""

    def __init__(self, options: ParseOptions, positional: bool = False) -> None:
        # Without a header, columns are col1..colN; "1" is accepted for "col1" anywhere.
        name = _positional if positional else str
        self.mapping = {name(k): v for k, v in options.field_mapping.items()}
        self.identity_field = name(options.identity_field)
        self.timestamp_field = name(options.timestamp_field) if options.timestamp_field else ""
        self.identity_sources = self._sources(self.identity_field)
        self.timestamp_sources = self._sources(self.timestamp_field) if self.timestamp_field else []
        self.parse_time = _TimestampCache()

    def _sources(self, name: str) -> list[str]:
        """Source names that can hold ``name``: mapped sources first, then the name itself."""
        mapped = [src for src, dst in self.mapping.items() if dst == name]
        return [*mapped, name] if name not in mapped else mapped

    def attribute_name(self, source: str) -> str | None:
        if self.mapping:
            return self.mapping.get(source)
        return source

    def identity(self, value: Any) -> str | Rejection:
        """The identity text, or the reason it is unusable (as a Rejection with line 0)."""
        if isinstance(value, str):
            text = value.strip()
        elif isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif value is None:
            return Rejection(0, f"no value for the identity field '{self.identity_field}'")
        else:
            return Rejection(
                0, f"the identity field '{self.identity_field}' must be text or a whole number"
            )
        if not text:
            return Rejection(0, f"the identity field '{self.identity_field}' is empty")
        if len(text) > MAX_IDENTITY_LENGTH:
            return Rejection(
                0, f"the identity is longer than {MAX_IDENTITY_LENGTH} characters ({len(text)})"
            )
        return text

    def time(self, value: Any) -> str | Rejection:
        if value is None or value == "":
            return Rejection(0, f"the timestamp field '{self.timestamp_field}' is empty")
        try:
            return self.parse_time(value)
        except ValueError:
            return Rejection(
                0,
                f"the timestamp {_short(value)} in '{self.timestamp_field}' is neither "
                "ISO 8601 nor Unix epoch seconds",
            )


class Parser:
    """Base: iterate for Records/Rejections; ``empty``/``header`` describe what was seen."""

    def __init__(self, stream: BinaryIO, options: ParseOptions) -> None:
        self.stream = stream
        self.options = options
        self.plan = _FieldPlan(options, positional=options.format == CSV and not options.header)
        self.empty = True  # no byte of content (after a BOM and blank space) was seen
        self.header: list[str] | None = None

    def __iter__(self) -> Iterator[Item]:
        raise NotImplementedError


# --------------------------------------------------------------------------- CSV


class CsvParser(Parser):
    """csv.reader over a decoding TextIOWrapper; line numbers are physical lines (1-based).

    The row loop is the hot path of big imports, so it is written flat: attributes come
    from ``dict(zip(...))`` (C), and rows are checked for NUL characters / undecodable bytes
    only once the raw bytes or the decoder have shown one (``_Watch``), not row by row.
    """

    def __iter__(self) -> Iterator[Item]:
        options = self.options
        watch = _Watch(self.stream, options.encoding)
        encoding = _decoding_name(options.encoding)
        buffer = io.BufferedReader(watch, 256 * 1024)  # type: ignore[arg-type]
        text = io.TextIOWrapper(buffer, encoding, errors=_ERROR_HANDLER, newline="")
        try:
            csv.field_size_limit(max(options.max_record_bytes, 1024))
            reader = csv.reader(text, delimiter=options.delimiter, quotechar=options.quotechar)
            try:
                first = next(reader, None)
            except csv.Error as exc:
                raise FileRejected(f"The first row is unreadable: {exc}.") from None
            while first == []:  # leading blank lines
                first = next(reader, None)
            if first is None:
                return
            self.empty = False
            yield from self._rows(reader, first, watch)
        finally:
            # Detach, or the wrapper would close the stream under us when collected (the
            # caller still drains it to finish the checksum and the PGP integrity check).
            with contextlib.suppress(Exception):
                text.detach()

    def _rows(self, reader: Any, first: list[str], watch: _Watch) -> Iterator[Item]:
        options = self.options
        reason = _unstorable_reason("".join(first), options.encoding)
        if options.header:
            if reason:
                raise FileRejected(f"The header row (line {reader.line_num}) has {reason}.")
            self.header = [name.strip() for name in first]
            rows: Iterator[list[str]] = reader
        else:
            self.header = [f"col{i}" for i in range(1, len(first) + 1)]
            rows = itertools.chain([first], reader)
        last_line = reader.line_num if options.header else 0
        records = self._records(rows, reader, self.header, watch, last_line)
        while True:
            try:
                yield from records
                return
            except _CsvErrorAt as error:
                yield Rejection(error.line, f"unreadable CSV: {error.message}")
                records = self._records(reader, reader, self.header, watch, reader.line_num)

    def _records(
        self, rows: Iterator[list[str]], reader: Any, header: list[str], watch: _Watch, line: int
    ) -> Iterator[Item]:
        plan = self.plan
        width = len(header)
        keys, build, identity_index, time_index = self._plan_attributes(header)
        new_record = tuple.__new__
        always_check, decode_errors = watch.always, _decode_errors
        errors_at_start = watch.errors_at_start
        max_identity = MAX_IDENTITY_LENGTH
        last_line = line
        try:
            for row in rows:
                line = last_line + 1
                last_line = reader.line_num
                if len(row) != width:
                    if row:  # a blank line is no row at all
                        yield Rejection(line, f"expected {width} fields, found {len(row)}")
                    continue
                if always_check or watch.nul_seen or decode_errors[0] != errors_at_start:
                    bad = _unstorable_reason("".join(row), self.options.encoding)
                    if bad:
                        yield Rejection(line, bad)
                        continue
                identity = row[identity_index].strip()
                if not identity or len(identity) > max_identity:
                    yield Rejection(line, plan.identity(identity).reason)  # type: ignore[union-attr]
                    continue
                time = None
                if time_index is not None:
                    time = plan.time(row[time_index])
                    if type(time) is Rejection:
                        yield Rejection(line, time.reason)
                        continue
                if keys is not None:
                    attributes = dict(zip(keys, row, strict=True))
                    del attributes[_IDENTITY_SLOT]
                else:
                    attributes = build(row)
                yield new_record(Record, (line, identity, attributes, time))
        except csv.Error as exc:
            raise _CsvErrorAt(last_line + 1, str(exc)) from None

    def _plan_attributes(self, header: list[str]) -> tuple[Any, Any, int, int | None]:
        """How to build a row's attributes: (keys for dict(zip) or None, builder, ...)."""
        columns, identity_index, time_index = self._resolve(header)
        names = [name for name, _ in columns]
        indices = [index for _, index in columns]
        everything_else = [i for i in range(len(header)) if i != identity_index]
        if indices == everything_else and len(set(names)) == len(names):
            # Fast path: every column but the identity, in order. The identity lands in a
            # placeholder key that is deleted (a header name cannot hold a NUL).
            keys = [_IDENTITY_SLOT if i == identity_index else None for i in range(len(header))]
            for name, index in columns:
                keys[index] = name
            return keys, None, identity_index, time_index
        if not indices:
            return None, lambda row: {}, identity_index, time_index
        if len(indices) == 1:
            (name,), (index,) = names, indices
            return None, lambda row: {name: row[index]}, identity_index, time_index
        getter = operator.itemgetter(*indices)
        return (
            None,
            lambda row: dict(zip(names, getter(row), strict=True)),
            identity_index,
            time_index,
        )

    def _resolve(self, header: list[str]) -> tuple[list[tuple[str, int]], int, int | None]:
        """(attribute name, column index) pairs, identity index, timestamp index."""
        plan = self.plan
        seen: set[str] = set()
        for name in header:
            if name and name in seen:
                raise FileRejected(f"The column '{name}' appears twice in the header.")
            seen.add(name)
        identity_index = _find_column(header, plan.identity_sources)
        if identity_index is None:
            shown = ", ".join(repr(h) for h in header[:20]) + (", …" if len(header) > 20 else "")
            raise FileRejected(
                f"The identity column '{plan.identity_field}' is not in the "
                f"{'header' if self.options.header else 'columns'} (columns: {shown})."
            )
        time_index = None
        if plan.timestamp_field:
            time_index = _find_column(header, plan.timestamp_sources)
            if time_index is None:
                raise FileRejected(
                    f"The timestamp column '{plan.timestamp_field}' is not in the header."
                )
        columns = []
        for index, source in enumerate(header):
            name = plan.attribute_name(source)
            if name and index != identity_index:
                columns.append((name, index))
        return columns, identity_index, time_index


_IDENTITY_SLOT = "\x00identity"


class _CsvErrorAt(Exception):
    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message


class _Watch(io.RawIOBase):
    """The raw bytes on their way to the decoder. Rows are checked one by one only once a
    NUL byte went by or the decoder met undecodable bytes (or always, for UTF-16/32)."""

    def __init__(self, source: Any, encoding: str) -> None:
        self._source = source
        self.errors_at_start = _decode_errors[0]  # a decode error since: suspect
        # In UTF-16/32 a zero byte is ordinary: check every row there.
        self.always = "a".encode(encoding) != b"a"
        self.nul_seen = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        if b"\x00" in data:
            self.nul_seen = True
        buffer[: len(data)] = data
        return len(data)


def _find_column(header: list[str], sources: list[str]) -> int | None:
    for source in sources:
        if source in header:
            return header.index(source)
    return None


# --------------------------------------------------------------------------- JSON


class _StrictNumbers:
    """parse_float/parse_constant hooks that flag NaN/Infinity (and overflowing floats)."""

    def __init__(self) -> None:
        self.bad = False

    def parse_float(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            self.bad = True
        return value

    def parse_constant(self, text: str) -> None:
        self.bad = True
        return None


_SUSPECT = re.compile(r"[\x00\ud800-\udfff]|\\u0000|\\u[dD][89abAB]")


def _bad_strings(value: Any) -> str | None:
    """The first string (key or value) that cannot be stored, walking nested values."""
    if isinstance(value, str):
        return value if _UNSTORABLE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _bad_strings(key) or _bad_strings(item)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _bad_strings(item)
            if found is not None:
                return found
    return None


class _JsonParser(Parser):
    """What the JSON array and JSON lines parsers share: turning an object into a Record."""

    def __init__(self, stream: BinaryIO, options: ParseOptions) -> None:
        super().__init__(stream, options)
        self.numbers = _StrictNumbers()
        self.decoder = json.JSONDecoder(
            parse_float=self.numbers.parse_float, parse_constant=self.numbers.parse_constant
        )
        plan = self.plan
        self._identity_sources = plan.identity_sources
        self._time_sources = plan.timestamp_sources

    def _item(self, line: int, value: Any, raw: str) -> Item:
        if self.numbers.bad:
            self.numbers.bad = False
            return Rejection(line, "contains NaN or Infinity, which JSON does not allow")
        if not isinstance(value, dict):
            return Rejection(line, f"expected a JSON object, found {_json_type(value)}")
        if _SUSPECT.search(raw):
            bad = _bad_strings(value)
            if bad is not None:
                return Rejection(line, _unstorable_reason(bad, "utf-8") or "unreadable text")
        return self._record(line, value)

    def _record(self, line: int, obj: dict[str, Any]) -> Item:
        plan = self.plan
        identity_key = next((k for k in self._identity_sources if k in obj), None)
        if identity_key is None:
            return Rejection(line, f"no '{plan.identity_field}' field (the identity)")
        identity = plan.identity(obj[identity_key])
        if isinstance(identity, Rejection):
            return Rejection(line, identity.reason)
        time = None
        if plan.timestamp_field:
            time_key = next((k for k in self._time_sources if k in obj), None)
            if time_key is None:
                return Rejection(line, f"no '{plan.timestamp_field}' field (the timestamp)")
            time = plan.time(obj[time_key])
            if isinstance(time, Rejection):
                return Rejection(line, time.reason)
        mapping = plan.mapping
        if mapping:
            key = identity_key
            attributes = {mapping[k]: v for k, v in obj.items() if k in mapping and k != key}
        else:
            attributes = obj
            del attributes[identity_key]
        return Record(line, identity, attributes, time)


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


class JsonLinesParser(_JsonParser):
    """One JSON object per line; blank lines are ignored."""

    def __iter__(self) -> Iterator[Item]:
        limit = self.options.max_record_bytes
        readline: Callable[[int], bytes] = self.stream.readline  # type: ignore[assignment]
        line_number = 0
        while True:
            raw = readline(limit + 1)
            if not raw:
                return
            line_number += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                self._skip_rest_of_line(readline, limit)
                self.empty = False
                yield Rejection(line_number, f"the line is longer than {limit} bytes")
                continue
            if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            self.empty = False
            yield self._line(line_number, raw)

    @staticmethod
    def _skip_rest_of_line(readline: Callable[[int], bytes], limit: int) -> None:
        while True:
            rest = readline(limit)
            if not rest or rest.endswith(b"\n"):
                return

    def _line(self, line_number: int, raw: bytes) -> Item:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection(
                line_number,
                f"bytes that are not valid UTF-8 (0x{raw[exc.start]:02x} at byte {exc.start + 1})",
            )
        try:
            value = self.decoder.decode(text)
        except json.JSONDecodeError as exc:
            return Rejection(line_number, f"malformed JSON: {exc.msg} (column {exc.colno})")
        return self._item(line_number, value, text)


class JsonArrayParser(_JsonParser):
    """A JSON array of objects, read item by item over a sliding text buffer.

    ``raw_decode`` parses one item at a time; when an item runs past the end of the buffer
    more text is read and the item is parsed again. Items are therefore bounded by
    ``max_record_bytes``, not the file. A syntax error cannot be skipped reliably (where
    would the next item start?), so it rejects the whole file.
    """

    def __init__(self, stream: BinaryIO, options: ParseOptions) -> None:
        super().__init__(stream, options)
        self._text_decoder = codecs.getincrementaldecoder("utf-8-sig")(errors=_ERROR_HANDLER)
        self._buffer = ""
        self._pos = 0
        self._eof = False
        self._line = 1  # line number at self._line_pos
        self._line_pos = 0

    def __iter__(self) -> Iterator[Item]:
        char = self._next_char()
        if char is None:
            return
        self.empty = False
        if char != "[":
            raise FileRejected(
                f"The file is not a JSON array (it starts with {char!r} on line "
                f"{self._line_at(self._pos)}); expected '['. For one object per line, "
                "choose the JSON lines format."
            )
        self._pos += 1
        first = True
        while True:
            char = self._next_char()
            if char is None:
                raise self._malformed("the array is not closed (the file ends early)")
            if char == "]" and first:
                break
            if not first:
                if char == "]":
                    break
                if char != ",":
                    raise self._malformed(f"expected ',' or ']' but found {char!r}")
                self._pos += 1
                if self._next_char() is None:
                    raise self._malformed("the array is not closed (the file ends early)")
            first = False
            yield self._decode_item()
        self._pos += 1
        self._expect_end()

    def _decode_item(self) -> Item:
        while True:
            start = self._pos  # re-read: growing the buffer may compact it
            try:
                value, end = self.decoder.raw_decode(self._buffer, start)
            except json.JSONDecodeError as exc:
                if self._eof:
                    truncated = exc.pos >= len(self._buffer.rstrip())
                    message = "the file ends in the middle of an item" if truncated else exc.msg
                    raise self._malformed(message, exc.pos) from None
                self._grow(start)
                continue
            if end >= len(self._buffer) and not self._eof:
                self._grow(start)  # a number (or anything) may go on in the next chunk
                continue
            break
        line = self._line_at(start)
        raw = self._buffer[start:end]
        self._pos = end
        return self._item(line, value, raw)

    def _grow(self, start: int) -> None:
        if len(self._buffer) - start > self.options.max_record_bytes:
            raise FileRejected(
                f"Malformed JSON, or an item larger than {self.options.max_record_bytes} bytes, "
                f"at line {self._line_at(start)}."
            )
        self._fill()

    def _next_char(self) -> str | None:
        """Skip blank space; the next character (not consumed) or None at end of input."""
        while True:
            buffer, pos = self._buffer, self._pos
            while pos < len(buffer) and buffer[pos] in " \t\r\n":
                pos += 1
            self._pos = pos
            if pos < len(buffer):
                return buffer[pos]
            if self._eof:
                return None
            self._fill()

    def _fill(self) -> None:
        self._compact()
        data = self.stream.read(_READ_SIZE)
        if not data:
            self._eof = True
            self._buffer += self._text_decoder.decode(b"", final=True)
            return
        self._buffer += self._text_decoder.decode(data)

    def _compact(self) -> None:
        """Drop what was consumed so the buffer stays about one read (plus one item) long."""
        if self._pos > _READ_SIZE:
            self._line_at(self._pos)
            self._buffer = self._buffer[self._pos :]
            self._line_pos -= self._pos
            self._pos = 0

    def _line_at(self, pos: int) -> int:
        if pos > self._line_pos:
            self._line += self._buffer.count("\n", self._line_pos, pos)
            self._line_pos = pos
        return self._line

    def _malformed(self, message: str, pos: int | None = None) -> FileRejected:
        line = self._line_at(self._pos if pos is None else max(pos, self._pos))
        return FileRejected(f"Malformed JSON at line {line}: {message}.")

    def _expect_end(self) -> None:
        char = self._next_char()
        if char is not None:
            raise self._malformed(f"unexpected {char!r} after the end of the array")
