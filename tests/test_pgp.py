"""transfers.pgp against the real gpg binary, with keys generated at test time."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.support.gpgkeys import PASSPHRASE, KeyFactory, KeySet
from transfers import pgp

MiB = 1024 * 1024

# --------------------------------------------------------------------------- helpers


def encrypt(data: bytes, public_key: str, armor: bool = False) -> bytes:
    out = io.BytesIO()
    pgp.encrypt_stream(io.BytesIO(data), out, public_key, armor=armor)
    return out.getvalue()


def decrypt(data: bytes, private_key: str, passphrase: str | None = None) -> bytes:
    out = io.BytesIO()
    pgp.decrypt_stream(io.BytesIO(data), out, private_key, passphrase)
    return out.getvalue()


class Untouchable(io.RawIOBase):
    """A source that must not be read (key validation happens first)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        raise AssertionError("src was read although the key is unusable")


class FailingSource(io.RawIOBase):
    """Yields ``good`` bytes, then fails like a dropped network connection."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = self._good.readinto(buffer)
        if not count:
            raise ConnectionResetError("connection dropped")
        return count


class FailingSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        raise OSError(28, "disk full")


@pytest.fixture
def homes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every temp dir pgp creates (its throw-away GNUPGHOMEs)."""
    created: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*args: object, **kwargs: object) -> str:
        path = real_mkdtemp(*args, **kwargs)  # type: ignore[call-overload]
        created.append(path)
        return path

    monkeypatch.setattr(pgp.tempfile, "mkdtemp", spy)
    return created


