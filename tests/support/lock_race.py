"""Race for job locks from a separate process: ``python -m tests.support.lock_race``.

Usage: ``lock_race setup`` creates the JobLock table in the database of DATABASE_URL (a
scratch SQLite file); ``lock_race race START KEY...`` waits until the Unix time START (so
that every racer starts together), tries each key once and prints the keys it won as JSON;
``lock_race hold KEY TTL`` takes one key with a heartbeat, prints "held", and holds it until
it is killed.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lyticsops.settings")
    import django

    django.setup()
    from django.db import connection

    from transfers import locks
    from transfers.models import JobLock

    command = argv[0]
    if command == "setup":
        with connection.schema_editor() as editor:
            editor.create_model(JobLock)
        return
    if command == "race":
        start, keys = float(argv[1]), argv[2:]
        owner = locks.make_owner("racer")
        while time.time() < start:
            time.sleep(0.001)
        won = [key for key in keys if locks.try_acquire(key, owner, 30)]
        print(json.dumps(won))
        return
    if command == "hold":
        key, ttl = argv[1], float(argv[2])
        with locks.job_lock(key, locks.make_owner("holder"), ttl):
            print("held", flush=True)
            time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
