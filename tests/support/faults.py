"""Fault injection for tests/test_faults.py: servers that crash or stall on cue, a Redis of
the test's own, a database a Celery worker subprocess shares with the test, a tiny tmpfs.

Everything listens on 127.0.0.1 on free ports and lives in the test's tmp dir, so tests run
side by side under pytest-xdist; every process started here is stopped by its owner's
``stop()`` (fixtures call it in teardown).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko

from tests.support.sshd import PasswordSftpServer, _Handle, _Sftp, free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


# --------------------------------------------------------------------------- SFTP server


class _GatedHandle(_Handle):
    """A file handle that stops at the server's gate (see `GatedSftpServer`)."""

    server: GatedSftpServer

    def read(self, offset: int, length: int) -> bytes | int:
        self.server.at_offset(offset + length)
        return super().read(offset, length)

    def write(self, offset: int, data: bytes) -> int:
        self.server.at_offset(offset + len(data))
        return super().write(offset, data)


class _GatedSftp(_Sftp):
    def session_started(self) -> None:
        with self._owner.lock:
            self._owner.sessions += 1

    def session_ended(self) -> None:  # no request of the session is handled after this
        with self._owner.lock:
            self._owner.sessions -= 1

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        handle = super().open(path, flags, attr)
        if isinstance(handle, _Handle):
            handle.__class__ = _GatedHandle  # same state, plus the gate
            handle.server = self._owner  # type: ignore[attr-defined]
        return handle


