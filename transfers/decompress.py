"""Unwrapping an import file, as a stream: PGP decryption, gzip, zip.

`unwrap()` looks at the file name's suffixes *and* at the first bytes of the data, outermost
layer first (``members.csv.gz.pgp``: decrypt, then gunzip, then parse the CSV):

* PGP when the suffix is ``.pgp``/``.gpg``/``.asc`` or the bytes are OpenPGP packets/armour.
  Decrypted with the authorization's private key in a throw-away GNUPGHOME (`transfers.pgp`).
  A file that *claims* PGP by its suffix but is not PGP data is **rejected**, not imported
  as plain text: the name says the partner meant to encrypt it, so plain content means the
  wrong file or a broken export on their side, and importing it silently would hide that.
  A PGP file when the authorization has no private key is rejected too.
* gzip when the suffix is ``.gz`` or the bytes start with the gzip magic; streamed.
* zip when the suffix is ``.zip`` or the bytes start with a zip signature. Zip keeps its
  directory at the end, so the data is spooled to an anonymous temporary file first (gone
  even if the worker is killed). It must contain exactly one file; an absolute or ``..``
  member name is rejected (we never extract to disk, but such a zip is hostile or broken).

Every decompressing layer (including PGP, which compresses too) is guarded against
decompression bombs: its output stops at ``IMPORT_MAX_DECOMPRESSED_BYTES`` and, once past
``IMPORT_RATIO_CHECK_AFTER_BYTES``, at ``IMPORT_MAX_COMPRESSION_RATIO`` times its input.
At most `MAX_LAYERS` layers are unwrapped (a zip in a gzip in a zip... is refused).

Corrupt data raises `FileRejected` with the layer named; PGP failures propagate as
`transfers.pgp` errors for the caller to classify (wrong key: this file; bad passphrase:
the configuration).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import posixpath
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from django.conf import settings

from transfers import pgp
from transfers.errors import FileRejected

MAX_LAYERS = 4
SNIFF_BYTES = 64
BUFFER_SIZE = 1024 * 1024
PGP_SUFFIXES = frozenset({"pgp", "gpg", "asc"})
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_ratio: float
    ratio_after: int
    spool_dir: str | None = None

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            max_bytes=settings.IMPORT_MAX_DECOMPRESSED_BYTES,
            max_ratio=settings.IMPORT_MAX_COMPRESSION_RATIO,
            ratio_after=settings.IMPORT_RATIO_CHECK_AFTER_BYTES,
            spool_dir=settings.IMPORT_SPOOL_DIR,
        )


@dataclass
class Unwrapped:
    stream: BinaryIO  # the plaintext, buffered (read/readline/read1)
    name: str  # the name without the unwrapped suffixes, or the zip member's name
    layers: list[str] = field(default_factory=list)  # e.g. ["pgp", "gzip"]


@contextlib.contextmanager
def unwrap(
    raw: BinaryIO,
    name: str,
    *,
    private_key: str | None,
    passphrase: str | None,
    limits: Limits | None = None,
) -> Iterator[Unwrapped]:
    """Yield the plaintext of ``raw``. Only trust what was read once the block exits cleanly:
    the PGP integrity check and the gzip/zip checksums complete at the end of the data."""
    limits = limits or Limits.from_settings()
    with contextlib.ExitStack() as stack:
        stream: Any = raw
        inner = name
        layers: list[str] = []
        while True:
            head, stream = _sniff(stream)
            kind = _layer_kind(inner, head)
            if kind is None:
                break
            if len(layers) == MAX_LAYERS:
                raise FileRejected(
                    f"'{name}' is wrapped in more than {MAX_LAYERS} layers of compression/"
                    "encryption; refusing to unwrap further (possible decompression bomb)."
                )
            if kind == "pgp":
                stream = _open_pgp(stack, stream, name, private_key, passphrase, limits)
            elif kind == "gzip":
                stream = _open_gzip(stack, stream, limits)
            else:
                stream, member = _open_zip(stack, stream, name, limits)
            inner = member if kind == "zip" else _strip_suffix(inner, kind)
            layers.append(kind)
        yield Unwrapped(io.BufferedReader(stream, BUFFER_SIZE), inner, layers)  # type: ignore[arg-type]


def _suffix(name: str) -> str:
    base = posixpath.basename(name)
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def _strip_suffix(name: str, kind: str) -> str:
    suffix = _suffix(name)
    expected = PGP_SUFFIXES if kind == "pgp" else {"gz"}
    return name[: -len(suffix) - 1] if suffix in expected else name


def _layer_kind(name: str, head: bytes) -> str | None:
    """Which layer to unwrap next, or None for the payload itself."""
    if not head:
        return None  # an empty file is an empty file, whatever its name says
    suffix = _suffix(name)
    is_pgp = pgp.looks_like_pgp(head)
    if suffix in PGP_SUFFIXES and not is_pgp:
        raise FileRejected(
            f"'{name}' is named .{suffix} but is not PGP data ({_describe(head)}); it was not "
            f"imported. Send it encrypted, or named without the .{suffix} suffix."
        )
    if is_pgp:
        return "pgp"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZIP_MAGICS):
        return "zip"
    if suffix in ("gz", "zip"):
        raise FileRejected(
            f"'{name}' is named .{suffix} but is not {suffix} data ({_describe(head)})."
        )
    return None


def _describe(head: bytes) -> str:
    # Never quote the bytes: they may be personal data, and this text lands in run logs.
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is binary data of an unknown kind"
    return "it looks like plain text"


# --------------------------------------------------------------------------- layers


def _open_pgp(
    stack: contextlib.ExitStack,
    stream: BinaryIO,
    name: str,
    private_key: str | None,
    passphrase: str | None,
    limits: Limits,
) -> io.RawIOBase:
    if not (private_key and private_key.strip()):
        raise FileRejected(
            f"'{name}' is PGP-encrypted, but the authorization has no PGP private key to "
            "decrypt it. Use an authorization with a PGP private key for this job."
        )
    source = _Counting(stream)
    plain = stack.enter_context(pgp.open_decrypted(source, private_key, passphrase))  # type: ignore[arg-type]
    return _Guarded(plain, source, "PGP", limits)


def _open_gzip(stack: contextlib.ExitStack, stream: BinaryIO, limits: Limits) -> io.RawIOBase:
    source = _Counting(stream)
    unzipped = stack.enter_context(gzip.GzipFile(fileobj=source, mode="rb"))  # type: ignore[arg-type]
    return _Guarded(unzipped, source, "gzip", limits)


def _open_zip(
    stack: contextlib.ExitStack, stream: BinaryIO, name: str, limits: Limits
) -> tuple[io.RawIOBase, str]:
    spool = stack.enter_context(tempfile.TemporaryFile(prefix="lyt-zip-", dir=limits.spool_dir))
    _spool_bounded(stream, spool, name, limits.max_bytes)
    spool.seek(0)
    try:
        archive = stack.enter_context(zipfile.ZipFile(spool))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FileRejected(f"'{name}' is not a readable zip file ({exc}).") from None
    member = _single_member(archive, name, limits)
    try:
        opened = stack.enter_context(archive.open(member))
    except NotImplementedError as exc:
        raise FileRejected(f"The zip member of '{name}' cannot be read: {exc}.") from None
    source = _Fixed(member.compress_size)
    return _Guarded(opened, source, "zip", limits), posixpath.basename(member.filename)


def _spool_bounded(stream: BinaryIO, spool: BinaryIO, name: str, limit: int) -> None:
    """Copy the zip to local disk, refusing one larger than the import size limit.

    The zip's size comes from the server, which may lie (a sparse file of a terabyte):
    counting what arrives keeps the worker's disk from filling up.
    """
    copied = 0
    while chunk := stream.read(BUFFER_SIZE):
        copied += len(chunk)
        if copied > limit:
            raise FileRejected(
                f"'{name}' is larger than the import limit of {limit} bytes "
                "(IMPORT_MAX_DECOMPRESSED_BYTES); it was not imported."
            )
        spool.write(chunk)


def _single_member(archive: zipfile.ZipFile, name: str, limits: Limits) -> zipfile.ZipInfo:
    members = archive.infolist()
    unsafe = [m.filename for m in members if _unsafe_member_name(m.filename)]
    if unsafe:
        raise FileRejected(
            f"'{name}' contains a member with an unsafe path ({unsafe[0]!r}: absolute or "
            "with '..'); the zip was not imported."
        )
    files = [m for m in members if not m.is_dir()]
    if len(files) != 1:
        shown = ", ".join(repr(m.filename) for m in files[:5]) + (", …" if len(files) > 5 else "")
        raise FileRejected(
            f"A zip must contain exactly one file; '{name}' contains {len(files)}"
            + (f" ({shown})" if files else "")
            + ". Send one file per zip."
        )
    member = files[0]
    if member.flag_bits & 0x1:
        raise FileRejected(f"'{name}' is password-protected; zip encryption is not supported.")
    if member.file_size > limits.max_bytes:
        raise _bomb("zip", limits.max_bytes)
    return member


def _unsafe_member_name(member: str) -> bool:
    parts = re.split(r"[\\/]", member)
    return (
        member.startswith(("/", "\\"))
        or bool(_DRIVE.match(member))
        or ".." in parts
        or "\x00" in member
    )


def _bomb(kind: str, limit: int) -> FileRejected:
    return FileRejected(
        f"The {kind} data unpacks to more than {limit} bytes (IMPORT_MAX_DECOMPRESSED_BYTES); "
        "stopped reading it as a possible decompression bomb."
    )


# --------------------------------------------------------------------------- stream helpers


def _sniff(stream: Any) -> tuple[bytes, io.RawIOBase]:
    """The first bytes of ``stream`` and a stream that still starts with them."""
    head = b""
    while len(head) < SNIFF_BYTES:
        chunk = stream.read(SNIFF_BYTES - len(head))
        if not chunk:
            break
        head += chunk
    return head, _Prefixed(head, stream)


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``source``."""

    def __init__(self, head: bytes, source: Any) -> None:
        self._head = head
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        return _readinto(self._source, buffer)


