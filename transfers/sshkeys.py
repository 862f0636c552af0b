"""SSH key handling: validate what people paste into forms, load keys for paramiko.

Two directions:

* our own client keys (private, used by `transfers.sftp` to log in to partners):
  `load_private_key`, `generate_keypair`;
* partners' public keys (authorized to log in to our SFTP server):
  `parse_public_key`, `parse_public_keys`.

Every refusal is an `SshKeyError` whose ``code`` is stable (for code paths and tests)
and whose message tells a person what to do next. Messages never echo key material.

Parsing is done with `cryptography` (it understands every format ssh-keygen writes and
tells encrypted keys apart from damaged ones); paramiko only gets a key re-serialized
in OpenSSH format, because its own loaders do not read PKCS#8 and only read Ed25519
keys in OpenSSH format.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import struct
import warnings
from dataclasses import dataclass, field

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

MIN_RSA_BITS = 2048

PUBLIC_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
# Recognised only to give a precise refusal.
_REFUSED_PUBLIC_TYPES = {
    "ssh-dss": "DSA (ssh-dss) keys are obsolete and disabled in current OpenSSH",
}
_ANY_KEY_TYPE = re.compile(
    r"(?:^|[\s,\"'])((?:ssh|ecdsa|sk)-[a-z0-9@.\-]+)\s+AAAA[0-9A-Za-z+/]", re.ASCII
)
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\n(.*?)\n-----END \1-----", re.DOTALL)
_OPENSSH_MAGIC = b"openssh-key-v1\x00"

_PUTTY_PRIVATE_HELP = (
    "the key is in PuTTY format (.ppk); export it in OpenSSH format: in PuTTYgen load "
    "the key, then Conversions \u2192 Export OpenSSH key; or run "
    "`puttygen key.ppk -O private-openssh -o key` and paste the content of `key`"
)
_PUTTY_PUBLIC_HELP = (
    "this is a PuTTY private key file (.ppk), not a public key; paste the public key in "
    "OpenSSH format: in PuTTYgen copy the box 'Public key for pasting into OpenSSH "
    "authorized_keys file', or run `puttygen key.ppk -O public-openssh`"
)
_RFC4716_HELP = (
    "this public key is in RFC 4716 / SSH2 format (as saved by PuTTYgen); convert it to "
    "the one-line OpenSSH format with `ssh-keygen -i -f key.pub` and paste the output"
)


class SshKeyError(ValueError):
    """Unusable key material. ``code`` is one of:

    private keys: putty, public_given, garbage, passphrase_required, bad_passphrase,
    unsupported; public keys: private_given, putty, rfc4716, options, weak_rsa,
    unsupported, duplicate, garbage.

    ``line`` is the 1-based line number when the error comes from `parse_public_keys`.
    """

    retryable = False

    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:
        # picklable (Celery may pickle task exceptions) despite the custom __init__
        return (type(self), (self.code, self.message, self.line))


@dataclass
class LoadedKey:
    pkey: paramiko.PKey
    key_type: str
    bits: int
    fingerprint: str
    encrypted: bool
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PublicKeyInfo:
    key_type: str
    bits: int
    fingerprint: str
    comment: str
    line: str  # normalised "type base64[ comment]"

    @property
    def blob_b64(self) -> str:
        return self.line.split()[1]


# ---------------------------------------------------------------- fingerprints


def fingerprint_blob(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint: unpadded base64 of sha256(public key blob)."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fingerprint_of(pkey: paramiko.PKey) -> str:
    """Fingerprint of a paramiko key, as `ssh-keygen -l` prints it."""
    return fingerprint_blob(pkey.asbytes())


# ---------------------------------------------------------------- private keys


def load_private_key(text: str, passphrase: str | None) -> LoadedKey:
    """Parse a pasted private key and return it ready for paramiko."""
    text = _normalise(text)
    _refuse_non_private(text)
    label, pem = _pem_block(text)
    passphrase = passphrase or None  # an empty form field means "no passphrase"
    if label == "OPENSSH PRIVATE KEY":
        header_type, _ = _openssh_header(pem)
        _refuse_unsupported_type(header_type)
    elif label == "DSA PRIVATE KEY":
        raise SshKeyError("unsupported", _unsupported_message("ssh-dss"))
    key, encrypted = _load_crypto_key(label, pem, passphrase)
    pkey, key_type = _to_paramiko(key)
    result = LoadedKey(
        pkey=pkey,
        key_type=key_type,
        bits=pkey.get_bits(),
        fingerprint=fingerprint_of(pkey),
        encrypted=encrypted,
    )
    if passphrase and not encrypted:
        result.warnings.append("passphrase given but the key is not encrypted; it will be ignored")
    if key_type == "ssh-rsa" and result.bits < MIN_RSA_BITS:
        result.warnings.append(
            f"RSA key is only {result.bits} bits; many servers refuse RSA keys under "
            f"{MIN_RSA_BITS} bits"
        )
    return result


def _normalise(text: str) -> str:
    """Undo what copy/paste does: CRLF, indentation, blank lines around the key."""
    lines = (line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(lines).strip()


def _refuse_non_private(text: str) -> None:
    """Recognise things people paste by mistake, to say precisely what went wrong."""
    if not text:
        raise SshKeyError("garbage", "no private key given")
    if text.startswith("PuTTY-User-Key-File-"):
        raise SshKeyError("putty", _PUTTY_PRIVATE_HELP)
    if _looks_public(text):
        raise SshKeyError(
            "public_given",
            "this is a public key; the private key is needed here (the file without .pub, "
            "starting with -----BEGIN OPENSSH PRIVATE KEY-----)",
        )
    if "BEGIN PGP" in text:
        raise SshKeyError("garbage", "this is a PGP key, not an SSH key")
    if "BEGIN SSH2 ENCRYPTED PRIVATE KEY" in text:
        raise SshKeyError(
            "unsupported",
            "the key is in SSH.com (Tectia) format; convert it with `ssh-keygen -i -f key` "
            "and paste the output",
        )


def _looks_public(text: str) -> bool:
    first = text.split(None, 1)[0] if text else ""
    return (
        first in PUBLIC_KEY_TYPES
        or first in _REFUSED_PUBLIC_TYPES
        or "BEGIN SSH2 PUBLIC KEY" in text
        or "-----BEGIN PUBLIC KEY-----" in text
        or "-----BEGIN RSA PUBLIC KEY-----" in text
        or ("PRIVATE KEY-----" not in text and _ANY_KEY_TYPE.search(text) is not None)
    )


def _pem_block(text: str) -> tuple[str, bytes]:
    """Return (label, bytes to give cryptography) for the first PEM block in text."""
    match = _PEM_BLOCK.search(text) or _PEM_BLOCK.search(_reflow(text))
    if not match:
        raise SshKeyError(
            "garbage",
            "this does not look like a private key (expected a block starting with "
            "-----BEGIN OPENSSH PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)",
        )
    label = match.group(1)
    known = {
        "OPENSSH PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "DSA PRIVATE KEY",
        "PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
    }
    if label not in known:
        raise SshKeyError("garbage", f"unexpected block '{label}'; an SSH private key is needed")
    return label, match.group(0).encode("ascii", "replace") + b"\n"


def _reflow(text: str) -> str:
    """Rebuild a key whose line breaks were turned into spaces (some web forms do that)."""
    match = re.search(r"(-----BEGIN ([A-Z0-9 ]+)-----)\s*(.*?)\s*(-----END \2-----)", text, re.S)
    if not match or ":" in match.group(3):  # encrypted PEM headers cannot be rebuilt
        return text
    return "\n".join([match.group(1), *match.group(3).split(), match.group(4)])


def _openssh_header(pem: bytes) -> tuple[str, bool]:
    """Key type and encryption flag from the unencrypted header of an OpenSSH key."""
    body = b"".join(pem.split(b"\n")[1:-2])
    try:
        data = base64.b64decode(body, validate=True)
        if not data.startswith(_OPENSSH_MAGIC):
            raise ValueError("bad magic")
        reader = _SshReader(data[len(_OPENSSH_MAGIC) :])
        cipher = reader.string()
        reader.string()  # kdf name
        reader.string()  # kdf options
        if reader.uint32() < 1:
            raise ValueError("no keys")
        key_type = _SshReader(reader.string()).string().decode("ascii")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise SshKeyError(
            "garbage", "the private key is damaged or incomplete (was it cut while copying?)"
        ) from None
    return key_type, cipher != b"none"


def _refuse_unsupported_type(key_type: str) -> None:
    if key_type in ("ssh-ed25519", "ssh-rsa") or key_type.startswith("ecdsa-sha2-nistp"):
        return
    raise SshKeyError("unsupported", _unsupported_message(key_type))


def _unsupported_message(key_type: str) -> str:
    if key_type == "ssh-dss":
        reason = "DSA (ssh-dss) keys are obsolete and refused by current SSH servers"
    elif key_type.startswith("sk-"):
        reason = "hardware security key (FIDO, sk-*) keys need the token and cannot be used here"
    else:
        reason = f"keys of type '{key_type}' are not supported"
    return f"{reason}; use an ed25519 key (`ssh-keygen -t ed25519`) or RSA of 3072+ bits"


def _load_crypto_key(label: str, pem: bytes, passphrase: str | None) -> tuple[object, bool]:
    """Load with cryptography; returns (key, was_encrypted)."""
    loader = (
        serialization.load_ssh_private_key
        if label == "OPENSSH PRIVATE KEY"
        else serialization.load_pem_private_key
    )
    try:
        return _call_loader(loader, pem, None), False
    except TypeError:
        pass  # cryptography's way of saying "this key is encrypted"
    if passphrase is None:
        raise SshKeyError(
            "passphrase_required", "the private key is encrypted; enter its passphrase"
        )
    try:
        return _call_loader(loader, pem, passphrase.encode("utf-8")), True
    except (ValueError, TypeError):
        raise SshKeyError(
            "bad_passphrase", "wrong passphrase for the private key (could not decrypt it)"
        ) from None


def _call_loader(loader, pem: bytes, password: bytes | None) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DSA deprecation warnings: refused just below
            return loader(pem, password=password)
    except UnsupportedAlgorithm:
        raise SshKeyError(
            "unsupported", "this key algorithm is not supported; use an ed25519 or RSA key"
        ) from None
    except ValueError as exc:
        if password is not None:
            raise  # wrong passphrase, handled by the caller
        raise SshKeyError(
            "garbage", "the private key could not be read: it is damaged or incomplete"
        ) from exc


def _to_paramiko(key: object) -> tuple[paramiko.PKey, str]:
    """Build the paramiko key through an in-memory unencrypted OpenSSH serialisation.

    paramiko 5 only reads Ed25519 from OpenSSH format and never reads PKCS#8, so
    re-serialising is the one path that works for every type and source format.
    """
    if isinstance(key, ed25519.Ed25519PrivateKey):
        cls: type[paramiko.PKey] = paramiko.Ed25519Key
    elif isinstance(key, rsa.RSAPrivateKey):
        cls = paramiko.RSAKey
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        cls = paramiko.ECDSAKey
    elif isinstance(key, dsa.DSAPrivateKey):
        raise SshKeyError("unsupported", _unsupported_message("ssh-dss"))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        raise SshKeyError("unsupported", _unsupported_message(f"ecdsa {key.curve.name}"))
    else:
        raise SshKeyError("unsupported", _unsupported_message(type(key).__name__))
    text = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    pkey = cls.from_private_key(io.StringIO(text))
    return pkey, pkey.get_name()


# ---------------------------------------------------------------- public keys


def parse_public_key(line: str) -> PublicKeyInfo:
    """Validate one OpenSSH public key line (as in a .pub file or authorized_keys)."""
    text = _normalise(line)
    _refuse_non_public(text)
    if "\n" in text:
        raise SshKeyError(
            "garbage",
            "the key must be on a single line (it looks wrapped or there are several keys)",
        )
    tokens = text.split()
    key_type = tokens[0]
    if key_type not in PUBLIC_KEY_TYPES:
        _refuse_unknown_type(text, key_type)
    if len(tokens) < 2:
        raise SshKeyError("garbage", "the key data is missing after the key type")
    blob = _decode_blob(tokens[1])
    bits = _check_blob(key_type, tokens[1], blob)
    if key_type == "ssh-rsa" and bits < MIN_RSA_BITS:
        raise SshKeyError(
            "weak_rsa",
            f"RSA key is only {bits} bits; at least {MIN_RSA_BITS} are required "
            "(generate a new key, e.g. `ssh-keygen -t ed25519`)",
        )
    comment = " ".join(tokens[2:])
    normalised = f"{key_type} {tokens[1]}" + (f" {comment}" if comment else "")
    return PublicKeyInfo(key_type, bits, fingerprint_blob(blob), comment, normalised)


def parse_public_keys(text: str) -> list[PublicKeyInfo]:
    """One key per non-empty line; `#` lines are comments. Errors name the line."""
    keys: list[PublicKeyInfo] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            info = parse_public_key(stripped)
        except SshKeyError as exc:
            raise SshKeyError(exc.code, f"line {number}: {exc.message}", number) from None
        if info.blob_b64 in seen:
            raise SshKeyError(
                "duplicate", f"line {number}: same key as line {seen[info.blob_b64]}", number
            )
        seen[info.blob_b64] = number
        keys.append(info)
    return keys


def _refuse_non_public(text: str) -> None:
    if not text:
        raise SshKeyError("garbage", "no public key given")
    if text.startswith("PuTTY-User-Key-File-"):
        raise SshKeyError("putty", _PUTTY_PUBLIC_HELP)
    if "PRIVATE KEY-----" in text or "BEGIN SSH2 ENCRYPTED PRIVATE KEY" in text:
        raise SshKeyError(
            "private_given",
            "this is a PRIVATE key; paste the public key instead (the .pub file: one line "
            "starting with ssh-ed25519, ssh-rsa or ecdsa-sha2-...). Keep the private key secret.",
        )
    if "BEGIN SSH2 PUBLIC KEY" in text:
        raise SshKeyError("rfc4716", _RFC4716_HELP)
    if "-----BEGIN PUBLIC KEY-----" in text or "-----BEGIN RSA PUBLIC KEY-----" in text:
        raise SshKeyError(
            "garbage",
            "this is a PEM public key; convert it to OpenSSH format with "
            "`ssh-keygen -i -m PKCS8 -f key.pem` and paste the output",
        )
    if "BEGIN PGP" in text:
        raise SshKeyError("garbage", "this is a PGP key, not an SSH key")


def _refuse_unknown_type(text: str, key_type: str) -> None:
    if key_type in _REFUSED_PUBLIC_TYPES:
        raise SshKeyError("unsupported", _unsupported_message(key_type))
    if key_type.endswith("-cert-v01@openssh.com"):
        raise SshKeyError("unsupported", "SSH certificates are not supported; paste the plain key")
    if _ANY_KEY_TYPE.search(text):
        raise SshKeyError(
            "options",
            "the line starts with authorized_keys options (like command=... or from=...); "
            "paste only the key, starting at its type (ssh-ed25519, ssh-rsa, ...)",
        )
    raise SshKeyError(
        "garbage",
        "this does not look like an SSH public key (expected one line like "
        "'ssh-ed25519 AAAA... comment')",
    )


def _decode_blob(b64: str) -> bytes:
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise SshKeyError(
            "garbage", "the key data is not valid base64 (was it cut or changed while copying?)"
        ) from None


def _check_blob(key_type: str, b64: str, blob: bytes) -> int:
    """Verify the blob matches the declared type and return the key size in bits."""
    reader = _SshReader(blob)
    try:
        inner_type = reader.string().decode("ascii")
        if inner_type != key_type:
            raise SshKeyError(
                "garbage", f"the line says {key_type} but the key data is a {inner_type} key"
            )
        if key_type.startswith("sk-"):
            return _check_sk_blob(key_type, reader)
        key = serialization.load_ssh_public_key(f"{key_type} {b64}".encode("ascii"))
    except SshKeyError:
        raise  # already precise (it is a ValueError too)
    except (ValueError, UnicodeDecodeError, UnsupportedAlgorithm):
        raise SshKeyError(
            "garbage", "the key data is damaged (was it cut or changed while copying?)"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size
    return 256  # ed25519


def _check_sk_blob(key_type: str, reader: _SshReader) -> int:
    """FIDO keys: cryptography cannot load them, so check the structure by hand."""
    if key_type == "sk-ssh-ed25519@openssh.com":
        if len(reader.string()) != 32:
            raise ValueError("bad ed25519 point")
    else:
        if reader.string() != b"nistp256":
            raise ValueError("bad curve")
        reader.string()  # EC point
    reader.string()  # application, usually "ssh:"
    if not reader.at_end():
        raise ValueError("trailing data")
    return 256


class _SshReader:
    """Minimal reader for SSH wire-format (RFC 4251) strings and integers."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def uint32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise ValueError("truncated")
        (value,) = struct.unpack_from(">I", self._data, self._pos)
        self._pos += 4
        return value

    def string(self) -> bytes:
        length = self.uint32()
        if self._pos + length > len(self._data):
            raise ValueError("truncated")
        value = self._data[self._pos : self._pos + length]
        self._pos += length
        return value

    def at_end(self) -> bool:
        return self._pos == len(self._data)


# ---------------------------------------------------------------- generation


def generate_keypair(kind: str = "ed25519", comment: str = "") -> tuple[str, str]:
    """New unencrypted key pair: (OpenSSH private key text, public key line)."""
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa4096":
        key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    else:
        raise SshKeyError("unsupported", f"unknown key kind '{kind}' (use ed25519 or rsa4096)")
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    comment = " ".join(comment.split())  # a comment must stay on the key's line
    line = public.decode("ascii") + (f" {comment}" if comment else "")
    return private, line