class GatedSftpServer(PasswordSftpServer):
    """The password SFTP server of tests.support.sshd, with faults on cue.

    * ``gate_at = N``: a read or write reaching past byte N of a file waits until
      `release()` (a server that stops sending bytes mid-transfer), or, with
      ``crash_after = S``, until the whole server crashes S seconds later (every
      connection dropped, listener closed; the client has consumed what it was sent by
      then). ``gate_reached`` is set when a transfer gets there.
    * `crash()` / `restart()`: the server dies and comes back on the same port with the
      same host key (a pinned fingerprint still matches).

    Requests are answered in order, and a client keeps a window of requests in flight
    (64 reads of 32 KiB for downloads, see `transfers.sftp`): a gate at ``2 MiB + N``
    is reached once the client has consumed about N bytes of the file.
    """

    sftp_handler = _GatedSftp

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.gate_at: int | None = None
        self.crash_after: float | None = None
        self.gate_reached = threading.Event()
        self._released = threading.Event()
        # SFTP sessions being served (a dead client's ends once its requests are handled).
        self.sessions = 0
        self.lock = threading.Lock()

    def at_offset(self, end: int) -> None:
        if self.gate_at is None or end <= self.gate_at:
            return
        self.gate_reached.set()
        if self.crash_after is not None:
            self.gate_at = None  # once restarted, it serves whole files
            threading.Timer(self.crash_after, self._crash_and_release).start()
        self._released.wait(timeout=120)  # bounded: a test that forgot never hangs

    def _crash_and_release(self) -> None:
        self.crash()
        self._released.set()  # the request that waited is answered into a dead connection

    def release(self) -> None:
        """Open the gate for good: transfers go on (and later ones pass)."""
        self.gate_at = None
        self._released.set()

    def crash(self) -> None:
        """Drop every connection and stop listening, as a killed server would."""
        self._stopping.set()
        self._listener.close()
        for transport in list(self._transports):
            with contextlib.suppress(Exception):
                transport.close()

    def restart(self) -> None:
        """Listen again on the same port (after `crash()`), same host key."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._transports = [t for t in self._transports if t.is_active()]
        self._listener = socket.create_server((self.host, self.port))  # SO_REUSEADDR
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="test-sftp")
        self._thread.start()

    def stop(self) -> None:
        self.release()
        super().stop()


class SilentServer:
    """Accepts TCP connections and never sends a byte (a hung SSH daemon)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="silent")
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(0.05)
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)  # held open, never answered

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self.accepted:
            conn.close()


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """A redis-server of the test's own on a free port (never the system Redis)."""

    def __init__(self, base: Path, *, appendfsync: str | None = None) -> None:
        """``appendfsync``: None (no persistence), or the append-only file's fsync policy
        (production runs ``everysec``; ``always`` survives even SIGKILL)."""
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.log = base / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.base),
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        if self.appendfsync:
            command += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            command += ["--appendonly", "no"]
        if shutil.which("setpriv"):  # never outlive a pytest killed before its teardown
            command = ["setpriv", "--pdeathsig", "KILL", *command]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
            )
        wait_until(self.ping, 15, f"redis-server on port {self.port}\n{self.tail()}")

    def ping(self) -> bool:
        import redis

        assert self.process is not None and self.process.poll() is None, self.tail()
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save (only what is on disk survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: Redis shuts down cleanly (and writes its append-only file out)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


# --------------------------------------------------------------------------- the database


class SharedDatabase:
    """A database that a worker subprocess (``url``) and this test (``alias``) both use.

    On PostgreSQL it is the test database itself (the test must be transactional, so the
    rows are committed for the worker and flushed afterwards); on SQLite, a copy of a
    migrated file (the test's own in-memory database is invisible to other processes).
    """

    def __init__(self, alias: str, url: str, settings: dict[str, Any]) -> None:
        self.alias, self.url, self.settings = alias, url, settings

    @classmethod
    def for_test(cls, alias: str, template: Path | None, tmp_path: Path) -> SharedDatabase:
        from django.db import connections

        default = connections["default"].settings_dict  # the test database's, once set up
        if default["ENGINE"].endswith("postgresql"):
            assert default["NAME"].startswith("test_"), "not a test database"
            conf = {**default}
            user, host = default.get("USER") or "postgres", default.get("HOST") or "127.0.0.1"
            auth = f"{user}:{default['PASSWORD']}" if default.get("PASSWORD") else user
            port = default.get("PORT") or 5432
            url = f"postgres://{auth}@{host}:{port}/{default['NAME']}"
        else:
            assert template is not None
            path = tmp_path / "shared.sqlite3"
            shutil.copyfile(template, path)
            conf = {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(path),
                "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
            }
            url = f"sqlite:///{path}"
        filled = connections.configure_settings({"default": default, alias: conf})[alias]
        connections.settings[alias] = filled
        return cls(alias, url, filled)

    @property
    def vendor(self) -> str:
        return "postgresql" if self.url.startswith("postgres") else "sqlite"

    def close(self) -> None:
        from django.db import connections

        connections[self.alias].close()
        del connections.settings[self.alias]
        with contextlib.suppress(AttributeError):
            delattr(connections._connections, self.alias)

    def in_write_transaction(self) -> bool:
        """Whether another process holds a write transaction open (and, on PostgreSQL,
        has written in it) right now."""
        if self.vendor == "sqlite":
            probe = sqlite3.connect(self.settings["NAME"], timeout=0)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.rollback()
                return False
            except sqlite3.OperationalError as exc:
                return "locked" in str(exc)
            finally:
                probe.close()
        from django.db import connections

        with connections[self.alias].cursor() as cursor:
            # An open transaction that has written something (it has a transaction id).
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND backend_xid IS NOT NULL "
                "AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0] > 0


def migrated_sqlite(path: Path, env: dict[str, str]) -> Path:
    """A migrated SQLite file (copied by each test that needs a fresh database)."""
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": f"sqlite:///{path}"},
        check=True,
        timeout=300,
    )
    return path


# --------------------------------------------------------------------------- tmpfs


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``where``; raises OSError if mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        raise OSError("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise OSError(f"mount -t tmpfs failed: {done.stderr.strip()}")
    try:
        yield where
    finally:
        umount = shutil.which("umount") or "umount"
        done = subprocess.run([umount, str(where)], capture_output=True, timeout=30, check=False)
        if done.returncode != 0:  # still busy: detach now, freed when the last user goes
            subprocess.run([umount, "-l", str(where)], capture_output=True, timeout=30)
