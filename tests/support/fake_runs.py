"""A stand-in for `transfers.imports.run_import` / `transfers.exports.run_export`.

It does what the job's name says, as space-separated words:

- ``sleep=S``: take S seconds;
- ``transient=N``: raise a retryable error on the first N attempts;
- ``permanent``: raise a permanent error (bad configuration);
- ``bug``: raise a KeyError (an unexpected error);
- ``reject=N``: report N rejected rows;
- ``failfile`` / ``allfail``: one file failed (others imported) / every file failed.

When ``FAKE_RUN_EVENTS`` names a file, "start"/"end" events are appended to it as JSON
lines (with the process id and time), so that a test can check that runs never overlap.
"""

from __future__ import annotations

import json
import os
import time

from transfers.errors import ConfigError, TransferError
from transfers.models import Run


def spec(name: str) -> dict[str, str]:
    words = dict(word.partition("=")[::2] for word in name.split())
    return {key: value or "1" for key, value in words.items()}


def event(kind: str, run: Run) -> None:
    path = os.environ.get("FAKE_RUN_EVENTS")
    if not path:
        return
    line = json.dumps(
        {
            "event": kind,
            "run": run.pk,
            "attempt": run.attempts,
            "pid": os.getpid(),
            "t": time.time(),
        }
    )
    # One write() of a short line with O_APPEND: lines from several processes never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def run(run: Run, recorder=None) -> None:
    job = run.job
    wants = spec(job.name)
    event("start", run)
    if "sleep" in wants:
        time.sleep(float(wants["sleep"]))
    if "transient" in wants and run.attempts <= int(wants["transient"]):
        event("error", run)
        raise TransferError("The SFTP server closed the connection.", retryable=True)
    if "permanent" in wants:
        event("error", run)
        raise ConfigError("Authentication refused: check the username and key.")
    if "bug" in wants:
        raise KeyError("oops")
    counters = {"files_seen": 2, "files_imported": 2, "rows_read": 10, "rows_upserted": 10}
    if "reject" in wants:
        counters["rows_rejected"] = int(wants["reject"])
        counters["rows_upserted"] = 10 - int(wants["reject"])
    skipped = []
    if "failfile" in wants or "allfail" in wants:
        counters.update(files_imported=0 if "allfail" in wants else 1, files_failed=1)
        if "allfail" in wants:
            counters["rows_upserted"] = 0
        skipped = [{"name": "members-2.csv.gpg", "reason": "wrong PGP key", "failed": True}]
    Run.objects.filter(pk=run.pk).update(skipped_files=skipped, **counters)
    event("end", run)
