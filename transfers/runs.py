"""RunRecorder: what a run did, kept on the `Run` row while it goes.

The recorder accumulates counters, skipped/failed files with reasons, the first rejected rows
(file, line, reason) and log lines, and writes them to the run with a single
``UPDATE ... WHERE pk = ...`` at most every ``IMPORT_PROGRESS_INTERVAL`` seconds (and on
``flush(force=True)``), so the admin shows bytes and rows while a file is being imported.

It starts from the counters already on the run (the orchestrator resets them at each
attempt). Log lines are *appended* in SQL (``log = log || new lines``), never rewritten, so
lines the orchestrator appends meanwhile are kept. The in-memory `Run` is updated too; a
caller that saves it afterwards should still use ``update_fields`` for its own fields.

``skipped_files`` entries are ``{"name", "reason", "failed"}``: ``failed`` is true for files
that could not be imported, false for files left alone on purpose (incomplete, duplicate).

Writing progress while a file's transaction is open: the update must not be part of that
transaction (it would be invisible until commit and rolled back with a failed file).
On PostgreSQL it goes through a second connection owned by the recorder. SQLite allows one
writer at a time and that transaction holds it, so there progress is written between
files only. Never logs secrets: callers pass messages about files and rows only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import F, Q, Value
from django.db.models.functions import Concat
from django.db.models.sql import UpdateQuery
from django.db.models.sql.constants import NO_RESULTS

from transfers.models import Run

log = logging.getLogger(__name__)

COUNTERS = (
    "files_seen",
    "files_imported",
    "files_skipped",
    "files_failed",
    "rows_read",
    "rows_upserted",
    "rows_rejected",
    "bytes_transferred",
)
MAX_LOG_CHARS = 100_000
MAX_REASON_CHARS = 500


class RunRecorder:
    def __init__(
        self,
        run: Run,
        *,
        max_rejected_rows: int | None = None,
        max_listed_files: int | None = None,
        interval: float | None = None,
        using: str = DEFAULT_DB_ALIAS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run = run
        self.using = using
        self.max_rejected_rows = _setting(max_rejected_rows, "IMPORT_MAX_REJECTED_ROWS", 100)
        self.max_listed_files = _setting(max_listed_files, "IMPORT_MAX_LISTED_FILES", 200)
        self.interval = _setting(interval, "IMPORT_PROGRESS_INTERVAL", 1.0)
        self._clock = clock
        self._last_write = clock()
        self._dirty = False
        self._in_file_transaction = False
        self._side_connection: Any = None
        self.counters = {name: int(getattr(run, name) or 0) for name in COUNTERS}
        self.skipped_files: list[dict[str, Any]] = list(run.skipped_files or [])
        self.rejected_rows: list[dict[str, Any]] = list(run.rejected_rows or [])
        self._log_length = len(run.log or "")
        self._log_pending = ""  # lines not yet written

    # ---------------------------------------------------------------- accumulating

    def add(self, **increments: int) -> None:
        for name, value in increments.items():
            self.counters[name] += value
        self._dirty = True

    def __getattr__(self, name: str) -> int:
        # recorder.rows_read etc. read the live counters.
        counters = self.__dict__.get("counters")
        if counters is not None and name in counters:
            return counters[name]
        raise AttributeError(name)

    def skip_file(self, name: str, reason: str) -> None:
        self.add(files_skipped=1)
        self._list_file(name, reason, failed=False)
        self.log(f"skipped '{name}': {reason}")

    def fail_file(self, name: str, reason: str) -> None:
        self.add(files_failed=1)
        self._list_file(name, reason, failed=True)
        self.log(f"FAILED '{name}': {reason}", level=logging.WARNING)

    def _list_file(self, name: str, reason: str, *, failed: bool) -> None:
        if len(self.skipped_files) < self.max_listed_files:
            self.skipped_files.append(
                {"name": name, "reason": reason[:MAX_REASON_CHARS], "failed": failed}
            )

    def reject_row(self, file: str, line: int, reason: str) -> None:
        self.add(rows_rejected=1)
        if len(self.rejected_rows) < self.max_rejected_rows:
            self.rejected_rows.append(
                {"file": file, "line": line, "reason": reason[:MAX_REASON_CHARS]}
            )

    def log(self, message: str, *, level: int = logging.INFO) -> None:
        log.log(level, "run %s: %s", self.run.pk, message)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {logging.getLevelName(level)} {message}\n"
        if self._log_length + len(line) > MAX_LOG_CHARS:
            if self._log_length >= MAX_LOG_CHARS:
                return
            line = "[log truncated]\n"
            self._log_length = MAX_LOG_CHARS
        else:
            self._log_length += len(line)
        self._log_pending += line
        self._dirty = True

    # ---------------------------------------------------------------- persisting

    @contextlib.contextmanager
    def file_transaction(self) -> Iterator[None]:
        """Mark the span of a file's transaction (progress then goes another way)."""
        self._in_file_transaction = True
        try:
            yield
        finally:
            self._in_file_transaction = False

    def tick(self) -> None:
        """Cheap to call often: writes only when the interval has passed."""
        if self._clock() - self._last_write >= self.interval:
            self.flush()

    def flush(self, force: bool = False) -> None:
        if not (force or self._dirty or self._clock() - self._last_write >= self.interval):
            return
        values = self.values()
        pending = self._log_pending
        if pending:
            values["log"] = Concat(F("log"), Value(pending))
        if self._write(values):
            for name in (*COUNTERS, "skipped_files", "rejected_rows"):
                setattr(self.run, name, values[name])
            self.run.log = (self.run.log or "") + pending
            self._log_pending = ""
            self._dirty = False
            self._last_write = self._clock()

    def values(self) -> dict[str, Any]:
        return {
            **self.counters,
            "skipped_files": list(self.skipped_files),
            "rejected_rows": list(self.rejected_rows),
        }

    def _write(self, values: dict[str, Any]) -> bool:
        if self.run.pk is None:
            return False
        if not self._in_file_transaction:
            Run.objects.using(self.using).filter(pk=self.run.pk).update(**values)
            return True
        if connections[self.using].vendor != "postgresql":
            return False  # SQLite: our own open transaction holds the only write lock
        self._update_through(self._side(), values)
        return True

    def _side(self) -> Any:
        if self._side_connection is None:
            self._side_connection = connections.create_connection(self.using)
        return self._side_connection

    def _update_through(self, side: Any, values: dict[str, Any]) -> None:
        """The same UPDATE as QuerySet.update(), on the side connection (autocommit)."""
        query = UpdateQuery(Run)
        query.add_update_values(values)
        query.add_q(Q(pk=self.run.pk))
        query.get_compiler(connection=side).execute_sql(NO_RESULTS)

    def close(self) -> None:
        """Write what is left and release the side connection."""
        try:
            self.flush(force=True)
        finally:
            if self._side_connection is not None:
                with contextlib.suppress(Exception):
                    self._side_connection.close()
                self._side_connection = None

    def summary(self) -> dict[str, Any]:
        return {**self.counters, "skipped_files": self.skipped_files}


def _setting(value: Any, name: str, default: Any) -> Any:
    return value if value is not None else getattr(settings, name, default)
