"""Structured logging: run/job context on every record, JSON output, secret redaction.

API (for code that runs jobs)
-----------------------------
``log_context(**fields)`` is a context manager. Every log record emitted inside it -- from
any logger, at any depth of the call stack -- carries ``fields`` as attributes, and so as
keys of the JSON line (``LOG_FORMAT=json``) or ``key=value`` pairs after the plain message::

    from lyticsops.logging import log_context

    with log_context(run_id=run.pk, job_id=job.pk, partner=job.partner.slug):
        pipeline.run(job)          # logger.info("file imported") -> {..., "run_id": 42, ...}

Contexts nest: an inner ``log_context`` adds to (and may override) the outer fields and
the outer ones come back when it exits. Fields whose value is ``None`` are left out. An
explicit ``extra={...}`` on a log call wins over a context field of the same name.

The context lives in a ``contextvars.ContextVar``:

* asyncio tasks inherit it (they copy the context when they are created);
* a ``threading.Thread`` does NOT (on Python 3.11 a new thread starts with an empty
  context). Wrap the thread's target with ``propagate_context(fn)`` -- it captures the
  context at wrap time -- or run it with ``contextvars.copy_context().run``;
* a Celery task starts with an empty context; the task code opens its own ``log_context``.

Redaction is defence in depth: code must never hand a secret to a logger in the first place
(see ``authorizations.fields``). ``RedactingFilter`` still masks, before any handler writes
the record: values of secret-looking keys in mapping arguments and in ``extra``, PEM/OpenSSH/
PGP private key blocks, ``key=value`` pairs and ``Authorization`` headers with secret-looking
keys, Bearer tokens and passwords in URLs -- in the message, its arguments and tracebacks.

Wiring (``settings.LOGGING``): both filters sit on the handler, not on a logger, because a
logger's filters do not see records propagated from its children.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

MASK = "[redacted]"

# The default is read-only: the context is replaced by log_context, never changed in place.
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "lyticsops_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else on a record came from `extra` or a filter.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# Set by ContextFilter: the names of the context fields it added (for the plain formatter).
_CONTEXT_ATTR = "_context_fields"


# --------------------------------------------------------------------------- context


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log record emitted inside the ``with`` block."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """A copy of the fields that ``log_context`` currently adds."""
    return dict(_context.get())


def propagate_context(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` so that it runs with the log context current *now* (for threads)."""
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # A Context can be entered by one thread at a time: run in a copy of the copy.
        return ctx.copy().run(fn, *args, **kwargs)

    return wrapper


