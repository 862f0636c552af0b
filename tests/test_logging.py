"""Structured logs: JSON lines, log_context fields, secret redaction, settings wiring."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from lyticsops.logging import (
    MASK,
    ContextFilter,
    JsonFormatter,
    PlainFormatter,
    RedactingFilter,
    current_context,
    log_context,
    propagate_context,
    redact_text,
)

RSA_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretRSAbody0001\n"
    "aGVsbG8gd29ybGQsecretRSAbody0002\n-----END RSA PRIVATE KEY-----"
)
OPENSSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAsecretSSHbody\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
PGP_KEY = (
    "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGsecretPGPbody\n=abcd\n"
    "-----END PGP PRIVATE KEY BLOCK-----"
)
PUTTY_KEY = (
    "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPublic-Lines: 1\n"
    "AAAAC3NzaC1lZDI1NTE5AAAAIpublicpart\nPrivate-Lines: 1\nAAAAIsecretPuTTYbody\n"
    "Private-MAC: 0123abcd\n"
)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger wired like settings.LOGGING's console handler, writing JSON to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.structured")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)
    logger.propagate = True


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --------------------------------------------------------------------------- JSON format


def test_json_line_has_the_fields(capture):
    logger, stream, _ = capture
    logger.info("imported %d rows", 12, extra={"partner": "acme", "file": "a.csv"})
    (entry,) = lines(stream)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "tests.structured"
    assert entry["message"] == "imported 12 rows"
    assert entry["partner"] == "acme"
    assert entry["file"] == "a.csv"
    assert entry["time"].endswith("+00:00")  # ISO 8601, UTC
    assert "exception" not in entry


def test_json_exception_text_and_one_line_each(capture):
    logger, stream, _ = capture
    try:
        raise ValueError("bad row\non two lines")
    except ValueError:
        logger.exception("import failed")
    logger.warning("next")
    text = stream.getvalue()
    assert len(text.splitlines()) == 2  # newlines inside values are escaped
    first, second = lines(stream)
    assert first["level"] == "ERROR"
    assert "Traceback" in first["exception"]
    assert "ValueError: bad row" in first["exception"]
    assert second["message"] == "next"


def test_json_non_serialisable_extras_become_text(capture):
    logger, stream, _ = capture

    class Thing:
        def __str__(self) -> str:
            return "thing password=hunter2"

    logger.info("x", extra={"thing": Thing(), "when": __import__("datetime").date(2026, 1, 2)})
    (entry,) = lines(stream)
    assert entry["thing"] == f"thing password={MASK}"
    assert entry["when"] == "2026-01-02"


def test_extras_cannot_replace_the_core_fields(capture):
    logger, stream, _ = capture
    with log_context(level="nope", logger="nope"):
        logger.info("hello")
    (entry,) = lines(stream)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "tests.structured"


# --------------------------------------------------------------------------- context


def test_log_context_adds_fields_and_nests(capture):
    logger, stream, _ = capture
    with log_context(run_id=7, job_id=3):
        logger.info("outer")
        with log_context(run_id=8, partner="acme", skipped=None):
            logger.info("inner")
            assert current_context() == {"run_id": 8, "job_id": 3, "partner": "acme"}
        logger.info("outer again")
    logger.info("outside")
    outer, inner, again, outside = lines(stream)
    assert (outer["run_id"], outer["job_id"]) == (7, 3)
    assert (inner["run_id"], inner["job_id"], inner["partner"]) == (8, 3, "acme")
    assert "skipped" not in inner
    assert again["run_id"] == 7 and "partner" not in again
    assert "run_id" not in outside and current_context() == {}


def test_explicit_extra_wins_over_context(capture):
    logger, stream, _ = capture
    with log_context(run_id=1):
        logger.info("x", extra={"run_id": 2})
    assert lines(stream)[0]["run_id"] == 2


def test_context_reaches_records_of_every_logger_through_the_handler(capture):
    _, stream, _handler = capture
    other = logging.getLogger("tests.structured.child.deep")
    with log_context(run_id=5):
        other.warning("from a child logger")  # propagates to the handler's logger
    assert lines(stream)[0]["run_id"] == 5


def test_threads_do_not_inherit_the_context_unless_wrapped(capture):
    # Documented behaviour: a plain thread starts with an empty context (Python 3.11);
    # propagate_context() carries it over.
    logger, stream, _ = capture
    with log_context(run_id=9):
        plain = threading.Thread(target=lambda: logger.info("plain thread"))
        wrapped = threading.Thread(target=propagate_context(lambda: logger.info("wrapped")))
        for thread in (plain, wrapped):
            thread.start()
            thread.join()
    by_message = {entry["message"]: entry for entry in lines(stream)}
    assert "run_id" not in by_message["plain thread"]
    assert by_message["wrapped"]["run_id"] == 9


def test_asyncio_tasks_inherit_the_context(capture):
    logger, stream, _ = capture

    async def main() -> None:
        with log_context(run_id=11):
            await asyncio.create_task(asyncio.sleep(0, result=None))
            await asyncio.create_task(_log_async(logger))

    asyncio.run(main())
    assert lines(stream)[0]["run_id"] == 11


async def _log_async(logger: logging.Logger) -> None:
    logger.info("in a task")


def test_plain_formatter_appends_the_context():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    with log_context(run_id=3, job_id=4):
        ContextFilter().filter(record)
    text = PlainFormatter("%(levelname)s %(message)s").format(record)
    assert text == "INFO hello [run_id=3 job_id=4]"
    bare = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    assert PlainFormatter("%(message)s").format(bare) == "hello"


# --------------------------------------------------------------------------- redaction

SECRETS = [
    "hunter2",
    "s3cr3t-pass phrase",
    "cs_0123456789abcdef",
    "eyJhbGciOiJIUzI1NiJ9.payload.sig",
    "secretRSAbody",
    "secretSSHbody",
    "secretPGPbody",
    "secretPuTTYbody",
    "redispass",
    "tok-abcdef",
]


def test_no_secret_survives_in_messages_args_extras_or_tracebacks(capture):
    logger, stream, _ = capture
    logger.info("login password=hunter2 user=bob")
    logger.info("config %s", {"passphrase": "s3cr3t-pass phrase", "host": "sftp.example"})
    logger.info(
        "%(client_secret)s for %(client_id)s",
        {"client_secret": "cs_0123456789abcdef", "client_id": "abc"},
    )
    logger.info("headers: Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig")
    logger.info("key was %s", RSA_KEY)
    logger.info("keys:\n" + OPENSSH_KEY + "\n" + PGP_KEY)
    logger.info("putty %s", PUTTY_KEY)
    logger.info("broker redis://:redispass@redis:6379/0 down")
    logger.info(
        "job", extra={"private_key": RSA_KEY, "settings": {"sftp": {"token": "tok-abcdef"}}}
    )
    try:
        raise RuntimeError("connect failed with password='hunter2'")
    except RuntimeError:
        logger.exception("boom")
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    entries = lines(stream)
    # What is not secret is still there.
    assert entries[0]["message"] == f"login password={MASK} user=bob"
    assert "sftp.example" in entries[1]["message"]
    assert entries[2]["message"] == f"{MASK} for abc"
    assert entries[3]["message"] == f"headers: Authorization: Bearer {MASK}"
    assert "-----RSA PRIVATE KEY [redacted]-----" in entries[4]["message"]
    assert "redis://:[redacted]@redis:6379/0" in entries[7]["message"]
    assert entries[8]["private_key"] == MASK
    assert entries[8]["settings"] == {"sftp": {"token": MASK}}
    assert "RuntimeError: connect failed" in entries[9]["exception"]


def test_redact_text_keeps_ordinary_text():
    text = "imported 10 rows from /in/a.csv for partner acme (3 bad)"
    assert redact_text(text) == text


def test_truncated_private_key_block_is_masked_to_the_end():
    text = "oops -----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsecretSSHbody"
    assert redact_text(text) == f"oops -----OPENSSH PRIVATE KEY {MASK}-----"


@pytest.mark.parametrize(
    "text",
    [
        '{"password": "hunter2"}',
        "{'client_secret': 'hunter2'}",
        "passphrase: hunter2",
        "DB_PASSWORD=hunter2",
        "X-Api-Token=hunter2",
        "access_token=hunter2&state=1",
        "Cookie: sessionid=hunter2",
        "password='hunter2 never closed",
        "passphrase:\n  hunter2",
    ],
)
def test_secret_key_value_forms(text):
    assert "hunter2" not in redact_text(text)


@pytest.mark.parametrize(
    "blob",
    ["A" * 200_000, "a-" * 100_000, "x://" + "b" * 200_000, "password" * 25_000, "'" * 200_000],
)
def test_redaction_stays_linear_on_big_messages(blob):
    # A message may carry a large base64 or CSV blob; a backtracking pattern would hang
    # the worker that logs it.
    started = time.perf_counter()
    redact_text(blob)
    assert time.perf_counter() - started < 1.0


def test_redaction_is_idempotent_across_handlers(capture):
    logger, stream, _handler = capture
    second = io.StringIO()
    other = logging.StreamHandler(second)
    other.addFilter(RedactingFilter())
    other.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(other)
    try:
        logger.info("a %s b", "password=hunter2")
    finally:
        logger.removeHandler(other)
    assert second.getvalue().strip() == f"a password={MASK} b"
    assert lines(stream)[0]["message"] == f"a password={MASK} b"


# --------------------------------------------------------------------------- settings


def test_settings_put_both_filters_on_the_console_handler():
    console = settings.LOGGING["handlers"]["console"]
    assert console["filters"] == ["context", "redact"]
    assert settings.CELERY_WORKER_HIJACK_ROOT_LOGGER is False


def _run_with_env(extra_env: dict[str, str], var_dir: Path) -> subprocess.CompletedProcess:
    code = (
        "import django, logging; django.setup();"
        "from lyticsops.logging import log_context;"
        "ctx = log_context(run_id=42); ctx.__enter__();"
        "logging.getLogger('transfers.run').info('done password=%s', 'hunter2');"
        "logging.getLogger('django.request').warning('Not Found: /x')"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "lyticsops.settings",
        "LOG_LEVEL": "INFO",
        "VAR_DIR": str(var_dir),
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=settings.BASE_DIR,
        timeout=60,
    )


def test_log_format_json_from_the_environment(tmp_path):
    result = _run_with_env({"LOG_FORMAT": "json"}, tmp_path)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert entries[0]["message"] == f"done password={MASK}"
    assert entries[0]["run_id"] == 42
    assert entries[0]["logger"] == "transfers.run"
    # Django's own loggers go through the same handler, once.
    assert [e["logger"] for e in entries] == ["transfers.run", "django.request"]


def test_log_format_plain_is_the_default(tmp_path):
    result = _run_with_env({"LOG_FORMAT": ""}, tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.endswith(f"INFO transfers.run done password={MASK} [run_id=42]")


def test_unknown_log_format_is_refused(tmp_path):
    result = _run_with_env({"LOG_FORMAT": "xml"}, tmp_path)
    assert result.returncode != 0
    assert "LOG_FORMAT must be 'plain' or 'json'" in result.stderr
