"""Fixtures for the managed SFTP server (`sftpd`), plugged in with
``pytest_plugins = ["tests.support.sftpd"]``.

* ``sftpd`` - the server running in this process (threads) on 127.0.0.1 and a free port,
  with its root and host key under the test's tmp_path.
* ``make_sftp_account`` - creates a partner's managed SFTP account directly in the database
  (no `full_clean`, so these tests do not depend on the key/PGP validators).
* ``sftpd_key`` - a factory of Ed25519 key pairs made by the real ``ssh-keygen``.
* ``sftpd_tools`` - the helper functions below, for tests without a running server.

`RunningServer.run_sftp` / `.command` drive the real OpenSSH ``sftp`` client and
`RunningServer.connect` logs in with paramiko (password logins: sshpass is not installed).
Test modules reach the helpers through these fixtures instead of importing this module,
which pytest must import first (as a plugin) to rewrite its asserts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

SFTP_OPTIONS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "ConnectTimeout=10",
]


@dataclass
class RunningServer:
    server: object  # sftpd.server.SftpServer
    host: str
    port: int
    root: Path

    def home(self, username: str) -> Path:
        return self.root / username

    def flush(self) -> None:
        """Wait until the server's queued database work (audit events...) is written."""
        self.server.db.flush(timeout=10)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every client connection has ended and its database work is written.

        Call it before the test's own database work: the test database is an in-memory
        SQLite database, where a reader in one thread fails (instead of waiting) while
        another thread writes.
        """
        wait_for(lambda: self.server.connection_count == 0, timeout)
        self.flush()

    def audit(self, **filters) -> list:
        from sftpd.models import SftpAuditEvent

        self.settle()
        return list(SftpAuditEvent.objects.filter(**filters).order_by("created_at", "id"))

    def events(self, **filters) -> list[str]:
        return [event.event for event in self.audit(**filters)]

    def command(self, username: str, key: KeyPair, *extra: str) -> list[str]:
        return sftp_command(self.port, username, key, *extra)

    def run_sftp(self, username: str, key: KeyPair, commands: str, **kwargs):
        return run_sftp(self.port, username, key, commands, **kwargs)

    def connect(self, username: str, **credentials):
        return paramiko_sftp(self.port, username, **credentials)

    @staticmethod
    def wait_for(predicate: Callable[[], object], timeout: float = 10.0):
        return wait_for(predicate, timeout)

    @staticmethod
    def temp_uploads(folder: Path) -> list[str]:
        return temp_uploads_in(folder)

    @staticmethod
    def tree(folder: Path) -> dict[str, bytes | str]:
        return tree(folder)


@dataclass
class KeyPair:
    path: Path
    public_line: str
    pkey: paramiko.PKey


@pytest.fixture
def sftpd(settings, tmp_path, transactional_db) -> Iterator[RunningServer]:
    from sftpd.conf import load_config
    from sftpd.server import SftpServer

    settings.MANAGED_SFTP_ROOT = tmp_path / "sftp"
    settings.MANAGED_SFTP_HOST_KEY = tmp_path / "hostkey" / "ssh_host_key"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    server = SftpServer(load_config(host="127.0.0.1", port=0))
    host, port = server.start_background()
    try:
        yield RunningServer(server, host, port, Path(settings.MANAGED_SFTP_ROOT))
    finally:
        server.shutdown()


@pytest.fixture
def sftpd_tools() -> SimpleNamespace:
    return SimpleNamespace(
        wait_for=wait_for,
        free_port=free_port,
        sftp_command=sftp_command,
        run_sftp=run_sftp,
        paramiko_sftp=paramiko_sftp,
        temp_uploads_in=temp_uploads_in,
        tree=tree,
    )


@pytest.fixture
def make_sftp_account(transactional_db) -> Callable:
    from django.contrib.auth.hashers import make_password

    from authorizations.models import Authorization, Method, Partner

    def make(
        username: str = "acme_ftp",
        *,
        password: str | None = None,
        public_keys: str = "",
        partner: Partner | None = None,
        **fields,
    ) -> Authorization:
        if partner is None:
            partner, _ = Partner.objects.get_or_create(
                slug="acme-sftp", defaults={"name": "Acme SFTP"}
            )
        return Authorization.objects.create(
            partner=partner,
            method=Method.MANAGED_SFTP,
            label=f"Managed SFTP {username}",
            username=username,
            password_hash=make_password(password) if password else "",
            public_keys=public_keys,
            **fields,
        )

    return make


@pytest.fixture(scope="session")
def sftpd_key(tmp_path_factory) -> Callable[[str], KeyPair]:
    folder = tmp_path_factory.mktemp("sftpd-keys")
    made: dict[str, KeyPair] = {}

    def make(name: str = "partner") -> KeyPair:
        if name not in made:
            path = folder / name
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                check=True,
                capture_output=True,
            )
            line = path.with_suffix(".pub").read_text().strip()
            made[name] = KeyPair(path, line, paramiko.PKey.from_path(str(path)))
        return made[name]

    return make


def sftp_command(port: int, username: str, key: KeyPair, *extra: str) -> list[str]:
    return [
        "sftp",
        "-P",
        str(port),
        *SFTP_OPTIONS,
        "-o",
        f"IdentityFile={key.path}",
        *extra,
        f"{username}@127.0.0.1",
    ]


def run_sftp(
    port: int, username: str, key: KeyPair, commands: str, *, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run ``commands`` (one per line; a leading '-' lets a command fail) in batch mode."""
    return subprocess.run(
        [*sftp_command(port, username, key, "-b", "-")],
        input=commands,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ssh_client(
    port: int,
    username: str,
    *,
    password: str | None = None,
    pkey: paramiko.PKey | None = None,
) -> paramiko.SSHClient:
    """A paramiko client logged in to the test server (the caller closes it)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - test server
    try:
        client.connect(
            "127.0.0.1",
            port=port,
            username=username,
            password=password,
            pkey=pkey,
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
        )
    except BaseException:
        client.close()  # also after a refused login, like a real client giving up
        raise
    return client


@contextmanager
def paramiko_sftp(
    port: int,
    username: str,
    *,
    password: str | None = None,
    pkey: paramiko.PKey | None = None,
) -> Iterator[paramiko.SFTPClient]:
    client = ssh_client(port, username, password=password, pkey=pkey)
    try:
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        client.close()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def temp_uploads_in(folder: Path) -> list[str]:
    from sftpd.fs import TEMP_RE

    return sorted(name for name in os.listdir(folder) if TEMP_RE.match(name))


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every path under ``folder`` with its content (files) or link target (symlinks)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = "dir"
    return found
