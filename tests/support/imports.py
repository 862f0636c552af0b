"""Fixtures for import tests: a real OpenSSH sshd with a partner folder, a job, helpers.

Use from a test module with ``from tests.support.imports import *`` (it re-exports the
sshd and gpg key fixtures it builds on).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from authorizations.models import Authorization, Method, Partner
from tests.support.gpgkeys import GeneratedKey, KeyFactory, KeySet, gpg_keys, key_factory
from tests.support.sshd import KeyMaker, KeyPair, Sshd, ssh_keypair, sshd
from transfers import pgp
from transfers.models import ImportJob, Run

__all__ = [
    "GeneratedKey",
    "ImportEnv",
    "KeyFactory",
    "KeySet",
    "csv_bytes",
    "encrypt",
    "gpg_keys",
    "gzip_bytes",
    "import_env",
    "key_factory",
    "sftp_key",
    "ssh_keypair",
    "sshd",
    "zip_bytes",
]


def csv_bytes(rows: list[list[Any]], header: list[str] | None = None, sep: str = ",") -> bytes:
    lines = ([header] if header else []) + rows
    return "".join(sep.join(str(c) for c in row) + "\n" for row in lines).encode()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def encrypt(data: bytes, key: GeneratedKey, armor: bool = False) -> bytes:
    out = io.BytesIO()
    pgp.encrypt_stream(io.BytesIO(data), out, key.public, armor=armor)
    return out.getvalue()


@dataclass
class ImportEnv:
    """One partner, an SFTP authorization on a real sshd, and an import job on its folder."""

    server: Sshd
    partner: Partner
    authz: Authorization
    job: ImportJob
    folder: Path
    runs: list[Run] = field(default_factory=list)
    _clock: float = 1_700_000_000.0

    def put(self, name: str, data: bytes, mtime: float | None = None) -> Path:
        """Write a file in the partner's folder; each file is 60 s newer than the last."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mtime is None:
            self._clock += 60
            mtime = self._clock
        os.utime(path, (mtime, mtime))
        return path

    def files(self) -> list[str]:
        return sorted(
            str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file()
        )

    def configure(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.job, name, value)
        self.job.save()

    def use_pgp(self, key: GeneratedKey | None) -> None:
        """Give the authorization a PGP private key (None removes it)."""
        authz = self.authz
        authz.method = Method.SFTP_CLIENT_PGP_PRIVATE if key else Method.SFTP_CLIENT
        authz.pgp_private_key = key.secret if key else ""
        authz.pgp_passphrase = (key.passphrase or "") if key else ""
        authz.save()

    def run(self) -> Run:
        from transfers.imports import run_import

        run = Run.objects.create(kind=Run.Kind.IMPORT, partner=self.partner, import_job=self.job)
        run_import(run)
        run.refresh_from_db()
        self.runs.append(run)
        return run

    @staticmethod
    def profiles() -> dict[str, dict[str, Any]]:
        from profiles.models import Profile

        return {p.identity: p.attributes for p in Profile.objects.all()}


def sftp_key(ssh_keypair: KeyMaker, server: Sshd) -> KeyPair:
    key = ssh_keypair()
    server.authorize(key.public)
    return key


@pytest.fixture
def import_env(db: Any, sshd: Sshd, ssh_keypair: KeyMaker, partner: Partner, settings: Any):
    settings.IMPORT_STABILITY_SECONDS = 0
    settings.IMPORT_PROGRESS_INTERVAL = 0
    key = sftp_key(ssh_keypair, sshd)
    folder = sshd.data_dir / "inbox"
    folder.mkdir()
    authz = Authorization.objects.create(
        partner=partner,
        label="Acme SFTP",
        method=Method.SFTP_CLIENT,
        host=sshd.host,
        port=sshd.port,
        username=sshd.user,
        private_key=key.private,
        folder="inbox",
    )
    job = ImportJob.objects.create(
        partner=partner,
        authorization=authz,
        name="members",
        pattern="members*",
        identity_field="email",
    )
    return ImportEnv(server=sshd, partner=partner, authz=authz, job=job, folder=folder)


def dump_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