def live_processes() -> Iterator[tuple[int, bytes, bytes]]:
    """(pid, cmdline, environ) of every process we may inspect."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue  # gone, or not ours
        yield int(entry), cmdline, environ


# --------------------------------------------------------------------------- public keys


def test_public_key_details(gpg_keys: KeySet) -> None:
    info = pgp.inspect_public_key(gpg_keys.plain.public)
    assert info.fingerprint == gpg_keys.plain.fingerprint
    assert info.user_ids == ["Plain Partner <plain@example.com>"]
    assert info.algorithm == "ed25519/cv25519"
    assert info.length == 255
    assert info.created is not None and info.created.tzinfo is not None
    assert abs(dt.datetime.now(dt.UTC) - info.created) < dt.timedelta(hours=1)
    assert info.expires is None
    assert info.can_encrypt and not info.is_secret


def test_public_key_expiry_reported(gpg_keys: KeySet) -> None:
    info = pgp.inspect_public_key(gpg_keys.expiring.public)
    assert info.expires is not None and info.expires.utcoffset() == dt.timedelta(0)
    assert dt.timedelta(days=700) < info.expires - dt.datetime.now(dt.UTC) < dt.timedelta(days=740)


def test_rsa_key_details(gpg_keys: KeySet) -> None:
    info = pgp.inspect_public_key(gpg_keys.rsa.public)
    assert (info.algorithm, info.length) == ("RSA", 2048)


def test_user_id_escapes_are_decoded(key_factory: KeyFactory) -> None:
    key = key_factory.generate("Zoë: Acme Corp <zoe@example.com>")
    assert pgp.inspect_public_key(key.public).user_ids == ["Zoë: Acme Corp <zoe@example.com>"]


def test_pasting_damage_is_tolerated(gpg_keys: KeySet) -> None:
    damaged = "\r\n".join("   " + line + "  " for line in gpg_keys.plain.public.splitlines())
    assert pgp.inspect_public_key("\n\n" + damaged).fingerprint == gpg_keys.plain.fingerprint


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello, this is not a key",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n",
    ],
)
def test_public_garbage(text: str) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_public_key(text)
    assert err.value.code == "garbage"


def test_public_message_is_not_a_key(gpg_keys: KeySet) -> None:
    message = encrypt(b"x", gpg_keys.plain.public, armor=True).decode()
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_public_key(message)
    assert err.value.code == "garbage"


@pytest.mark.parametrize("relabel", [False, True])
def test_private_key_refused_before_import(
    gpg_keys: KeySet, monkeypatch: pytest.MonkeyPatch, relabel: bool
) -> None:
    def no_import(*args: object) -> None:
        raise AssertionError("a private key reached gpg --import")

    monkeypatch.setattr(pgp, "_import", no_import)
    secret = gpg_keys.plain.secret
    if relabel:  # the armor label lies; the packets do not
        secret = secret.replace("PRIVATE KEY BLOCK", "PUBLIC KEY BLOCK")
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_public_key(secret)
    assert err.value.code == "private_given"
    assert "refused" in str(err.value) and "not been stored" in str(err.value)


def test_public_plus_private_block_is_refused(gpg_keys: KeySet) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_public_key(gpg_keys.plain.public + gpg_keys.plain.secret)
    assert err.value.code == "private_given"


def test_several_public_keys(gpg_keys: KeySet) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_public_key(gpg_keys.plain.public + gpg_keys.other.public)
    assert err.value.code == "several_keys"


@pytest.mark.parametrize(
    ("name", "code", "text"),
    [
        ("expired", "expired", "expired on 2020-01-02"),
        ("revoked", "revoked", "revoked"),
        ("sign_only", "no_encryption_subkey", "no valid encryption subkey"),
    ],
)
def test_unusable_public_keys(gpg_keys: KeySet, name: str, code: str, text: str) -> None:
    key = getattr(gpg_keys, name)
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_public_key(key.public)
    assert err.value.code == code
    assert text in str(err.value) and key.fingerprint in str(err.value)
    assert err.value.retryable is False


# --------------------------------------------------------------------------- private keys


def test_unprotected_private_key(gpg_keys: KeySet) -> None:
    info = pgp.inspect_private_key(gpg_keys.plain.secret, None)
    assert info.fingerprint == gpg_keys.plain.fingerprint
    assert info.is_secret and info.can_encrypt
    assert info.user_ids == ["Plain Partner <plain@example.com>"]
    # A passphrase given for an unprotected key is harmless.
    assert pgp.inspect_private_key(gpg_keys.plain.secret, "whatever").is_secret


def test_protected_private_key(gpg_keys: KeySet) -> None:
    info = pgp.inspect_private_key(gpg_keys.protected.secret, PASSPHRASE)
    assert info.fingerprint == gpg_keys.protected.fingerprint


@pytest.mark.parametrize("passphrase", [None, ""])
def test_passphrase_required(gpg_keys: KeySet, passphrase: str | None) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_private_key(gpg_keys.protected.secret, passphrase)
    assert err.value.code == "passphrase_required"


def test_bad_passphrase(gpg_keys: KeySet) -> None:
    wrong = "not the passphrase 7f3a"
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_private_key(gpg_keys.protected.secret, wrong)
    assert err.value.code == "bad_passphrase"
    assert wrong not in str(err.value) and PASSPHRASE not in str(err.value)


def test_public_given_for_private(gpg_keys: KeySet) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_private_key(gpg_keys.plain.public, None)
    assert err.value.code == "public_given"


def test_private_garbage() -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_private_key("-----BEGIN PGP PRIVATE KEY BLOCK-----\nnope\n", None)
    assert err.value.code == "garbage"


def test_several_private_keys(gpg_keys: KeySet) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_private_key(gpg_keys.plain.secret + gpg_keys.other.secret, None)
    assert err.value.code == "several_keys"


def test_same_key_public_and_private_is_one_key(gpg_keys: KeySet) -> None:
    info = pgp.inspect_private_key(gpg_keys.plain.public + gpg_keys.plain.secret, None)
    assert info.fingerprint == gpg_keys.plain.fingerprint


def test_private_key_with_offline_primary(gpg_keys: KeySet, key_factory: KeyFactory) -> None:
    secret = key_factory.export_secret_subkeys(gpg_keys.plain)
    assert pgp.inspect_private_key(secret, None).fingerprint == gpg_keys.plain.fingerprint
    assert decrypt(encrypt(b"rows", gpg_keys.plain.public), secret) == b"rows"


@pytest.mark.parametrize(
    ("name", "code"),
    [("expired", "expired"), ("revoked", "revoked"), ("sign_only", "no_encryption_subkey")],
)
def test_unusable_private_keys(gpg_keys: KeySet, name: str, code: str) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.inspect_private_key(getattr(gpg_keys, name).secret, None)
    assert err.value.code == code


# --------------------------------------------------------------------------- round trips


def test_streaming_round_trip_multi_megabyte(gpg_keys: KeySet) -> None:
    plaintext = os.urandom(3 * MiB) + b"tail" * 100_000  # not a multiple of the chunk size
    ciphertext = encrypt(plaintext, gpg_keys.plain.public)
    assert pgp.looks_like_pgp(ciphertext[:64]) and plaintext[:4096] not in ciphertext
    assert decrypt(ciphertext, gpg_keys.plain.secret) == plaintext


def test_streaming_uses_bounded_memory(gpg_keys: KeySet, tmp_path: os.PathLike[str]) -> None:
    import tracemalloc

    source = os.path.join(tmp_path, "big.bin")
    with open(source, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(MiB))
    target = os.path.join(tmp_path, "big.gpg")
    tracemalloc.start()
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            pgp.encrypt_stream(src, dst, gpg_keys.plain.public)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * MiB, f"peak {peak / MiB:.1f} MiB for a 24 MiB file"
    with open(target, "rb") as src, open(os.path.join(tmp_path, "back"), "wb") as dst:
        pgp.decrypt_stream(src, dst, gpg_keys.plain.secret, None)
    assert os.path.getsize(os.path.join(tmp_path, "back")) == 24 * MiB


def test_armored_round_trip(gpg_keys: KeySet) -> None:
    armored = encrypt(b"hello partner\n", gpg_keys.rsa.public, armor=True)
    assert armored.startswith(b"-----BEGIN PGP MESSAGE-----")
    assert decrypt(armored, gpg_keys.rsa.secret) == b"hello partner\n"


def test_protected_key_round_trip(gpg_keys: KeySet) -> None:
    ciphertext = encrypt(b"secret rows", gpg_keys.protected.public)
    assert decrypt(ciphertext, gpg_keys.protected.secret, PASSPHRASE) == b"secret rows"


def test_open_encrypting_and_open_decrypted(gpg_keys: KeySet) -> None:
    rows = [f"{i},name {i},{i * 3.5}\n" for i in range(60_000)]  # ~1.5 MB of CSV
    out = io.BytesIO()
    with pgp.open_encrypting(out, gpg_keys.plain.public) as sink:
        text = io.TextIOWrapper(sink, encoding="utf-8", newline="")
        text.writelines(rows)
        text.flush()
        text.detach()
    with pgp.open_decrypted(io.BytesIO(out.getvalue()), gpg_keys.plain.secret, None) as plain:
        parsed = list(io.TextIOWrapper(plain, encoding="utf-8", newline=""))
    assert parsed == rows


def test_open_decrypted_drains_unread_rest(gpg_keys: KeySet) -> None:
    ciphertext = encrypt(os.urandom(2 * MiB), gpg_keys.plain.public)
    with pgp.open_decrypted(io.BytesIO(ciphertext), gpg_keys.plain.secret, None) as plain:
        assert len(plain.read(10)) == 10  # stop early: the rest is still checked


def test_signed_and_encrypted_by_unknown_signer(gpg_keys: KeySet, key_factory: KeyFactory) -> None:
    # We never have the partner's signing key; gpg would exit 2 if it tried to verify.
    message = key_factory.sign_and_encrypt(
        b"signed rows", gpg_keys.other, gpg_keys.plain.fingerprint
    )
    assert decrypt(message, gpg_keys.plain.secret) == b"signed rows"


def test_expired_key_still_decrypts_old_files(gpg_keys: KeySet, key_factory: KeyFactory) -> None:
    args = ["--faked-system-time", "20200101T120000", "--trust-model", "always"]
    args += ["--recipient", gpg_keys.expired.fingerprint, "--encrypt"]
    old = key_factory.run_bytes(*args, stdin=b"from 2020")
    assert decrypt(old, gpg_keys.expired.secret) == b"from 2020"


# --------------------------------------------------------------------------- encryption errors


@pytest.mark.parametrize(
    ("name", "code"),
    [("expired", "expired"), ("revoked", "revoked"), ("sign_only", "no_encryption_subkey")],
)
def test_encrypt_refuses_unusable_key_before_reading(
    gpg_keys: KeySet, name: str, code: str
) -> None:
    key = getattr(gpg_keys, name).public
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.encrypt_stream(Untouchable(), io.BytesIO(), key)
    assert err.value.code == code
    with pytest.raises(pgp.PgpKeyError) as err, pgp.open_encrypting(io.BytesIO(), key):
        raise AssertionError("block entered with an unusable key")
    assert err.value.code == code


def test_encrypt_refuses_private_key(gpg_keys: KeySet) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.encrypt_stream(Untouchable(), io.BytesIO(), gpg_keys.plain.secret)
    assert err.value.code == "private_given"


def test_encrypt_source_failure_propagates(gpg_keys: KeySet) -> None:
    with pytest.raises(ConnectionResetError):
        pgp.encrypt_stream(FailingSource(os.urandom(MiB)), io.BytesIO(), gpg_keys.plain.public)


def test_open_encrypting_destination_failure(gpg_keys: KeySet) -> None:
    started = time.monotonic()
    with pytest.raises(OSError, match="disk full"):
        with pgp.open_encrypting(FailingSink(), gpg_keys.plain.public) as sink:
            for _ in range(16):  # far more than the pipe buffers: gpg must be unblocked
                sink.write(os.urandom(MiB))
    assert time.monotonic() - started < 20


# --------------------------------------------------------------------------- decryption errors


def test_wrong_key(gpg_keys: KeySet) -> None:
    ciphertext = encrypt(b"for plain only", gpg_keys.plain.public)
    with pytest.raises(pgp.PgpDecryptError) as err:
        decrypt(ciphertext, gpg_keys.other.secret)
    assert err.value.code == "wrong_key"
    message = str(err.value)
    assert re.search(r"different key \(key id [0-9A-F]{16}\), not to ", message)
    assert gpg_keys.other.fingerprint in message
    assert err.value.retryable is False


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_ciphertext(gpg_keys: KeySet, cut: float) -> None:
    ciphertext = encrypt(os.urandom(MiB), gpg_keys.plain.public)
    with pytest.raises(pgp.PgpDecryptError) as err:
        decrypt(ciphertext[: int(len(ciphertext) * cut)], gpg_keys.plain.secret)
    assert err.value.code == "corrupt"
    assert "corrupt or truncated" in str(err.value).lower()


def test_flipped_bit(gpg_keys: KeySet) -> None:
    ciphertext = bytearray(encrypt(os.urandom(MiB), gpg_keys.plain.public))
    ciphertext[len(ciphertext) // 2] ^= 0x01
    with pytest.raises(pgp.PgpDecryptError) as err:
        decrypt(bytes(ciphertext), gpg_keys.plain.secret)
    assert err.value.code == "corrupt"


@pytest.mark.parametrize("data", [b"id,name\n1,Alice\n", b"", "Élan,1\n".encode()])
def test_plain_text_is_not_pgp(gpg_keys: KeySet, data: bytes) -> None:
    with pytest.raises(pgp.PgpDecryptError) as err:
        decrypt(data, gpg_keys.plain.secret)
    assert err.value.code == "not_pgp"
    assert "not PGP data" in str(err.value)


def test_unencrypted_pgp_data(gpg_keys: KeySet, key_factory: KeyFactory) -> None:
    with pytest.raises(pgp.PgpDecryptError) as err:
        decrypt(key_factory.store(b"a,b\n"), gpg_keys.plain.secret)
    assert err.value.code == "not_encrypted"


def test_password_encrypted_file_is_refused(gpg_keys: KeySet, key_factory: KeyFactory) -> None:
    # gpg would happily use our key passphrase as the message password.
    message = key_factory.encrypt_symmetric(b"x", PASSPHRASE)
    with pytest.raises(pgp.PgpDecryptError) as err:
        decrypt(message, gpg_keys.protected.secret, PASSPHRASE)
    assert err.value.code == "symmetric"


@pytest.mark.parametrize(
    ("passphrase", "code"), [("wrong one", "bad_passphrase"), (None, "passphrase_required")]
)
def test_decrypt_passphrase_errors(gpg_keys: KeySet, passphrase: str | None, code: str) -> None:
    ciphertext = encrypt(b"x", gpg_keys.protected.public)
    with pytest.raises(pgp.PgpDecryptError) as err:
        decrypt(ciphertext, gpg_keys.protected.secret, passphrase)
    assert err.value.code == code
    assert "wrong one" not in str(err.value) and PASSPHRASE not in str(err.value)


def test_decrypt_with_public_key(gpg_keys: KeySet) -> None:
    with pytest.raises(pgp.PgpKeyError) as err:
        pgp.decrypt_stream(Untouchable(), io.BytesIO(), gpg_keys.plain.public, None)
    assert err.value.code == "public_given"


def test_open_decrypted_raises_after_truncated_plaintext(gpg_keys: KeySet) -> None:
    ciphertext = encrypt(b"row\n" * 300_000, gpg_keys.plain.public)
    truncated = io.BytesIO(ciphertext[: len(ciphertext) // 2])
    with pytest.raises(pgp.PgpDecryptError) as err:
        with pgp.open_decrypted(truncated, gpg_keys.plain.secret, None) as plain:
            plain.read()
            raise ValueError("parser: unexpected end of file")
    assert err.value.code == "corrupt"
    assert isinstance(err.value.__context__, ValueError)


def test_open_decrypted_block_error_wins_on_good_data(gpg_keys: KeySet) -> None:
    ciphertext = encrypt(os.urandom(8 * MiB), gpg_keys.plain.public)
    started = time.monotonic()
    with pytest.raises(ValueError, match="bad row"):
        with pgp.open_decrypted(io.BytesIO(ciphertext), gpg_keys.plain.secret, None) as plain:
            plain.read(100)
            raise ValueError("bad row 1")
    assert time.monotonic() - started < 20


def test_decrypt_source_failure_propagates(gpg_keys: KeySet) -> None:
    ciphertext = encrypt(os.urandom(3 * MiB), gpg_keys.plain.public)
    with pytest.raises(ConnectionResetError):
        decrypt_src = FailingSource(ciphertext[: 2 * MiB])
        pgp.decrypt_stream(decrypt_src, io.BytesIO(), gpg_keys.plain.secret, None)


# --------------------------------------------------------------------------- sniffing


def test_looks_like_pgp_on_real_output(gpg_keys: KeySet, key_factory: KeyFactory) -> None:
    assert pgp.looks_like_pgp(encrypt(b"x", gpg_keys.plain.public)[:16])
    assert pgp.looks_like_pgp(encrypt(b"x", gpg_keys.plain.public, armor=True)[:64])
    assert pgp.looks_like_pgp(key_factory.encrypt_symmetric(b"x", "pw")[:16])
    assert pgp.looks_like_pgp(key_factory.store(b"x")[:16])


@pytest.mark.parametrize(
    "head",
    [
        b"\xef\xbb\xbf\r\n  -----BEGIN PGP MESSAGE-----\n",  # BOM and blank lines first
        bytes([0x85, 0x01, 0x0C, 0x03]),  # old-format PKESK, 2-octet length, version 3
        bytes([0xC1, 0x5E, 0x03]),  # new-format PKESK, version 3
        bytes([0xD2, 0xE0, 0x01]),  # new-format SEIPD with a partial body length
        bytes([0xA8, 0x03, 0x50, 0x47, 0x50]),  # marker packet "PGP"
        b"\xc1",  # header only: too short to check more
    ],
)
def test_looks_like_pgp_yes(head: bytes) -> None:
    assert pgp.looks_like_pgp(head)


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"id,name\n1,Alice\n",
        "Élan,ça\n".encode(),  # 0xC3 is also a new-format SKESK header; body byte says no
        b"\x1f\x8b\x08\x00",  # gzip
        b"PK\x03\x04",  # zip / xlsx
        b"\xff\xfe\x00a",  # UTF-16 BOM
        b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n",  # a key, not a message
        bytes([0x99, 0x01, 0x0D, 0x04]),  # public key packet (tag 6)
    ],
)
def test_looks_like_pgp_no(head: bytes) -> None:
    assert not pgp.looks_like_pgp(head)


# --------------------------------------------------------------------------- hygiene


def test_passphrase_never_in_argv_or_environment(gpg_keys: KeySet) -> None:
    ciphertext = encrypt(os.urandom(4 * MiB), gpg_keys.protected.public)
    secret = PASSPHRASE.encode()
    with pgp.open_decrypted(io.BytesIO(ciphertext), gpg_keys.protected.secret, PASSPHRASE) as p:
        p.read(1)  # gpg is now running and blocked on its full stdout pipe
        seen = [(pid, cmd, env) for pid, cmd, env in live_processes() if b"--passphrase-fd" in cmd]
        assert seen, "the decrypting gpg process should be visible"
        for _, cmdline, environ in live_processes():
            assert secret not in cmdline and secret not in environ
        p.read()


def test_argv_carries_only_the_passphrase_fd() -> None:
    argv = pgp._passphrase_argv(7)
    assert argv == ["--pinentry-mode", "loopback", "--passphrase-fd", "7"]


def test_throwaway_home_is_removed_and_agent_stopped(gpg_keys: KeySet, homes: list[str]) -> None:
    pgp.inspect_private_key(gpg_keys.protected.secret, PASSPHRASE)  # starts a gpg-agent
    ciphertext = encrypt(b"x", gpg_keys.plain.public)
    with pytest.raises(pgp.PgpDecryptError):
        decrypt(ciphertext, gpg_keys.other.secret)
    with pytest.raises(pgp.PgpKeyError):
        pgp.inspect_public_key("garbage")
    assert len(homes) == 4
    for home in homes:
        assert len(home) < 20  # keeps the agent socket path short
        assert not os.path.exists(home)
        agents = [pid for pid, cmd, _ in live_processes() if home.encode() + b"\0" in cmd]
        assert not agents, f"gpg-agent for {home} still running"


def test_gpg_home_yields_python_gnupg(gpg_keys: KeySet) -> None:
    with pgp.gpg_home() as gpg:
        home = gpg.gnupghome
        assert os.stat(home).st_mode & 0o777 == 0o700
        assert gpg.import_keys(gpg_keys.plain.public).count == 1
        assert gpg.list_keys()[0]["fingerprint"] == gpg_keys.plain.fingerprint
    assert not os.path.exists(home)


def test_gpg_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    monkeypatch.delenv("GPG_BINARY", raising=False)
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    for call in (
        lambda: pgp.inspect_public_key("anything"),
        lambda: pgp.encrypt_stream(Untouchable(), io.BytesIO(), "anything"),
        lambda: pgp.decrypt_stream(Untouchable(), io.BytesIO(), "anything", None),
    ):
        with pytest.raises(pgp.GpgUnavailable, match="gpg is not installed"):
            call()
    assert pgp.GpgUnavailable.retryable is True


def test_gpg_binary_setting(monkeypatch: pytest.MonkeyPatch, gpg_keys: KeySet) -> None:
    monkeypatch.setenv("GPG_BINARY", "/nonexistent/gpg2")
    with pytest.raises(pgp.GpgUnavailable, match="'/nonexistent/gpg2'"):
        pgp.inspect_public_key(gpg_keys.plain.public)
    monkeypatch.setenv("GPG_BINARY", shutil.which("gpg") or "gpg")
    assert pgp.inspect_public_key(gpg_keys.plain.public).fingerprint == gpg_keys.plain.fingerprint