class ContextFilter(logging.Filter):
    """Copies the ``log_context`` fields onto each record (never overriding ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        added = []
        for key, value in fields.items():
            if key not in record.__dict__:
                setattr(record, key, value)
                added.append(key)
        if added:
            setattr(record, _CONTEXT_ATTR, tuple(added))
        return True


# --------------------------------------------------------------------------- redaction

# Key names whose values are secrets. Compared after lower-casing and dropping "-" and "_",
# by substring, so "db_password", "X-Api-Token" and "clientSecret" all match.
_SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "privatekey",
    "clientsecret",
    "secret",
    "token",
    "authorization",
    "apikey",
    "cookie",
)
# Every repetition in these patterns is bounded or follows a literal: an unbounded [\w-]*
# in front of a literal backtracks quadratically over a long base64 blob in a message.
_KEY_CHARS = r"[A-Za-z0-9_\-]{0,40}"
_SENSITIVE_NAME = (
    r"(?:password|passwd|passphrase|private[_-]?key|secret|token|authorization|api[_-]?key|cookie)"
)

# -----BEGIN RSA PRIVATE KEY----- ... -----END RSA PRIVATE KEY----- (also OPENSSH, EC,
# ENCRYPTED, and PGP PRIVATE KEY BLOCK). A block cut off before its END line is masked to
# the end of the text.
_PRIVATE_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----.*?(?:-----END \1-----|\Z)", re.DOTALL
)
# PuTTY .ppk: the private half follows "Private-Lines: N".
_PUTTY_PRIVATE = re.compile(r"(Private-Lines:[ \t]*\d+[ \t]*\r?\n)[A-Za-z0-9+/=\r\n]+")
# password=..., "client_secret": "...", Authorization: Bearer ..., token='a b'. The match
# starts at the sensitive word (a prefix such as "DB_" is left as it is), which keeps the
# search linear; only the value is replaced.
_KEY_VALUE = re.compile(
    rf"(?P<key>{_SENSITIVE_NAME}{_KEY_CHARS}[\"']?[ \t]*[:=][ \t]*(?:\r?\n[ \t]*)?)"
    r"(?P<scheme>(?:Bearer|Basic|Token|Digest)[ \t]+)?"
    r"(?:"
    r"(?P<q>[\"'])(?P<qval>[^\n]{0,2000}?)(?P=q)"  # quoted
    # An already masked value is matched whole, so that redacting twice changes nothing.
    rf"|{re.escape(MASK)}"
    r"|(?P<val>[^\s\"',;&}\])]+)"  # bare
    r"|(?P<open>[\"'])\S*"  # a quote that never closes: up to the next space
    r")",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:[redacted]@host
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]{0,30}://[^:/\s@]{0,256}:)[^@\s/]{1,256}(@)")


def is_secret_key(name: object) -> bool:
    """Whether a mapping key / extra name looks like it holds a secret."""
    if not isinstance(name, str):
        return False
    folded = name.lower().replace("-", "").replace("_", "")
    return any(part in folded for part in _SECRET_KEY_PARTS)


def _mask_key_value(match: re.Match[str]) -> str:
    quote = match.group("q") or match.group("open") or ""
    closing = match.group("q") or ""
    return f"{match.group('key')}{match.group('scheme') or ''}{quote}{MASK}{closing}"


def redact_text(text: str) -> str:
    """Mask private key blocks, secret ``key=value`` pairs, Bearer tokens, URL passwords."""
    if not text:
        return text
    text = _PRIVATE_BLOCK.sub(lambda m: f"-----{m.group(1)} {MASK}-----", text)
    text = _PUTTY_PRIVATE.sub(lambda m: f"{m.group(1)}{MASK}\n", text)
    text = _KEY_VALUE.sub(_mask_key_value, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}{m.group(2)}", text)


def redact_value(value: Any, key: object = None) -> Any:
    """A copy of ``value`` with secrets masked; containers are walked, other types kept."""
    if is_secret_key(key) and value is not None and not isinstance(value, bool):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: redact_value(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact_value(item) for item in value]
        if isinstance(value, list):
            return items
        return tuple(items) if isinstance(value, tuple) else set(items)
    return value


class RedactingFilter(logging.Filter):
    """Masks secrets in a record before any handler formats it.

    The message is rendered here (``msg % args``) and the result redacted as text, so that
    secrets inside arbitrary objects' ``str()`` are caught too; ``args`` is then emptied."""

    def filter(self, record: logging.LogRecord) -> bool:
        self._redact_message(record)
        self._redact_extras(record)
        self._redact_exception(record)
        return True

    @staticmethod
    def _redact_message(record: logging.LogRecord) -> None:
        if isinstance(record.args, Mapping):
            record.args = redact_value(record.args)
        elif record.args:
            record.args = tuple(redact_value(arg) for arg in record.args)
        try:
            rendered = record.getMessage()  # also covers a non-str msg (an exception, a dict)
        except Exception:  # bad format args: leave it to logging's own error report
            return
        record.msg, record.args = redact_text(rendered), ()

    @staticmethod
    def _redact_extras(record: logging.LogRecord) -> None:
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                record.__dict__[key] = redact_value(value, key)

    @staticmethod
    def _redact_exception(record: logging.LogRecord) -> None:
        # Render the traceback now (formatters reuse record.exc_text) so it can be redacted.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)


# --------------------------------------------------------------------------- formatters


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


def _jsonable(value: Any) -> Any:
    """JSON-safe form of an extra; unknown objects become their (redacted) ``str()``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, _jsonable(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """The usual one-line text, followed by the ``log_context`` fields as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, _CONTEXT_ATTR, ())
        if not fields:
            return text
        pairs = " ".join(f"{key}={getattr(record, key, '')}" for key in fields)
        first, newline, rest = text.partition("\n")  # keep tracebacks below the line
        return f"{first} [{pairs}]{newline}{rest}"
