"""Real PGP keys for tests, generated with the gpg binary at test time.

Nothing is checked in: a throw-away GNUPGHOME is used as a key factory and deleted afterwards.
Algorithms are fast (ed25519/cv25519; one rsa2048), and protected keys use a low S2K count so
unlocking them takes milliseconds instead of a second.

Usage from a test module::

    from tests.support.gpgkeys import KeySet, generated_keys

    @pytest.fixture(scope="session")
    def keys() -> Iterator[KeySet]:
        with generated_keys() as key_set:
            yield key_set

or use the ``gpg_keys`` / ``key_factory`` session fixtures defined here (import them into the
test module or a conftest).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

PASSPHRASE = "correct horse battery staple"
FAST_S2K_COUNT = "65536"  # the minimum; gpg's default makes every unlock cost ~1 s


@dataclass(frozen=True)
class GeneratedKey:
    """One generated key pair, ASCII-armoured."""

    uid: str
    fingerprint: str
    public: str
    secret: str
    passphrase: str | None = None


@dataclass(frozen=True)
class KeySet:
    plain: GeneratedKey  # ed25519 + cv25519 encryption subkey, no passphrase
    other: GeneratedKey  # a second unprotected key pair (the "wrong key")
    protected: GeneratedKey  # passphrase-protected (PASSPHRASE)
    expiring: GeneratedKey  # valid, expires in about two years
    expired: GeneratedKey  # created in 2020 with a one-day lifetime
    revoked: GeneratedKey  # revoked with its own revocation certificate
    sign_only: GeneratedKey  # ed25519 primary, no encryption subkey
    rsa: GeneratedKey  # rsa2048 with an rsa2048 encryption subkey


class KeyFactory:
    """Generates keys in its own throw-away GNUPGHOME (call ``close()`` when done)."""

    def __init__(self, gpg: str | None = None) -> None:
        self.gpg = gpg or shutil.which("gpg") or "gpg"
        self.home = tempfile.mkdtemp(prefix="gk", dir="/tmp")  # short: agent socket path
        with open(os.path.join(self.home, "gpg-agent.conf"), "w") as conf:
            conf.write(f"s2k-count {FAST_S2K_COUNT}\n")

    def run(self, *args: str, passphrase: str = "", stdin: bytes = b"") -> str:
        """Run gpg in the factory home (test code: the passphrase may appear in argv)."""
        argv = [self.gpg, "--homedir", self.home, "--batch", "--no-tty", "--yes"]
        argv += ["--pinentry-mode", "loopback", "--passphrase", passphrase]
        argv += ["--s2k-count", FAST_S2K_COUNT, "--status-fd", "1", *args]
        done = subprocess.run(argv, input=stdin, capture_output=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} failed: {done.stderr.decode()}")
        return done.stdout.decode()

    def run_bytes(self, *args: str, stdin: bytes = b"", passphrase: str = "") -> bytes:
        argv = [self.gpg, "--homedir", self.home, "--batch", "--no-tty", "--yes"]
        argv += ["--pinentry-mode", "loopback", "--passphrase", passphrase, *args]
        done = subprocess.run(argv, input=stdin, capture_output=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} failed: {done.stderr.decode()}")
        return done.stdout

    def generate(
        self,
        uid: str,
        *,
        passphrase: str | None = None,
        algo: str = "ed25519",
        encrypt_algo: str | None = "cv25519",
        expire: str = "never",
        faked_time: str | None = None,
    ) -> GeneratedKey:
        """Primary key ``algo`` (sign) plus, unless ``encrypt_algo`` is None, an encryption
        subkey. ``faked_time`` (e.g. "20200101T000000") creates the key in the past."""
        extra = ["--faked-system-time", faked_time] if faked_time else []
        pw = passphrase or ""
        out = self.run(*extra, "--quick-gen-key", uid, algo, "sign", expire, passphrase=pw)
        fingerprint = _created_fingerprint(out)
        if encrypt_algo:
            args = [*extra, "--quick-add-key", fingerprint, encrypt_algo, "encr", expire]
            self.run(*args, passphrase=pw)
        return self.export(uid, fingerprint, passphrase)

    def export(self, uid: str, fingerprint: str, passphrase: str | None) -> GeneratedKey:
        public = self.run("--armor", "--export", fingerprint)
        secret = self.run(
            "--armor", "--export-secret-keys", fingerprint, passphrase=passphrase or ""
        )
        return GeneratedKey(uid, fingerprint, _armor(public), _armor(secret), passphrase)

    def export_secret_subkeys(self, key: GeneratedKey) -> str:
        """The private key without the primary's secret (an "offline primary" setup)."""
        args = ["--armor", "--export-secret-subkeys", key.fingerprint]
        return _armor(self.run(*args, passphrase=key.passphrase or ""))

    def revoke(self, key: GeneratedKey) -> GeneratedKey:
        """Revoke ``key`` with the certificate gpg stored at generation time."""
        path = os.path.join(self.home, "openpgp-revocs.d", f"{key.fingerprint}.rev")
        with open(path) as cert_file:
            # gpg prefixes the armour with ':' so the file cannot be imported by accident.
            cert = cert_file.read().replace(":-----BEGIN PGP", "-----BEGIN PGP")
        self.run("--import", stdin=cert.encode())
        return self.export(key.uid, key.fingerprint, key.passphrase)

    def encrypt_symmetric(self, data: bytes, passphrase: str) -> bytes:
        return self.run_bytes("--symmetric", stdin=data, passphrase=passphrase)

    def sign_and_encrypt(self, data: bytes, signer: GeneratedKey, recipient: str) -> bytes:
        args = ["--trust-model", "always", "--local-user", signer.fingerprint]
        args += ["--recipient", recipient, "--sign", "--encrypt"]
        return self.run_bytes(*args, stdin=data, passphrase=signer.passphrase or "")

    def store(self, data: bytes) -> bytes:
        """An OpenPGP literal-data packet: valid PGP, but not encrypted."""
        return self.run_bytes("--store", "--compress-algo", "none", stdin=data)

    def close(self) -> None:
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            subprocess.run([gpgconf, "--homedir", self.home, "--kill", "all"], check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def _created_fingerprint(status_output: str) -> str:
    for line in status_output.splitlines():
        if line.startswith("[GNUPG:] KEY_CREATED "):
            return line.split()[3]
    raise RuntimeError(f"gpg did not report a created key: {status_output!r}")


def _armor(text: str) -> str:
    # --status-fd 1 interleaves status lines with the armoured export on stdout.
    return "".join(line for line in text.splitlines(True) if not line.startswith("[GNUPG:]"))


def make_key_set(factory: KeyFactory) -> KeySet:
    revoked = factory.generate("Revoked Partner <revoked@example.com>")
    return KeySet(
        plain=factory.generate("Plain Partner <plain@example.com>"),
        other=factory.generate("Other Partner <other@example.com>"),
        protected=factory.generate("Protected <protected@example.com>", passphrase=PASSPHRASE),
        expiring=factory.generate("Expiring <expiring@example.com>", expire="2y"),
        expired=factory.generate(
            "Expired <expired@example.com>", expire="1d", faked_time="20200101T000000"
        ),
        revoked=factory.revoke(revoked),
        sign_only=factory.generate("Sign Only <sign@example.com>", encrypt_algo=None),
        rsa=factory.generate(
            "RSA Partner <rsa@example.com>", algo="rsa2048", encrypt_algo="rsa2048"
        ),
    )


@contextmanager
def generated_keys() -> Iterator[KeySet]:
    factory = KeyFactory()
    try:
        yield make_key_set(factory)
    finally:
        factory.close()


@pytest.fixture(scope="session")
def key_factory() -> Iterator[KeyFactory]:
    factory = KeyFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def gpg_keys(key_factory: KeyFactory) -> KeySet:
    return make_key_set(key_factory)
