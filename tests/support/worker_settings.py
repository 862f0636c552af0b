"""Settings of the Celery worker that tests/test_celery_worker.py starts: the real ones,
with the pipelines replaced by tests.support.fake_runs. Everything else (database,
broker, timings) comes from the environment, as in production."""

import os

from lyticsops.settings import *  # noqa: F403

TRANSFERS_RUNNERS = {
    "import": "tests.support.fake_runs.run",
    "export": "tests.support.fake_runs.run",
}
if CELERY_BROKER_URL.startswith("redis://"):  # noqa: F405
    # Look for the messages of dead workers every second, not every ~100 s.
    CELERY_BROKER_TRANSPORT_OPTIONS["unacked_restore_throttle"] = 1  # noqa: F405
# A queue of the test session's own: test runs that share the Redis database at the same
# time (several checkouts, CI jobs) never take each other's messages. Retries and every
# other task go to the default queue too.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("TEST_WORKER_QUEUE", "celery")
