"""``GET /healthz`` for load balancers and container health checks.

Answers 200 ``{"status": "ok", "checks": {"database": "ok", "broker": "ok", "gpg": "ok",
"storage": "ok"}}`` when this process can do its work, else 503 with ``"status": "fail"``,
the failing checks' short reasons in ``checks`` and their names in ``failing``.

* No authentication (load balancers have no credentials), so the answer holds no versions,
  paths, host names or exception texts: only fixed short reasons. Details go to the log.
* Cheap: results are cached in-process for ``CACHE_SECONDS``, and only one thread of a
  process runs the checks at a time, so a burst of probes costs one round of checks.
* Host header: the view is behind Django's ALLOWED_HOSTS like every other URL; a probe must
  send a Host that is allowed (see deploy/README.md).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

log = logging.getLogger(__name__)

CACHE_SECONDS = 2.0
BROKER_TIMEOUT = 2.0  # seconds; a load balancer's probe usually times out after ~5 s
GPG_TIMEOUT = 5.0


class CheckFailed(Exception):
    """A check failed; ``reason`` is safe to show to anyone."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- checks


def check_database() -> None:
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        raise CheckFailed("unavailable") from exc


def check_broker() -> None:
    # Imported here: kombu is only needed when someone asks.
    from kombu import Connection

    # socket_* are what the Redis transport honours; connect_timeout is for AMQP.
    options = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "socket_connect_timeout": BROKER_TIMEOUT,
        "socket_timeout": BROKER_TIMEOUT,
    }
    conn = Connection(
        settings.CELERY_BROKER_URL, connect_timeout=BROKER_TIMEOUT, transport_options=options
    )
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT)
    except Exception as exc:
        raise CheckFailed("unreachable") from exc
    finally:
        conn.release()


def check_gpg() -> None:
    from transfers.pgp import GpgUnavailable, gpg_binary

    try:
        path = gpg_binary()
    except GpgUnavailable as exc:
        raise CheckFailed("not found") from exc
    try:
        # --version reads no keyring; an empty GNUPGHOME keeps it off the user's home.
        with tempfile.TemporaryDirectory(prefix="hz-gpg-") as home:
            subprocess.run(
                [path, "--homedir", home, "--version"],
                capture_output=True,
                timeout=GPG_TIMEOUT,
                check=True,
                env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
            )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CheckFailed("not working") from exc


def _write_probe(directory: Path) -> None:
    # A real create/write/delete: catches read-only mounts, full disks and lost NFS mounts,
    # which os.access() would not. The directory is not created: a missing mount must fail.
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".healthz-") as probe:
        probe.write(b"ok")
        probe.flush()


def check_storage() -> None:
    places = {"sftp_root": settings.MANAGED_SFTP_ROOT, "var_dir": settings.VAR_DIR}
    failed = []
    for name, directory in places.items():
        try:
            _write_probe(Path(directory))
        except OSError as exc:
            log.debug("healthz: %s not writable: %s", name, exc)
            failed.append(name)
    if failed:
        raise CheckFailed(f"not writable: {', '.join(failed)}")


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "broker": check_broker,
    "gpg": check_gpg,
    "storage": check_storage,
}


# --------------------------------------------------------------------------- running


def _run_one(name: str, check: Callable[[], None]) -> str:
    try:
        check()
    except CheckFailed as exc:
        _log_failure(name, exc.reason, exc.__cause__)
        return exc.reason
    except Exception as exc:  # a bug in a check must not take the endpoint down
        _log_failure(name, "error", exc)
        return "error"
    return "ok"


def _log_failure(name: str, reason: str, cause: BaseException | None) -> None:
    # Only on a change: a load balancer probing every second must not flood the log.
    if _last.get(name) != reason:
        detail = f"{type(cause).__name__}: {cause}" if cause else "-"
        log.warning("healthz check %s failed: %s (%s)", name, reason, detail)


def _remember(results: dict[str, str]) -> None:
    for name, result in results.items():
        if result == "ok" and _last.get(name, "ok") != "ok":
            log.info("healthz check %s recovered", name)
    _last.update(results)


_lock = threading.Lock()
_cached: tuple[float, dict[str, str]] | None = None
_last: dict[str, str] = {}  # the previous result of each check, for logging changes only


def run_checks() -> dict[str, str]:
    """Every check's result ("ok" or a short reason), at most CACHE_SECONDS old."""
    global _cached
    with _lock:
        now = time.monotonic()
        if _cached is None or now - _cached[0] >= CACHE_SECONDS:
            results = {name: _run_one(name, check) for name, check in CHECKS.items()}
            _remember(results)
            _cached = (now, results)
        return dict(_cached[1])


def reset_cache() -> None:
    """Forget the cached results (tests; after fixing something by hand in a shell)."""
    global _cached
    with _lock:
        _cached = None
        _last.clear()


@never_cache
@require_safe  # GET and HEAD
def healthz(request: HttpRequest) -> JsonResponse:
    results = run_checks()
    failing = [name for name, result in results.items() if result != "ok"]
    body: dict[str, object] = {"status": "fail" if failing else "ok", "checks": results}
    if failing:
        body["failing"] = failing
    response = JsonResponse(body, status=503 if failing else 200)
    # Django logs every 5xx as an ERROR; a probe every second would flood the log. The
    # changes are logged above, once, so mark the response as logged already.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response
