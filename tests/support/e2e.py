"""A whole lyticsops on this machine, for the browser tests in tests/e2e/.

`Stack` runs the product as it runs in production, as separate processes that share only
what they share there: one migrated database (``DATABASE_URL``: a SQLite *file*, or a
database of its own on the caller's PostgreSQL server), the filesystem Celery broker and the
managed-SFTP storage, under one temp folder:

* web: ``manage.py runserver --noreload`` on a free loopback port;
* a real Celery worker: ``celery -A lyticsops worker``;
* the managed SFTP server: ``manage.py runsftpd`` on another free port (the web and the
  worker are told that port through ``MANAGED_SFTP_PORT``).

The tests reach it only as its users do: staff through Chromium (Playwright), partners
through OpenSSH ``sftp``, ``gpg`` and HTTP. Nothing here touches the test process's own
database, so these tests need no ``db`` fixture and run under pytest-xdist: every stack
has its own folder and ports.

Helpers: `Shots` numbers the screenshots of a test (``test-output/e2e/<test>/NN-step.png``),
`sftp_batch` drives OpenSSH ``sftp`` with a key, `gpg_decrypt` decrypts with the ``gpg`` CLI
in a throw-away home.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# OpenSSH client options shared with the managed-server tests.
from tests.support.sftpd import SFTP_OPTIONS

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
ADMIN_USERNAME = "staff"
START_TIMEOUT = 90.0  # seconds; this machine is small and often busy


def free_port() -> int:
    """A port nothing listens on right now (tiny race before the server binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, on_fail=None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_fail() if on_fail else ""
            raise AssertionError(f"{what}: not within {timeout:g} s\n{detail}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- processes


class Process:
    """One server process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = self.argv
        if shutil.which("setpriv"):
            # If pytest dies without its teardown (CI timeout), the server must not outlive it.
            argv = ["setpriv", "--pdeathsig", "TERM", *argv]
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return f"----- {self.name} ({self.log}) -----\n{self.output()[-chars:]}"

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        def seen() -> bool:
            if not self.running:
                raise AssertionError(f"{self.name} exited at start\n{self.tail()}")
            return text in self.output()

        wait_until(seen, timeout, f"{self.name} printing {text!r}", self.tail)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait()
        # The worker's pool children: whatever is left of this process group.
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass


class Stack:
    """web + Celery worker + runsftpd on one database; see the module docstring.

    The database is a SQLite file in the stack's folder, or, when the caller's
    ``DATABASE_URL`` names PostgreSQL (the CI's second pass), a database of the stack's own
    on that server, created here and dropped at the end.
    """

    def __init__(self, base: Path) -> None:
        from cryptography.fernet import Fernet

        self.base = base
        self.var = base / "var"
        self.logs = base / "logs"
        self.var.mkdir(parents=True)
        self.logs.mkdir()
        self.sftp_root = self.var / "sftp"
        self.admin_password = "Staff-" + secrets.token_urlsafe(12)
        self.pg_server_url = ""  # set when the stack runs on PostgreSQL
        self.pg_database = ""
        # A clean environment: nothing of the caller's (a Redis broker, LOG_FORMAT, ...)
        # leaks in; every process gets the same secrets.
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(base)),
            "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "DJANGO_SETTINGS_MODULE": "lyticsops.settings",
            "DEBUG": "1",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "DATABASE_URL": self._database_url(),
            "VAR_DIR": str(self.var),
            "CELERY_BROKER_URL": "filesystem://",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "MANAGED_SFTP_HOST": "127.0.0.1",
            "MANAGED_SFTP_ROOT": str(self.sftp_root),
            "MANAGED_SFTP_HOST_KEY": str(self.var / "sftpd_host_key"),
            # A file must keep its size for this long before an import takes it (5 s by
            # default); shorter keeps the test quick, and a run still shows "running".
            "IMPORT_STABILITY_SECONDS": "3",
            "SFTP_CONNECT_TIMEOUT": "10",
        }
        self.processes: list[Process] = []
        self._plan(attempt=1)

    def _database_url(self) -> str:
        caller = os.environ.get("DATABASE_URL", "")
        if not caller.startswith(("postgres://", "postgresql://")):
            return f"sqlite:///{self.base / 'db.sqlite3'}"
        parts = urllib.parse.urlsplit(caller)
        self.pg_server_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
        self.pg_database = f"lyticsops_e2e_{secrets.token_hex(6)}"
        return urllib.parse.urlunsplit(parts._replace(path=f"/{self.pg_database}"))

    def _pg_admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.pg_server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    def _plan(self, attempt: int) -> None:
        """Ports and command lines; each attempt picks new ports (one may have been taken)."""
        self.web_port = free_port()
        self.sftp_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.env["MANAGED_SFTP_PORT"] = str(self.sftp_port)
        python = sys.executable
        manage = [python, str(ROOT / "manage.py")]
        celery = [python, "-m", "celery", "-A", "lyticsops", "worker", "--pool=prefork"]
        celery += ["--concurrency=1", "--without-gossip", "--without-mingle"]
        celery += ["--without-heartbeat", "--loglevel=INFO", "--hostname", f"e2e-{attempt}@%h"]
        commands = {
            "web": [*manage, "runserver", f"127.0.0.1:{self.web_port}", "--noreload"],
            "worker": celery,
            "sftpd": [*manage, "runsftpd", "--host", "127.0.0.1", "--port", str(self.sftp_port)],
        }
        self.processes = [
            Process(name, argv, self.env, self.logs / f"{name}-{attempt}.log")
            for name, argv in commands.items()
        ]

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self.pg_database:
            self._pg_admin(f'CREATE DATABASE "{self.pg_database}"')
        self.manage("migrate", "--no-input", "-v", "0")
        self.manage(
            "createsuperuser",
            "--no-input",
            "--username",
            ADMIN_USERNAME,
            "--email",
            "staff@example.com",
            extra_env={"DJANGO_SUPERUSER_PASSWORD": self.admin_password},
        )
        for attempt in (1, 2):
            if attempt > 1:
                self._plan(attempt)
            try:
                self._start_processes()
                return
            except AssertionError:
                self.stop_processes()
                if attempt == 2:
                    raise

    def _start_processes(self) -> None:
        for process in self.processes:
            process.start()
        self.process("sftpd").wait_for_output("Managed SFTP server listening on")
        self.process("worker").wait_for_output("ready.")
        wait_until(self._web_answers, START_TIMEOUT, "web answering", self.tails)

    def stop_processes(self) -> None:
        for process in self.processes:
            process.stop()

    def stop(self) -> None:
        self.stop_processes()
        if self.pg_database:
            try:
                self._pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
            except Exception as exc:  # never hide the test's own outcome behind this
                print(f"could not drop the e2e database {self.pg_database}: {exc}")

    def manage(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def _web_answers(self) -> bool:
        web = self.process("web")
        if not web.running:
            raise AssertionError(f"web exited at start\n{web.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/admin/login/", timeout=5) as response:  # noqa: S310
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def check_running(self) -> None:
        dead = [p.name for p in self.processes if not p.running]
        if dead:
            raise AssertionError(f"stopped unexpectedly: {', '.join(dead)}\n{self.tails()}")

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def output(self) -> str:
        return "\n".join(p.output() for p in self.processes)

    # -- what partners do ---------------------------------------------------------------
    def sftp(self, username: str, key: Path, commands: str) -> subprocess.CompletedProcess:
        """OpenSSH ``sftp`` in batch mode against our runsftpd, logging in with ``key``."""
        return sftp_batch(self.sftp_port, username, key, commands)

    def http(
        self,
        method: str,
        path: str,
        *,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """An HTTP call as a partner's machine makes it (no browser, no cookies)."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            self.url + path, data=data, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


# --------------------------------------------------------------------------- partner tools


def sftp_batch(
    port: int, username: str, key: Path, commands: str, *, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``commands`` (one a line) with OpenSSH ``sftp -b -`` as ``username``."""
    argv = ["sftp", "-P", str(port), *SFTP_OPTIONS, "-o", f"IdentityFile={key}"]
    argv += ["-b", "-", f"{username}@127.0.0.1"]
    return subprocess.run(argv, input=commands, capture_output=True, text=True, timeout=60, cwd=cwd)


def gpg_decrypt(data: bytes, secret_key: str, passphrase: str = "") -> bytes:
    """Decrypt with the ``gpg`` CLI in a throw-away home holding only ``secret_key``."""
    home = tempfile.mkdtemp(prefix="e2e-gpg", dir="/tmp")  # short: gpg-agent socket path
    base = ["gpg", "--homedir", home, "--batch", "--no-tty", "--pinentry-mode", "loopback"]
    try:
        subprocess.run(
            [*base, "--import"], input=secret_key.encode(), check=True, capture_output=True
        )
        done = subprocess.run(
            [*base, "--passphrase", passphrase, "--decrypt"],
            input=data,
            capture_output=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(f"gpg --decrypt failed: {done.stderr.decode()}")
        return done.stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def secret_fragments(*secrets_: str) -> list[str]:
    """What must never appear in a page: each one-line secret, and every long line of each
    multi-line one (the base64 body of a key: header lines are public knowledge)."""
    found = []
    for value in secrets_:
        lines = [line.strip() for line in value.strip().splitlines()]
        if len(lines) == 1:
            found.append(lines[0])
            continue
        found += [line for line in lines if len(line) >= 16 and not line.startswith("-----")]
    return [fragment for fragment in found if fragment]


# --------------------------------------------------------------------------- screenshots


class Shots:
    """``shots(page, "log-in")`` saves ``test-output/e2e/<test>/NN-log-in.png``."""

    def __init__(self, test_name: str) -> None:
        self.folder = OUTPUT / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        if self.folder.exists():
            for old in self.folder.glob("*.png"):
                old.unlink()  # screenshots of an earlier run would mislead
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def __call__(self, page: Any, step: str) -> Path:
        self.count += 1
        slug = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")
        path = self.folder / f"{self.count:02d}-{slug}.png"
        page.screenshot(path=str(path), full_page=True)
        return path
