"""Benchmark: tokens/s and authenticated GET /api/v1/me per second, ours vs DOT's stock setup.

    .venv/bin/python bench/token_api.py [--seconds 10] [--threads 8] [--workers 2]

What it does, all on this machine and only over loopback (127.0.0.1):

1. (Re)creates the PostgreSQL database ``lyticsops_bench`` on 127.0.0.1:5432 (user
   ``postgres``, trust auth; override with BENCH_PG_URL) and migrates it, so the ``test``
   database of the test suite is left alone.
2. Creates one API client for our configuration (keyed HMAC client-secret hash, our token
   view and Bearer authentication) and one for django-oauth-toolkit's stock configuration
   (its TokenView, its OAuth2Authentication, Django's default PBKDF2 hasher for secrets).
3. For each configuration: starts gunicorn on 127.0.0.1 (DEBUG off, logging at INFO or
   BENCH_LOG_LEVEL, gthread workers x 4 threads, keep-alive), then a driver in a separate
   process loads it with a fixed number of threads for a fixed time after a 1 s warm-up
   (each loop bounded by time *and* count): first token requests (HTTP Basic), then
   GET /api/v1/me with one token.
4. Prints a table and, last, one JSON line with the figures, the goals and pass/fail.

Goals (issue 3, this 2-core machine): >= 300 tokens/s, >= 500 authenticated requests/s,
p99 < 100 ms, for our configuration.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote_plus, urlsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GUNICORN = str(Path(PYTHON).with_name("gunicorn"))
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/lyticsops_bench")
HOST = "127.0.0.1"
GOALS = {"tokens_per_s": 300, "me_per_s": 500, "p99_ms": 100}
MAX_REQUESTS_PER_THREAD = 200_000  # the loops are bounded by count as well as by time
SCOPES = "authorizations:read jobs:read"

STOCK_SETTINGS = '''
"""django-oauth-toolkit's stock setup, for comparison: DOT defaults except the scopes."""
from lyticsops.settings import *  # noqa: F403