class _Counting:
    """Counts the bytes a decompressor consumed (its input), for the ratio guard."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True


class _Fixed:
    """An input size known in advance (a zip member's compressed size)."""

    def __init__(self, count: int) -> None:
        self.count = count


class _Guarded(io.RawIOBase):
    """A decompressing layer's output, stopped at the size/ratio limits; format errors of
    the layer become FileRejected naming it."""

    def __init__(self, source: Any, consumed: _Counting | _Fixed, kind: str, limits: Limits):
        self._source = source
        self._consumed = consumed
        self._kind = kind
        self._limits = limits
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            size = _readinto(self._source, buffer)
        except (gzip.BadGzipFile, zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise FileRejected(f"Corrupt or truncated {self._kind} data ({exc}).") from None
        self.produced += size
        self._check()
        return size

    def _check(self) -> None:
        limits = self._limits
        if self.produced > limits.max_bytes:
            raise _bomb(self._kind, limits.max_bytes)
        if self.produced > limits.ratio_after:
            ratio = self.produced / max(self._consumed.count, 1)
            if ratio > limits.max_ratio:
                raise FileRejected(
                    f"The {self._kind} data expands more than {limits.max_ratio:g} times "
                    f"(IMPORT_MAX_COMPRESSION_RATIO); stopped reading it as a possible "
                    "decompression bomb."
                )


def _readinto(source: Any, buffer: Any) -> int:
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        return readinto(buffer) or 0
    data = source.read(len(buffer))
    buffer[: len(data)] = data
    return len(data)
