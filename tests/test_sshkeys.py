"""transfers.sshkeys against keys made by the real ssh-keygen / puttygen."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from transfers.sshkeys import (
    SshKeyError,
    fingerprint_of,
    generate_keypair,
    load_private_key,
    parse_public_key,
    parse_public_keys,
)

if TYPE_CHECKING:  # imported by pytest_plugins; importing it here would defeat rewriting
    from tests.support.sshd import KeyMaker, KeyPair


PASSPHRASE = "open sesame"


@pytest.fixture(scope="module")
def ed_key(ssh_keypair: KeyMaker) -> KeyPair:
    return ssh_keypair("ed25519")


@pytest.fixture(scope="module")
def ed_key_encrypted(ssh_keypair: KeyMaker) -> KeyPair:
    return ssh_keypair("ed25519", passphrase=PASSPHRASE)


@pytest.fixture(scope="module")
def rsa_key(ssh_keypair: KeyMaker) -> KeyPair:
    return ssh_keypair("rsa", bits=2048, fmt="PEM")


def _code(func, *args) -> SshKeyError:
    with pytest.raises(SshKeyError) as info:
        func(*args)
    return info.value


# ---------------------------------------------------------------- private keys: accepted


@pytest.mark.parametrize(
    ("kind", "bits", "fmt", "key_type"),
    [
        ("ed25519", None, None, "ssh-ed25519"),
        ("rsa", 2048, None, "ssh-rsa"),
        ("rsa", 3072, "PEM", "ssh-rsa"),
        ("rsa", 2048, "PKCS8", "ssh-rsa"),
        ("ecdsa", 256, None, "ecdsa-sha2-nistp256"),
        ("ecdsa", 384, "PEM", "ecdsa-sha2-nistp384"),
        ("ecdsa", 521, "PKCS8", "ecdsa-sha2-nistp521"),
    ],
)
def test_loads_formats_written_by_ssh_keygen(ssh_keypair, kind, bits, fmt, key_type):
    pair = ssh_keypair(kind, bits=bits, fmt=fmt)
    loaded = load_private_key(pair.private, None)
    assert loaded.key_type == key_type
    assert loaded.fingerprint == pair.fingerprint  # same as ssh-keygen -lf
    assert loaded.bits == (bits or 256)
    assert loaded.encrypted is False
    assert loaded.warnings == []
    assert isinstance(loaded.pkey, paramiko.PKey) and loaded.pkey.can_sign()


def test_pem_headers_are_what_we_think(ssh_keypair):
    assert "BEGIN RSA PRIVATE KEY" in ssh_keypair("rsa", bits=2048, fmt="PEM").private
    assert "BEGIN EC PRIVATE KEY" in ssh_keypair("ecdsa", bits=384, fmt="PEM").private
    assert "BEGIN PRIVATE KEY" in ssh_keypair("ecdsa", bits=521, fmt="PKCS8").private


ENCRYPTED_FORMATS = [
    ("ed25519", None, "BEGIN OPENSSH PRIVATE KEY"),
    ("rsa", "PEM", "Proc-Type: 4,ENCRYPTED"),
    ("ecdsa", "PKCS8", "BEGIN ENCRYPTED PRIVATE KEY"),
]


def encrypted_pair(ssh_keypair: KeyMaker, kind: str, fmt: str | None) -> KeyPair:
    return ssh_keypair(kind, bits=2048 if kind == "rsa" else None, passphrase=PASSPHRASE, fmt=fmt)


@pytest.mark.parametrize(("kind", "fmt", "header"), ENCRYPTED_FORMATS)
def test_encrypted_keys_with_right_passphrase(ssh_keypair, kind, fmt, header):
    pair = encrypted_pair(ssh_keypair, kind, fmt)
    assert header in pair.private
    loaded = load_private_key(pair.private, PASSPHRASE)
    assert loaded.encrypted is True
    assert loaded.fingerprint == pair.fingerprint
    assert loaded.warnings == []


def test_ed25519_pkcs8_loads():
    # ssh-keygen always writes ed25519 in OpenSSH format; openssl/cryptography write PKCS#8,
    # which paramiko alone cannot read.
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    loaded = load_private_key(pem, None)
    assert loaded.key_type == "ssh-ed25519"
    assert loaded.fingerprint == parse_public_key(public.decode()).fingerprint


def test_tolerates_crlf_whitespace_and_indentation(ed_key):
    messy = "\r\n\r\n  " + ed_key.private.replace("\n", "\r\n    ") + "  \r\n\r\n"
    assert load_private_key(messy, None).fingerprint == ed_key.fingerprint


def test_tolerates_line_breaks_turned_into_spaces(ed_key):
    one_line = " ".join(ed_key.private.split())
    assert load_private_key(one_line, None).fingerprint == ed_key.fingerprint


def test_empty_passphrase_means_none(ed_key):
    loaded = load_private_key(ed_key.private, "")
    assert loaded.warnings == []


def test_passphrase_for_unencrypted_key_is_a_warning(ed_key):
    loaded = load_private_key(ed_key.private, "unneeded")
    assert loaded.encrypted is False
    assert loaded.warnings == ["passphrase given but the key is not encrypted; it will be ignored"]


def test_small_rsa_private_key_loads_with_a_warning(ssh_keypair):
    loaded = load_private_key(ssh_keypair("rsa", bits=1024).private, None)
    assert loaded.bits == 1024
    assert any("1024 bits" in w for w in loaded.warnings)


# ---------------------------------------------------------------- private keys: refused


def test_putty_key_says_how_to_export(ssh_keypair):
    error = _code(load_private_key, ssh_keypair.putty_key(), None)
    assert error.code == "putty"
    assert "PuTTY format" in error.message
    assert "Conversions" in error.message and "Export OpenSSH key" in error.message
    assert "puttygen key.ppk -O private-openssh -o key" in error.message


@pytest.mark.parametrize("which", ["ed25519", "ecdsa", "rfc4716", "sk"])
def test_public_key_in_private_field(ssh_keypair, ed_key, which):
    if which == "ed25519":
        text = ed_key.public
    elif which == "ecdsa":
        text = ssh_keypair("ecdsa").public
    elif which == "rfc4716":
        text = ssh_keypair.rfc4716_public(ed_key)
        assert "---- BEGIN SSH2 PUBLIC KEY ----" in text
    else:
        text = _sk_ed25519_line()
    error = _code(load_private_key, text, None)
    assert error.code == "public_given"
    assert "public key" in error.message


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n  ",
        "hello world",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxVgE\n-----END PGP PRIVATE KEY BLOCK-----",
    ],
)
def test_garbage(text):
    assert _code(load_private_key, text, None).code == "garbage"


def test_truncated_key_is_garbage(ed_key):
    lines = ed_key.private.splitlines()
    damaged = "\n".join(lines[:2] + lines[-1:])  # body cut while copying
    error = _code(load_private_key, damaged, None)
    assert error.code == "garbage"
    assert "damaged" in error.message


def test_passphrase_required(ed_key_encrypted):
    error = _code(load_private_key, ed_key_encrypted.private, None)
    assert error.code == "passphrase_required"
    assert "passphrase" in error.message


@pytest.mark.parametrize(("kind", "fmt", "header"), ENCRYPTED_FORMATS)
def test_bad_passphrase(ssh_keypair, kind, fmt, header):
    pair = encrypted_pair(ssh_keypair, kind, fmt)
    assert _code(load_private_key, pair.private, None).code == "passphrase_required"
    error = _code(load_private_key, pair.private, "wrong")
    assert error.code == "bad_passphrase"
    assert "wrong passphrase" in error.message


@pytest.mark.parametrize("fmt", [None, "PEM"])
def test_dsa_is_unsupported(ssh_keypair, fmt):
    pair = ssh_keypair("dsa", fmt=fmt)
    error = _code(load_private_key, pair.private, None)
    assert error.code == "unsupported"
    assert "DSA" in error.message


def test_error_is_a_value_error_and_not_retryable():
    error = _code(load_private_key, "nope", None)
    assert isinstance(error, ValueError)
    assert error.retryable is False
    assert str(error) == error.message


# ---------------------------------------------------------------- public keys


@pytest.mark.parametrize(
    ("kind", "bits", "key_type"),
    [
        ("ed25519", None, "ssh-ed25519"),
        ("rsa", 2048, "ssh-rsa"),
        ("ecdsa", 256, "ecdsa-sha2-nistp256"),
        ("ecdsa", 384, "ecdsa-sha2-nistp384"),
        ("ecdsa", 521, "ecdsa-sha2-nistp521"),
    ],
)
def test_public_key_types(ssh_keypair, kind, bits, key_type):
    pair = ssh_keypair(kind, bits=bits)  # same keys as the private key tests (cached)
    info = parse_public_key(pair.public)
    assert info.key_type == key_type
    assert info.bits == (bits or 256)
    assert info.fingerprint == pair.fingerprint
    assert info.comment == "test@lyticsops"
    assert info.line == pair.public


def test_public_key_normalised(ed_key):
    key_type, b64, comment = ed_key.public.split(" ", 2)
    info = parse_public_key(f"  {key_type}\t {b64}   {comment}  extra words \r\n")
    assert info.line == f"{key_type} {b64} {comment} extra words"
    assert info.comment == f"{comment} extra words"
    assert parse_public_key(f"{key_type} {b64}").comment == ""


def test_sk_ed25519_public_key_accepted():
    info = parse_public_key(_sk_ed25519_line() + " yubikey")
    assert info.key_type == "sk-ssh-ed25519@openssh.com"
    assert info.comment == "yubikey"


def test_rsa_1024_refused(ssh_keypair):
    error = _code(parse_public_key, ssh_keypair("rsa", bits=1024).public)
    assert error.code == "weak_rsa"
    assert "1024" in error.message and "2048" in error.message


def test_private_key_in_public_field(ed_key, rsa_key):
    for text in (ed_key.private, rsa_key.private):
        error = _code(parse_public_key, text)
        assert error.code == "private_given"
        assert "PRIVATE" in error.message


def test_putty_ppk_in_public_field(ssh_keypair):
    error = _code(parse_public_key, ssh_keypair.putty_key())
    assert error.code == "putty"
    assert "public-openssh" in error.message


def test_rfc4716_public_key_says_how_to_convert(ssh_keypair, ed_key):
    error = _code(parse_public_key, ssh_keypair.rfc4716_public(ed_key))
    assert error.code == "rfc4716"
    assert "ssh-keygen -i -f key.pub" in error.message


@pytest.mark.parametrize(
    "prefix", ['command="/bin/date" ', "no-pty,no-port-forwarding ", 'from="10.0.0.1" ']
)
def test_authorized_keys_options_refused(ed_key, prefix):
    error = _code(parse_public_key, prefix + ed_key.public)
    assert error.code == "options"


def test_dsa_public_key_unsupported(ssh_keypair):
    assert _code(parse_public_key, ssh_keypair("dsa").public).code == "unsupported"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "hello",
        "ssh-ed25519",
        "ssh-ed25519 not-base64!!",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJe7",  # truncated
        "AAAAC3NzaC1lZDI1NTE5AAAAIJe7iONfxrI8EHM0ZXPFmEHg+Zj95BH1UJFrD0jtolz/",  # no type
    ],
)
def test_public_garbage(line):
    assert _code(parse_public_key, line).code == "garbage"


def test_public_type_must_match_data(ed_key, rsa_key):
    lying = "ssh-rsa " + ed_key.public.split()[1]
    error = _code(parse_public_key, lying)
    assert error.code == "garbage"
    assert "ssh-ed25519" in error.message


def test_wrapped_public_key_refused(ed_key):
    key_type, b64 = ed_key.public.split()[:2]
    error = _code(parse_public_key, f"{key_type} {b64[:30]}\n{b64[30:]}")
    assert error.code == "garbage"
    assert "single line" in error.message


def test_parse_public_keys_skips_comments_and_blanks(ssh_keypair, ed_key, rsa_key):
    ecdsa = ssh_keypair("ecdsa")
    text = f"# partner keys\n\n{ed_key.public}\r\n  \n{rsa_key.public}\n  # old\n{ecdsa.public}\n"
    infos = parse_public_keys(text)
    assert [i.fingerprint for i in infos] == [
        ed_key.fingerprint,
        rsa_key.fingerprint,
        ecdsa.fingerprint,
    ]
    assert parse_public_keys("") == []


def test_parse_public_keys_names_the_line(ssh_keypair, ed_key):
    weak = ssh_keypair("rsa", bits=1024).public
    error = _code(parse_public_keys, f"# header\n{ed_key.public}\n{weak}\n")
    assert error.code == "weak_rsa"
    assert error.message.startswith("line 3: ")
    assert error.line == 3

    error = _code(parse_public_keys, f"{ed_key.public}\nrubbish\n")
    assert (error.code, error.line) == ("garbage", 2)
    assert error.message.startswith("line 2: ")


def test_parse_public_keys_refuses_duplicates(ed_key):
    other_comment = " ".join(ed_key.public.split()[:2]) + " another comment"
    error = _code(parse_public_keys, f"{ed_key.public}\n\n{other_comment}\n")
    assert error.code == "duplicate"
    assert error.message == "line 3: same key as line 1"


def test_parse_public_keys_private_block_fails_on_first_line(ed_key):
    error = _code(parse_public_keys, ed_key.private)
    assert (error.code, error.line) == ("private_given", 1)


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize(("kind", "key_type", "bits"), [("ed25519", "ssh-ed25519", 256)])
def test_generate_keypair_round_trip(tmp_path: Path, kind, key_type, bits):
    private, public = generate_keypair(kind, comment="lyticsops  export\njob")
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.endswith(" lyticsops export job")
    loaded = load_private_key(private, None)
    assert loaded.key_type == key_type and loaded.bits == bits and not loaded.encrypted
    info = parse_public_key(public)
    assert info.fingerprint == loaded.fingerprint
    # ssh-keygen derives the same public key from the private key file
    path = tmp_path / "id"
    path.write_text(private)
    path.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert derived[:2] == public.split()[:2]
    (tmp_path / "id.pub").write_text(public + "\n")
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "id.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert listed.split()[1] == loaded.fingerprint


def test_generate_rsa4096(tmp_path: Path):
    private, public = generate_keypair("rsa4096")
    loaded = load_private_key(private, None)
    assert (loaded.key_type, loaded.bits) == ("ssh-rsa", 4096)
    assert parse_public_key(public).fingerprint == loaded.fingerprint
    path = tmp_path / "id"
    path.write_text(private)
    path.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert derived.split()[:2] == public.split()[:2]


def test_generate_unknown_kind():
    assert _code(generate_keypair, "dsa").code == "unsupported"


def test_fingerprint_of_matches_paramiko_and_ssh_keygen(ed_key):
    pkey = paramiko.Ed25519Key.from_private_key_file(str(ed_key.path))
    assert fingerprint_of(pkey) == pkey.fingerprint == ed_key.fingerprint


# ---------------------------------------------------------------- helpers


def _sk_ed25519_line() -> str:
    def string(value: bytes) -> bytes:
        return struct.pack(">I", len(value)) + value

    blob = string(b"sk-ssh-ed25519@openssh.com") + string(bytes(range(32))) + string(b"ssh:")
    return "sk-ssh-ed25519@openssh.com " + base64.b64encode(blob).decode()


def test_ssh_key_error_pickles():
    import pickle

    error = SshKeyError("weak_rsa", "line 2: too small", 2)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, just pickled
    assert (copy.code, copy.message, copy.line) == ("weak_rsa", "line 2: too small", 2)