OAUTH2_PROVIDER = {"ACCESS_TOKEN_EXPIRE_SECONDS": 3600, "SCOPES": API_SCOPES}  # noqa: F405
ROOT_URLCONF = "bench_stock_urls"
REST_FRAMEWORK = {
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "oauth2_provider.contrib.rest_framework.OAuth2Authentication"
    ],
    "DEFAULT_PERMISSION_CLASSES": ["oauth2_provider.contrib.rest_framework.TokenHasScope"],
}
'''
STOCK_URLS = """
from django.urls import path
from oauth2_provider.views import TokenView
from rest_framework.response import Response
from rest_framework.views import APIView


class Me(APIView):
    required_scopes = []

    def get(self, request):
        token = request.auth
        return Response({
            "client_id": token.application.client_id,
            "scopes": token.scope.split(),
            "expires_at": token.expires,
        })


urlpatterns = [
    path("api/v1/idp/oauth2/token", TokenView.as_view()),
    path("api/v1/me", Me.as_view()),
]
"""


# -- database and clients ---------------------------------------------------------------------
def recreate_database() -> None:
    import psycopg

    parts = urlsplit(PG_URL)
    name = parts.path.lstrip("/")
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def base_env(tmp: Path, settings_module: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings_module,
        "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT)]),
        "DATABASE_URL": PG_URL,
        "DB_CONN_MAX_AGE": "600",
        "DEBUG": "0",
        "SECRET_KEY": BENCH_SECRET_KEY,
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": HOST,
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),  # as in production
        "VAR_DIR": str(tmp / "var"),
    }
    for name in ("REDIS_URL", "CACHE_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    return env


BENCH_SECRET_KEY = secrets.token_urlsafe(50)


def setup_client(kind: str) -> None:
    """Run inside Django (``--setup KIND``): create the partner/client, print credentials."""
    import django

    django.setup()
    from authorizations.models import ApiClient, Partner

    partner, _ = Partner.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    client = ApiClient(
        partner=partner,
        name=f"bench {kind}",
        scopes=SCOPES,
        client_type=ApiClient.CLIENT_CONFIDENTIAL,
        authorization_grant_type=ApiClient.GRANT_CLIENT_CREDENTIALS,
    )
    secret = client.set_new_secret()
    client.save()  # hashed with this configuration's CLIENT_SECRET_HASHER
    algorithm = client.client_secret.split("$", 1)[0]
    print(json.dumps({"client_id": client.client_id, "secret": secret, "hasher": algorithm}))


def run_django(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [PYTHON, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"failed: {' '.join(args)}")
    return result.stdout


# -- server -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def gunicorn(env: dict[str, str], workers: int, log: Path):
    port = free_port()
    command = [
        GUNICORN,
        "lyticsops.wsgi:application",
        "--bind", f"{HOST}:{port}",
        "--workers", str(workers),
        "--worker-class", "gthread",
        "--threads", "4",
        "--keep-alive", "30",
        "--backlog", "512",
        "--log-level", "warning",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_ready(port, proc)
            yield port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("gunicorn exited early; see its log")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/api/v1/me")
            if conn.getresponse().status == 401:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("gunicorn did not become ready")


# -- driver (a separate process) ----------------------------------------------------------------
class Worker(threading.Thread):
    def __init__(self, port: int, request: tuple, deadline: float, warmup_end: float) -> None:
        super().__init__(daemon=True)
        self.port, self.request = port, request
        self.deadline, self.warmup_end = deadline, warmup_end
        self.latencies: list[float] = []
        self.errors = 0
        self.statuses: dict[int, int] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        method, path, body, headers, expect = self.request
        for _ in range(MAX_REQUESTS_PER_THREAD):
            start = time.perf_counter()
            if start >= self.deadline:
                break
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
                self.errors += 1
                continue
            end = time.perf_counter()
            if start >= self.warmup_end:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == expect:
                    self.latencies.append(end - start)
                else:
                    self.errors += 1
        conn.close()


def drive(spec: dict) -> dict:
    """Run one load phase; called in the driver process (``--drive JSON``)."""
    now = time.perf_counter()
    warmup_end = now + spec["warmup"]
    deadline = warmup_end + spec["seconds"]
    request = (
        spec["method"],
        spec["path"],
        spec.get("body"),
        spec["headers"],
        spec["expect"],
    )
    workers = [Worker(spec["port"], request, deadline, warmup_end) for _ in range(spec["threads"])]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies = sorted(x for w in workers for x in w.latencies)
    statuses: dict[str, int] = {}
    for worker in workers:
        for status, count in worker.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    return summarize(latencies, spec["seconds"], sum(w.errors for w in workers), statuses)


def summarize(latencies: list[float], seconds: float, errors: int, statuses: dict) -> dict:
    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        index = min(len(latencies) - 1, max(0, round(p / 100 * len(latencies)) - 1))
        return round(latencies[index] * 1000, 2)

    return {
        "requests": len(latencies),
        "per_s": round(len(latencies) / seconds, 1),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "errors": errors,
        "statuses": statuses,
    }


def run_driver(spec: dict) -> dict:
    out = subprocess.run(
        [PYTHON, __file__, "--drive", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def get_token(port: int, creds: dict) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("POST", "/api/v1/idp/oauth2/token", **token_request(creds))
    response = conn.getresponse()
    payload = json.loads(response.read())
    if response.status != 200:
        raise SystemExit(f"token request failed: {response.status} {payload}")
    return payload["access_token"]


def token_request(creds: dict) -> dict:
    raw = f"{quote_plus(creds['client_id'])}:{quote_plus(creds['secret'])}"
    return {
        "body": "grant_type=client_credentials",
        "headers": {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "Basic " + base64.b64encode(raw.encode()).decode(),
        },
    }


def measure(port: int, creds: dict, args: argparse.Namespace) -> dict:
    common = {"port": port, "threads": args.threads, "seconds": args.seconds, "warmup": 1.0}
    tokens = run_driver(
        {
            **common,
            "method": "POST",
            "path": "/api/v1/idp/oauth2/token",
            **token_request(creds),
            "expect": 200,
        }
    )
    token = get_token(port, creds)
    me = run_driver(
        {
            **common,
            "method": "GET",
            "path": "/api/v1/me",
            "headers": {"Authorization": f"Bearer {token}"},
            "expect": 200,
        }
    )
    return {"tokens": tokens, "me": me}


# -- main ---------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    recreate_database()
    with tempfile.TemporaryDirectory(prefix="bench-token-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "bench_stock_settings.py").write_text(STOCK_SETTINGS)
        (tmp / "bench_stock_urls.py").write_text(STOCK_URLS)
        envs = {
            "ours": base_env(tmp, "lyticsops.settings"),
            "stock": base_env(tmp, "bench_stock_settings"),
        }
        envs["stock"]["FIELD_ENCRYPTION_KEYS"] = envs["ours"]["FIELD_ENCRYPTION_KEYS"]
        run_django(envs["ours"], "manage.py", "migrate", "--no-input", "-v", "0")
        results: dict[str, dict] = {}
        for kind, env in envs.items():
            creds = json.loads(run_django(env, __file__, "--setup", kind).strip().splitlines()[-1])
            with gunicorn(env, args.workers, tmp / f"gunicorn-{kind}.log") as port:
                results[kind] = {"hasher": creds["hasher"], **measure(port, creds, args)}
            print_phase(kind, results[kind])
    return report(results, args)


def print_phase(kind: str, result: dict) -> None:
    for phase in ("tokens", "me"):
        r = result[phase]
        print(
            f"{kind:5} {phase:6} {r['per_s']:>8.1f}/s  p50 {r['p50_ms']:>7.2f} ms  "
            f"p99 {r['p99_ms']:>7.2f} ms  n={r['requests']} errors={r['errors']} "
            f"hasher={result['hasher']}",
            flush=True,
        )


def report(results: dict, args: argparse.Namespace) -> int:
    ours = results["ours"]
    checks = {
        "tokens_per_s": ours["tokens"]["per_s"] >= GOALS["tokens_per_s"],
        "me_per_s": ours["me"]["per_s"] >= GOALS["me_per_s"],
        "p99_ms": max(ours["tokens"]["p99_ms"], ours["me"]["p99_ms"]) < GOALS["p99_ms"],
        "no_errors": ours["tokens"]["errors"] == 0 and ours["me"]["errors"] == 0,
    }
    line = {
        "bench": "token_api",
        "config": {
            "seconds": args.seconds,
            "threads": args.threads,
            "gunicorn_workers": args.workers,
            "cpus": os.cpu_count(),
            "log_level": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "database": "postgresql 127.0.0.1:5432/" + urlsplit(PG_URL).path.lstrip("/"),
        },
        "ours": ours,
        "stock": results["stock"],
        "goals": GOALS,
        "checks": checks,
        "pass": all(checks.values()),
    }
    print(json.dumps(line))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase")
    parser.add_argument("--threads", type=int, default=8, help="driver threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.drive:
        print(json.dumps(drive(json.loads(arguments.drive))))
    elif arguments.setup:
        setup_client(arguments.setup)
    else:
        raise SystemExit(main(arguments))
