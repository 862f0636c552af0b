"""Helpers for export tests: profiles, a partner on a real sshd, and the partner's side
(OpenSSH ``sftp`` to fetch, the ``gpg`` command line to decrypt), all real programs."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the sshd/gpgkeys modules are pytest plugins: let pytest import them
    from tests.support.gpgkeys import GeneratedKey
    from tests.support.sshd import KeyPair, Sshd


def make_profiles(rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
    from profiles.models import Profile

    Profile.objects.bulk_create(
        Profile(identity=identity, attributes=attributes) for identity, attributes in rows
    )


def sftp_authorization(partner, server: Sshd, key: KeyPair, *, public_key: str | None = None):
    """An authorization to ``server``; with ``public_key``, exports are encrypted to it."""
    from authorizations.models import Authorization, Method

    method = Method.SFTP_CLIENT_PGP_PUBLIC if public_key else Method.SFTP_CLIENT
    return Authorization.objects.create(
        partner=partner,
        label=f"{partner.name} SFTP",
        method=method,
        host=server.host,
        port=server.port,
        username=server.user,
        private_key=key.private,
        pgp_public_key=public_key or "",
    )


@dataclass
class Partner:
    """The partner's side of the exchange, with the programs a partner would use."""

    server: Sshd
    key: KeyPair
    workdir: Path

    def fetch(self, remote_name: str) -> bytes:
        """Download with the OpenSSH ``sftp`` command line (batch mode)."""
        local = self.workdir / f"fetched-{len(os.listdir(self.workdir))}"
        batch = self.workdir / "batch"
        batch.write_text(f'get "{remote_name}" "{local}"\n')
        subprocess.run(
            [
                "sftp",
                "-b",
                str(batch),
                "-P",
                str(self.server.port),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-i",
                str(self.key.path),
                f"{self.server.user}@{self.server.host}",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return local.read_bytes()

    def files(self, folder: str = "") -> list[str]:
        """Names in the folder, read straight from the server's disk (same machine)."""
        return sorted(os.listdir(self.server.data_dir / folder))


def gpg_decrypt(data: bytes, secret: GeneratedKey) -> bytes:
    """Decrypt with the gpg command line in a GNUPGHOME of our own, as the partner would."""
    home = tempfile.mkdtemp(prefix="gx", dir="/tmp")  # short: gpg-agent socket path
    base = ["gpg", "--homedir", home, "--batch", "--no-tty", "--pinentry-mode", "loopback"]
    base += ["--passphrase", secret.passphrase or ""]
    try:
        subprocess.run(
            [*base, "--import"],
            input=secret.secret.encode(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        done = subprocess.run(
            [*base, "--decrypt"], input=data, check=True, capture_output=True, timeout=120
        )
        return done.stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def is_pgp_message(data: bytes) -> bool:
    """Binary OpenPGP starting with a public-key encrypted session key packet."""
    return bool(data) and data[0] in (0x84, 0x85, 0xC1)


def parse_csv(data: bytes, delimiter: str = ",") -> list[list[str]]:
    text = data.decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]


def gunzip(data: bytes) -> bytes:
    return gzip.decompress(data)
