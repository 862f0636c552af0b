"""PGP over the `gpg` binary: key inspection for validation, streaming encrypt/decrypt.

Design notes
------------
* Nothing is ever kept in a keyring. Every operation creates a throw-away GNUPGHOME, imports
  the one key it needs, runs gpg, stops the gpg-agent that gpg may have started and deletes the
  directory. Keys live in the database only; the filesystem never holds them for longer than
  one operation.
* Data is streamed through gpg's stdin/stdout with threads, so files of any size use a bounded
  amount of memory.
* gpg is driven through its machine-readable ``--status-fd`` channel (a dedicated pipe), never
  by parsing its translated human messages.
* Passphrases reach gpg through a dedicated pipe (``--passphrase-fd``), never argv or the
  environment, so they never show up in ``ps`` or ``/proc/*/environ``.
* Exception messages are meant to be shown to users; they never contain passphrases or key
  material (only fingerprints, key ids and gpg's own short diagnostics).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    import gnupg

CHUNK_SIZE = 1024 * 1024  # copy granularity for streaming (1 MiB)
MAX_KEY_SIZE = 4 * 1024 * 1024  # keys with many signatures get big, but not this big
STDERR_LIMIT = 16 * 1024  # keep only the tail of gpg's stderr
STATUS_LIMIT = 2000  # status lines kept per process (a big file produces only a handful)
COMMAND_TIMEOUT = 120  # seconds, for the small non-streaming gpg commands
SETTLE_TIMEOUT = 30  # seconds to let gpg exit on its own after its output ended

# Public-key algorithm ids (RFC 4880 / 9580) -> readable names.
_ALGORITHMS = {1: "RSA", 2: "RSA", 3: "RSA", 16: "ElGamal", 17: "DSA", 18: "ECDH", 19: "ECDSA"}
_ALGORITHMS |= {20: "ElGamal", 22: "EdDSA", 25: "X25519", 26: "X448", 27: "Ed25519", 28: "Ed448"}

# libgpg-error codes seen in "ERROR pkdecrypt_failed <code>" (low 16 bits).
_GPG_ERR_BAD_PASSPHRASE = 11
_GPG_ERR_NO_PASSPHRASE = 177


# --------------------------------------------------------------------------- errors


class PgpError(Exception):
    """Base error. ``retryable`` says whether running the same thing again can help."""

    retryable = False


class PgpKeyError(PgpError):
    """Key material is unusable. ``code`` is one of:
    garbage, public_given, private_given, no_encryption_subkey, expired, revoked,
    passphrase_required, bad_passphrase, several_keys."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PgpDecryptError(PgpError):
    """A file could not be decrypted: wrong key, corrupt/truncated data, not PGP.

    ``code`` is one of: wrong_key, corrupt, not_pgp, not_encrypted, symmetric,
    bad_passphrase, passphrase_required, failed."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


class GpgUnavailable(PgpError):
    """The gpg binary is missing or broken (an operator must fix it).

    Retryable: nothing is wrong with the file or the key, so the same job succeeds once gpg
    is installed."""

    retryable = True


class GpgFailed(PgpError):
    """gpg failed for a reason that is not the key's or the data's fault (crash, disk full)."""

    retryable = True


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str
    user_ids: list[str] = field(default_factory=list)
    algorithm: str = ""
    length: int | None = None
    created: dt.datetime | None = None
    expires: dt.datetime | None = None
    is_secret: bool = False
    can_encrypt: bool = False


# --------------------------------------------------------------------------- gpg binary & home


def gpg_binary_name() -> str:
    """The gpg executable to use: env ``GPG_BINARY``, else Django setting, else ``gpg``.

    The environment wins so an operator can override a deployed setting without a release."""
    name = os.environ.get("GPG_BINARY")
    if not name:
        name = _django_setting("GPG_BINARY")
    return name or "gpg"


def _django_setting(name: str) -> str | None:
    # Optional: this module must work without Django (tests, scripts).
    try:
        from django.conf import settings
    except ImportError:
        return None
    try:
        return getattr(settings, name, None) if settings.configured else None
    except Exception:  # settings module broken/mid-construction: fall back to the default
        return None


def gpg_binary() -> str:
    """Absolute path of the gpg binary, or ``GpgUnavailable`` with an operator-readable text."""
    name = gpg_binary_name()
    path = shutil.which(name)
    if path is None:
        raise GpgUnavailable(
            f"gpg is not installed (no executable {name!r} found on PATH); "
            "install GnuPG 2.2+ or set GPG_BINARY."
        )
    return path


def _gpgconf_binary(gpg_path: str) -> str | None:
    # Prefer the gpgconf shipped next to the gpg we use, so both talk to the same agent.
    sibling = os.path.join(os.path.dirname(gpg_path), "gpgconf")
    if os.access(sibling, os.X_OK):
        return sibling
    return shutil.which("gpgconf")


@contextmanager
def _throwaway_home() -> Iterator[tuple[str, str]]:
    """Yield ``(gpg_path, homedir)`` for a fresh private GNUPGHOME, destroyed afterwards."""
    gpg_path = gpg_binary()
    # Short path under /tmp: gpg-agent's socket lives in the home and unix socket paths are
    # limited to ~108 bytes. mkdtemp already creates it 0700; chmod makes that explicit.
    home = tempfile.mkdtemp(prefix="g", dir="/tmp")
    os.chmod(home, 0o700)
    try:
        _write_agent_conf(home)
        yield gpg_path, home
    finally:
        _destroy_home(gpg_path, home)


def _write_agent_conf(home: str) -> None:
    # gpg-agent re-protects every imported secret key with a freshly calibrated S2K count,
    # which costs 1-2 s of CPU per protected key. That copy dies with this directory moments
    # later (and is only readable by us), so hardening it buys nothing: use the minimum.
    with open(os.path.join(home, "gpg-agent.conf"), "w") as conf:
        conf.write("s2k-count 65536\n")


def _destroy_home(gpg_path: str, home: str) -> None:
    gpgconf = _gpgconf_binary(gpg_path)
    if gpgconf:
        # Stop the agent (it holds unlocked keys in memory) and remove a /run/user socket dir
        # if gpg made one. Failures are harmless: the agent also exits when its socket goes.
        for action in ("--kill", "--remove-socketdir"):
            argv = [gpgconf, "--homedir", home, action] + (["all"] if action == "--kill" else [])
            try:
                subprocess.run(argv, capture_output=True, timeout=10, check=False)
            except (OSError, subprocess.SubprocessError):
                pass
    # The agent may still be writing (e.g. random_seed) while it shuts down: retry briefly.
    for _ in range(20):
        shutil.rmtree(home, ignore_errors=True)
        if not os.path.exists(home):
            return
        time.sleep(0.05)


@contextmanager
def gpg_home() -> Iterator[gnupg.GPG]:
    """A ``gnupg.GPG`` bound to a throw-away GNUPGHOME that is destroyed on exit."""
    import gnupg

    with _throwaway_home() as (gpg_path, home):
        yield gnupg.GPG(gpgbinary=gpg_path, gnupghome=home, encoding="utf-8")


# --------------------------------------------------------------------------- running gpg


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GNUPGHOME", None)  # --homedir is authoritative
    env["LC_ALL"] = "C"  # stable English stderr; status lines are locale independent anyway
    return env


def _base_argv(gpg_path: str, home: str, status_fd: int) -> list[str]:
    return [
        gpg_path,
        "--homedir",
        home,
        "--batch",
        "--no-tty",
        "--yes",
        "--no-greeting",
        "--no-permission-warning",
        "--display-charset",
        "utf-8",
        "--status-fd",
        str(status_fd),
    ]


def _passphrase_argv(passphrase_fd: int) -> list[str]:
    # loopback lets gpg-agent take the passphrase from gpg instead of a pinentry; the value
    # itself travels over a pipe, so only the fd number is visible in argv.
    return ["--pinentry-mode", "loopback", "--passphrase-fd", str(passphrase_fd)]


class _Worker(threading.Thread):
    """A daemon thread that remembers the exception its target raised."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # handed to the main thread, which decides
            self.error = exc


class _GpgProcess:
    """One gpg child: stdin/stdout pipes for data, a status pipe, an optional passphrase pipe.

    stderr and status are drained by threads into bounded buffers so a chatty gpg can never
    block on a full pipe while we are busy with stdin/stdout (the classic deadlock)."""

    def __init__(
        self, gpg_path: str, home: str, args: Sequence[str], passphrase: str | None = None
    ) -> None:
        self.status: list[tuple[str, list[str]]] = []
        self._stderr = bytearray()
        self.bytes_fed = 0
        self.head = b""
        self._workers: list[_Worker] = []
        pass_fd = None if passphrase is None else self._passphrase_pipe(passphrase)
        status_r, status_w = os.pipe()
        child_fds = [status_w]
        argv = _base_argv(gpg_path, home, status_w)
        if pass_fd is not None:
            child_fds.append(pass_fd)
            argv += _passphrase_argv(pass_fd)
        self.argv = argv + list(args)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=child_fds,
                env=_child_env(),
            )
        except OSError as exc:
            os.close(status_r)
            raise GpgUnavailable(f"gpg could not be started: {exc.strerror}") from exc
        finally:
            for fd in child_fds:  # the child has its copies; ours would hide EOF
                os.close(fd)
        # We asked for PIPEs, so these are never None (the casts only tell the type checker).
        self.stdin = cast(io.BufferedWriter, self.proc.stdin)
        self.stdout = cast(io.BufferedReader, self.proc.stdout)
        self._stderr_pipe = cast(io.BufferedReader, self.proc.stderr)
        self.spawn(lambda: self._read_status(status_r), "gpg-status")
        self.spawn(self._read_stderr, "gpg-stderr")

    @staticmethod
    def _passphrase_pipe(passphrase: str) -> int:
        data = passphrase.encode("utf-8") + b"\n"
        if len(data) > 16 * 1024:  # must fit the pipe buffer: we write before gpg reads
            raise PgpKeyError("bad_passphrase", "The passphrase is implausibly long.")
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, data)
        finally:
            os.close(write_fd)
        return read_fd

    def spawn(self, target: Callable[[], None], name: str) -> _Worker:
        worker = _Worker(target, name)
        worker.start()
        self._workers.append(worker)
        return worker

    def _read_status(self, fd: int) -> None:
        with open(fd, "rb") as pipe:
            for raw in pipe:
                if not raw.startswith(b"[GNUPG:] "):
                    continue
                words = raw[9:].decode("utf-8", "replace").split()
                if words and len(self.status) < STATUS_LIMIT:
                    self.status.append((words[0], words[1:]))

    def _read_stderr(self) -> None:
        while chunk := self._stderr_pipe.read1(64 * 1024):
            self._stderr += chunk
            del self._stderr[:-STDERR_LIMIT]

    # -- data pumps

    def feed_from(self, src: BinaryIO) -> _Worker:
        """Copy ``src`` into gpg's stdin in a thread, then close stdin (EOF for gpg)."""
        return self.spawn(lambda: self._feed(src), "gpg-feed")

    def _feed(self, src: BinaryIO) -> None:
        stdin = self.stdin
        try:
            while chunk := src.read(CHUNK_SIZE):
                if len(self.head) < 64:
                    self.head += chunk[: 64 - len(self.head)]
                self.bytes_fed += len(chunk)
                stdin.write(chunk)
        except BrokenPipeError:
            pass  # gpg stopped reading (e.g. wrong key); its status explains why
        except BaseException:
            self.kill()  # unblock whoever waits on gpg's output; the error is re-raised later
            raise
        finally:
            _close_quietly(stdin)

    def copy_to(self, dst: BinaryIO) -> _Worker:
        """Copy gpg's stdout into ``dst`` in a thread."""
        return self.spawn(lambda: self._copy_out(dst), "gpg-copy")

    def _copy_out(self, dst: BinaryIO) -> None:
        try:
            _copy(self.stdout, dst)
        except BaseException:
            self.kill()  # otherwise gpg (and a writer feeding it) would block forever
            raise

    # -- lifecycle

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        return self.proc.returncode

    def join(self, timeout: float | None = None) -> None:
        for worker in self._workers:
            worker.join(timeout)

    def worker_error(self) -> BaseException | None:
        """First exception raised by a thread (in practice: reading src or writing dst)."""
        return next((w.error for w in self._workers if w.error is not None), None)

    def close(self) -> None:
        """Make sure the child is gone and every pipe and thread is released."""
        self.kill()
        _close_quietly(self.stdin)
        _close_quietly(self.stdout)
        self.proc.wait()
        # A feeder blocked in src.read() cannot be interrupted; it is a daemon thread and
        # exits at its next write (BrokenPipe), so do not wait for it forever.
        self.join(timeout=SETTLE_TIMEOUT)

    # -- results

    def has(self, keyword: str) -> bool:
        return any(word == keyword for word, _ in self.status)

    def args_of(self, keyword: str) -> list[list[str]]:
        return [args for word, args in self.status if word == keyword]

    def stderr_summary(self) -> str:
        """gpg's last diagnostic lines, for error messages (gpg never prints secrets there)."""
        lines = self._stderr.decode("utf-8", "replace").splitlines()
        lines = [line.strip() for line in lines if line.startswith("gpg:")]
        unique = list(dict.fromkeys(lines))  # gpg repeats some messages
        return "; ".join(unique[-3:]) or f"gpg exited with status {self.proc.returncode}"


def _close_quietly(pipe: BinaryIO) -> None:
    try:
        pipe.close()
    except OSError:
        pass  # BrokenPipe while flushing: gpg is gone and its status explains why


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    while chunk := src.read(CHUNK_SIZE):
        dst.write(chunk)


@dataclass
class _Result:
    returncode: int
    stdout: bytes
    status: list[tuple[str, list[str]]]
    stderr: str

    def has(self, keyword: str) -> bool:
        return any(word == keyword for word, _ in self.status)


def _run(
    gpg_path: str, home: str, args: Sequence[str], data: bytes = b"", passphrase: str | None = None
) -> _Result:
    """Run a small gpg command to completion (key-sized input and output)."""
    gpg = _GpgProcess(gpg_path, home, args, passphrase)
    out = bytearray()
    try:
        gpg.feed_from(io.BytesIO(data))
        gpg.spawn(lambda: out.extend(gpg.stdout.read()), "gpg-read")
        if gpg.wait(COMMAND_TIMEOUT) < 0:  # wait() kills on timeout
            raise GpgFailed("gpg did not finish (it timed out or crashed).")
        gpg.join()
    finally:
        gpg.close()
    return _Result(gpg.proc.returncode, bytes(out), gpg.status, gpg.stderr_summary())


# --------------------------------------------------------------------------- key inspection


@dataclass
class _Packets:
    """What ``gpg --list-packets`` saw, without importing anything."""

    public_primaries: set[str] = field(default_factory=set)
    secret_primaries: set[str] = field(default_factory=set)
    secret_packets: int = 0


_PACKET_RE = re.compile(r"^:(public|secret) (sub )?key packet:")


def _list_packets(gpg_path: str, home: str, data: bytes) -> _Packets:
    # --list-only: if somebody pasted an encrypted message, do not try to decrypt it.
    result = _run(gpg_path, home, ["--list-only", "--list-packets"], data)
    packets = _Packets()
    current: str | None = None  # "public"/"secret" primary whose keyid line comes next
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith(":"):  # a new packet starts
            match = _PACKET_RE.match(line)
            current = match.group(1) if match and not match.group(2) else None
            packets.secret_packets += bool(match and match.group(1) == "secret")
        elif current and line.strip().startswith("keyid:"):
            keyid = line.split(":", 1)[1].strip()
            target = packets.public_primaries if current == "public" else packets.secret_primaries
            target.add(keyid)
            current = None
    return packets


def _normalise_armor(armored: str) -> bytes:
    """Undo common copy/paste damage (indentation, trailing blanks, CRLF) before gpg sees it."""
    if not isinstance(armored, str) or not armored.strip():
        raise PgpKeyError("garbage", "No key was given.")
    data = "\n".join(line.strip() for line in armored.strip().splitlines()) + "\n"
    encoded = data.encode("utf-8", "replace")
    if len(encoded) > MAX_KEY_SIZE:
        raise PgpKeyError("garbage", "This is far too large to be a PGP key.")
    return encoded


_NOT_A_KEY = "This is not a PGP key (expected an ASCII-armoured key block)."


def _check_public_packets(packets: _Packets) -> None:
    if packets.secret_packets:
        raise PgpKeyError(
            "private_given",
            "This is a PRIVATE key. It was refused and has not been stored anywhere. "
            "Paste the PUBLIC key instead (gpg --armor --export <fingerprint>), and consider "
            "the private key exposed if it was sent over an insecure channel.",
        )
    if not packets.public_primaries:
        raise PgpKeyError("garbage", _NOT_A_KEY)
    if len(packets.public_primaries) > 1:
        raise PgpKeyError("several_keys", _several(len(packets.public_primaries)))


def _check_private_packets(packets: _Packets) -> None:
    if not packets.secret_primaries:
        if packets.public_primaries or packets.secret_packets:
            raise PgpKeyError(
                "public_given",
                "This is a PUBLIC key; a PRIVATE key is needed here "
                "(gpg --armor --export-secret-keys <fingerprint>).",
            )
        raise PgpKeyError("garbage", _NOT_A_KEY)
    # The same key pasted as public + private block is fine; two different keys are not.
    if len(packets.secret_primaries | packets.public_primaries) > 1:
        keys = len(packets.secret_primaries | packets.public_primaries)
        raise PgpKeyError("several_keys", _several(keys))


def _several(count: int) -> str:
    return f"This contains {count} keys; paste exactly one key."


def _import(gpg_path: str, home: str, data: bytes) -> None:
    result = _run(gpg_path, home, ["--import"], data)
    if not result.has("IMPORT_OK"):
        raise PgpKeyError("garbage", f"{_NOT_A_KEY} ({result.stderr})")


@dataclass
class _Key:
    """One pub/sub record of ``--with-colons`` output."""

    validity: str
    length: int | None
    algo: int
    keyid: str
    created: dt.datetime | None
    expires: dt.datetime | None
    caps: str
    curve: str
    fingerprint: str = ""

    @property
    def usable(self) -> bool:
        # r=revoked e=expired i=invalid d=disabled; trust-related values do not matter here.
        return self.validity not in ("r", "e", "i", "d")

    @property
    def name(self) -> str:
        return self.curve or _ALGORITHMS.get(self.algo, f"algorithm {self.algo}")


@dataclass
class _Listing:
    primary: _Key
    user_ids: list[str]
    subkeys: list[_Key]


def _list_key(gpg_path: str, home: str) -> _Listing:
    result = _run(gpg_path, home, ["--with-colons", "--fixed-list-mode", "--list-keys"])
    if result.returncode != 0:
        raise GpgFailed(f"gpg could not list the imported key: {result.stderr}")
    return _parse_listing(result.stdout)


def _parse_listing(stdout: bytes) -> _Listing:
    keys: list[_Key] = []
    user_ids: list[str] = []
    for raw in stdout.splitlines():
        fields = raw.decode("utf-8", "replace").split(":")
        kind = fields[0]
        if kind in ("pub", "sub"):
            keys.append(_parse_key(fields))
        elif kind == "fpr" and keys and not keys[-1].fingerprint:
            keys[-1].fingerprint = fields[9]
        elif kind == "uid" and fields[1] != "r":  # revoked user ids are not the key's name
            user_ids.append(_unescape(fields[9]))
    if not keys:
        raise PgpKeyError("garbage", _NOT_A_KEY)
    return _Listing(primary=keys[0], user_ids=user_ids, subkeys=keys[1:])


def _parse_key(fields: list[str]) -> _Key:
    fields = fields + [""] * (18 - len(fields))
    return _Key(
        validity=fields[1],
        length=int(fields[2]) if fields[2].isdigit() else None,
        algo=int(fields[3]) if fields[3].isdigit() else 0,
        keyid=fields[4],
        created=_timestamp(fields[5]),
        expires=_timestamp(fields[6]),
        caps=fields[11],
        curve=fields[16],
    )


def _timestamp(value: str) -> dt.datetime | None:
    # --fixed-list-mode gives seconds since the epoch; empty/0 means "none".
    if not value.isdigit() or int(value) == 0:
        return None
    return dt.datetime.fromtimestamp(int(value), tz=dt.UTC)


def _unescape(value: str) -> str:
    # --with-colons escapes ':' and control/non-printable bytes as \xHH (on UTF-8 bytes).
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), value.encode())
    return raw.decode("utf-8", "replace")


def _encryption_key(listing: _Listing) -> _Key:
    """The key gpg will encrypt to, or PgpKeyError explaining why there is none."""
    primary = listing.primary
    if primary.validity == "r":
        raise PgpKeyError("revoked", f"Key {primary.fingerprint} has been revoked.")
    if primary.validity == "e":
        when = _date(primary.expires)
        raise PgpKeyError("expired", f"Key {primary.fingerprint} expired{when}.")
    # Lowercase letters are each key's own capabilities (uppercase on the primary summarise
    # the whole key), so "e" alone finds the keys that can encrypt.
    candidates = [k for k in [primary, *listing.subkeys] if "e" in k.caps]
    usable = [k for k in candidates if k.usable]
    if usable:
        # gpg picks the most recently created usable encryption subkey; mirror that.
        return max(usable, key=lambda k: k.created or dt.datetime.min.replace(tzinfo=dt.UTC))
    if candidates and all(k.validity == "e" for k in candidates):
        raise PgpKeyError("expired", f"The encryption subkey of {primary.fingerprint} expired.")
    if candidates and all(k.validity == "r" for k in candidates):
        raise PgpKeyError("revoked", f"The encryption subkey of {primary.fingerprint} is revoked.")
    raise PgpKeyError(
        "no_encryption_subkey",
        f"Key {primary.fingerprint} has no valid encryption subkey (it can only sign), "
        "so files cannot be encrypted to it.",
    )


def _date(value: dt.datetime | None) -> str:
    return f" on {value:%Y-%m-%d}" if value else ""


def _key_info(listing: _Listing, enc: _Key, is_secret: bool) -> KeyInfo:
    primary = listing.primary
    algorithm = primary.name if enc.name == primary.name else f"{primary.name}/{enc.name}"
    # The key stops working at whichever comes first: primary or encryption subkey expiry.
    expiries = [e for e in (primary.expires, enc.expires) if e is not None]
    return KeyInfo(
        fingerprint=primary.fingerprint,
        user_ids=listing.user_ids,
        algorithm=algorithm,
        length=primary.length,
        created=primary.created,
        expires=min(expiries) if expiries else None,
        is_secret=is_secret,
        can_encrypt=True,
    )


def _load_public(gpg_path: str, home: str, armored: str) -> KeyInfo:
    """Validate ``armored`` as exactly one usable public key and import it into ``home``."""
    data = _normalise_armor(armored)
    _check_public_packets(_list_packets(gpg_path, home, data))
    _import(gpg_path, home, data)
    listing = _list_key(gpg_path, home)
    return _key_info(listing, _encryption_key(listing), is_secret=False)


def _load_private(gpg_path: str, home: str, armored: str) -> _Listing:
    """Validate ``armored`` as exactly one private key and import it into ``home``."""
    data = _normalise_armor(armored)
    _check_private_packets(_list_packets(gpg_path, home, data))
    _import(gpg_path, home, data)
    return _list_key(gpg_path, home)


def inspect_public_key(armored: str) -> KeyInfo:
    """Describe a partner's public key, or raise ``PgpKeyError`` saying why it is unusable.

    A private key is detected before anything is imported and refused."""
    with _throwaway_home() as (gpg_path, home):
        return _load_public(gpg_path, home, armored)


def inspect_private_key(armored: str, passphrase: str | None) -> KeyInfo:
    """Describe one of our private keys and PROVE the passphrase unlocks it.

    The proof is real: a test message is encrypted to the key and decrypted with it, which
    exercises exactly what imports need (the secret encryption subkey and its passphrase)."""
    with _throwaway_home() as (gpg_path, home):
        listing = _load_private(gpg_path, home, armored)
        info = _key_info(listing, _encryption_key(listing), is_secret=True)
        _prove_unlock(gpg_path, home, info.fingerprint, passphrase)
        return info


def _prove_unlock(gpg_path: str, home: str, fingerprint: str, passphrase: str | None) -> None:
    probe = b"lyticsops passphrase probe"
    enc_args = ["--trust-model", "always", "--recipient", fingerprint, "--encrypt"]
    encrypted = _run(gpg_path, home, enc_args, probe)
    if encrypted.returncode != 0 or not encrypted.stdout:
        raise GpgFailed(f"gpg could not encrypt a test message: {encrypted.stderr}")
    # An empty passphrase is sent even when none was given: gpg then reports "no passphrase"
    # for a protected key instead of waiting for a pinentry.
    result = _run(gpg_path, home, _decrypt_args(), encrypted.stdout, passphrase or "")
    if result.returncode == 0 and result.stdout == probe:
        return
    error = _pkdecrypt_error(result.status)
    if error in (_GPG_ERR_BAD_PASSPHRASE, _GPG_ERR_NO_PASSPHRASE) and not passphrase:
        raise PgpKeyError(
            "passphrase_required", "This private key is protected: enter its passphrase."
        )
    if error == _GPG_ERR_BAD_PASSPHRASE:
        raise PgpKeyError("bad_passphrase", "The passphrase does not unlock this private key.")
    if result.has("NO_SECKEY"):
        raise PgpKeyError(
            "no_encryption_subkey",
            "The secret part of the encryption subkey is missing from this export, "
            "so it cannot decrypt anything.",
        )
    raise PgpKeyError("bad_passphrase", f"The private key could not be unlocked ({result.stderr}).")


def _pkdecrypt_error(status: list[tuple[str, list[str]]]) -> int | None:
    for word, args in status:
        if word == "ERROR" and args[:1] == ["pkdecrypt_failed"] and args[1:2]:
            return int(args[1]) & 0xFFFF if args[1].isdigit() else None
    return None


# --------------------------------------------------------------------------- encryption


def _encrypt_args(fingerprint: str, armor: bool) -> list[str]:
    args = ["--trust-model", "always", "--no-encrypt-to", "--recipient", fingerprint]
    return args + (["--armor"] if armor else []) + ["--encrypt"]


def _check_encrypted(gpg: _GpgProcess) -> None:
    if gpg.has("INV_RECP"):
        raise PgpKeyError("no_encryption_subkey", "gpg refused to encrypt to this key.")
    if gpg.proc.returncode != 0 or not gpg.has("END_ENCRYPTION"):
        raise GpgFailed(f"Encryption failed: {gpg.stderr_summary()}")


def encrypt_stream(src: BinaryIO, dst: BinaryIO, public_key: str, armor: bool = False) -> None:
    """Encrypt ``src`` to ``public_key`` into ``dst``, streaming (constant memory).

    The key is validated (expired/revoked/sign-only -> ``PgpKeyError``) before ``src`` is read.
    On failure ``dst`` holds partial output that must be discarded."""
    with _throwaway_home() as (gpg_path, home):
        info = _load_public(gpg_path, home, public_key)
        gpg = _GpgProcess(gpg_path, home, _encrypt_args(info.fingerprint, armor))
        try:
            gpg.feed_from(src)
            _copy_stdout(gpg, dst)
            gpg.wait()
            gpg.join()
            _raise_worker_error(gpg)
            _check_encrypted(gpg)
        finally:
            gpg.close()


def _copy_stdout(gpg: _GpgProcess, dst: BinaryIO) -> None:
    try:
        _copy(gpg.stdout, dst)
    except BaseException:
        gpg.kill()  # the feeder gets BrokenPipe and stops; close() reaps everything
        raise


def _raise_worker_error(gpg: _GpgProcess) -> None:
    # Raised as is (not wrapped) so callers can tell e.g. a dropped connection from bad data.
    # Inside an except block Python chains the caller's exception as __context__.
    error = gpg.worker_error()
    if error is not None:
        raise error


@contextmanager
def open_encrypting(dst: BinaryIO, public_key: str, armor: bool = False) -> Iterator[BinaryIO]:
    """Yield a writable binary file; what is written is encrypted to ``public_key`` into ``dst``.

    A thread copies gpg's output to ``dst`` while the caller writes. Leaving the block
    normally finishes the encryption and raises if gpg or ``dst`` failed. Flush (or
    ``detach()``) any text wrapper before leaving the block."""
    with _throwaway_home() as (gpg_path, home):
        info = _load_public(gpg_path, home, public_key)
        gpg = _GpgProcess(gpg_path, home, _encrypt_args(info.fingerprint, armor))
        try:
            gpg.copy_to(dst)
            try:
                yield gpg.stdin
            except BaseException as exc:
                gpg.kill()
                gpg.join(timeout=SETTLE_TIMEOUT)
                if isinstance(exc, Exception):  # a dst failure is the real cause
                    _raise_worker_error(gpg)
                raise
            _close_quietly(gpg.stdin)
            gpg.join()  # copier ends at gpg's EOF
            gpg.wait()
            _raise_worker_error(gpg)
            _check_encrypted(gpg)
        finally:
            gpg.close()


# --------------------------------------------------------------------------- decryption


def _decrypt_args() -> list[str]:
    # --skip-verify: partners often sign+encrypt; we have no signer keys, and a failed
    # verification would make gpg exit with status 2 although decryption was fine.
    return ["--skip-verify", "--decrypt"]


class _EofTrackingReader(io.RawIOBase):
    """gpg's stdout, remembering whether EOF was reached (i.e. gpg finished writing)."""

    def __init__(self, pipe: io.BufferedReader) -> None:
        self._pipe = pipe
        self.at_eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._pipe.read1(len(buffer))
        if not data:
            self.at_eof = True
        buffer[: len(data)] = data
        return len(data)


def _check_decrypted(gpg: _GpgProcess, fingerprint: str) -> None:
    """Raise ``PgpDecryptError`` unless gpg positively reported a complete, intact decryption.

    Success needs all of: exit status 0, DECRYPTION_OKAY and GOODMDC (integrity verified), and
    public-key decryption (a password-encrypted message would otherwise be "decrypted" with our
    key passphrase)."""
    ok = gpg.proc.returncode == 0 and gpg.has("DECRYPTION_OKAY") and gpg.has("GOODMDC")
    bad = gpg.has("BADMDC") or gpg.has("DECRYPTION_FAILED")
    symmetric = gpg.has("NEED_PASSPHRASE_SYM") and not gpg.has("DECRYPTION_KEY")
    if ok and not bad and not symmetric:
        return
    raise _decrypt_failure(gpg, fingerprint, symmetric)


def _decrypt_failure(gpg: _GpgProcess, fingerprint: str, symmetric: bool) -> PgpDecryptError:
    if gpg.bytes_fed == 0:
        return PgpDecryptError("The file is empty: it is not PGP data.", "not_pgp")
    if symmetric:
        return PgpDecryptError(
            "The file is encrypted with a password, not to a PGP key; it cannot be used.",
            "symmetric",
        )
    error = _pkdecrypt_error(gpg.status)
    if error == _GPG_ERR_NO_PASSPHRASE:
        message = "The private key is protected and no passphrase is set."
        return PgpDecryptError(message, "passphrase_required")
    if error == _GPG_ERR_BAD_PASSPHRASE:
        return PgpDecryptError("The passphrase does not unlock the private key.", "bad_passphrase")
    if gpg.has("NO_SECKEY") and not gpg.has("DECRYPTION_KEY"):
        return PgpDecryptError(
            f"The file is encrypted to a different key ({_key_ids(gpg)}), not to {fingerprint}.",
            "wrong_key",
        )
    if error is not None:  # our key was tried but failed for another reason
        return PgpDecryptError(
            f"The private key could not decrypt the file ({gpg.stderr_summary()})."
        )
    encrypted = gpg.has("BEGIN_DECRYPTION") or gpg.has("ENC_TO")
    if not encrypted and gpg.has("PLAINTEXT"):  # valid OpenPGP (signed/stored), not encrypted
        return PgpDecryptError("The file is PGP data but is not encrypted.", "not_encrypted")
    if encrypted or looks_like_pgp(gpg.head):
        return PgpDecryptError(
            f"Corrupt or truncated PGP data ({gpg.stderr_summary()}).", "corrupt"
        )
    if gpg.has("NODATA") or gpg.has("FAILURE"):
        return PgpDecryptError("The file is not PGP data (it is not encrypted).", "not_pgp")
    return PgpDecryptError(f"Decryption failed ({gpg.stderr_summary()}).", "failed")


def _key_ids(gpg: _GpgProcess) -> str:
    ids = [args[0] for args in gpg.args_of("NO_SECKEY") if args]
    # All zeros: the sender hid the recipient (gpg --throw-keyids).
    shown = ["hidden recipient" if set(i) == {"0"} else i for i in dict.fromkeys(ids)]
    return "key id " + ", ".join(shown)


@contextmanager
def open_decrypted(src: BinaryIO, private_key: str, passphrase: str | None) -> Iterator[BinaryIO]:
    """Yield a readable binary file streaming the plaintext of ``src`` while it is read.

    WARNING: gpg emits plaintext BEFORE it has verified the integrity (MDC) of the whole
    message, so what the block reads is only trustworthy once the ``with`` statement has been
    left WITHOUT an exception. Leaving the block reads (and discards) any unread rest so the
    check can complete, then raises ``PgpDecryptError`` if decryption failed.

    If the block itself raises, gpg is stopped; when gpg had already failed (e.g. the block
    choked on the truncated plaintext of a corrupt file) the ``PgpDecryptError`` is raised
    instead, chained to the block's exception. Errors reading ``src`` take precedence over both.
    Key problems (not a private key, several keys) raise ``PgpKeyError`` before ``src`` is read;
    an expired or revoked key is still used, since files encrypted to it before must stay
    readable."""
    with _throwaway_home() as (gpg_path, home):
        fingerprint = _load_private(gpg_path, home, private_key).primary.fingerprint
        gpg = _GpgProcess(gpg_path, home, _decrypt_args(), passphrase or "")
        try:
            gpg.feed_from(src)
            raw = _EofTrackingReader(gpg.stdout)
            try:
                yield io.BufferedReader(raw, CHUNK_SIZE)
            except Exception as exc:
                _settle_after_error(gpg, raw, fingerprint, exc)
                raise
            while gpg.stdout.read(CHUNK_SIZE):
                pass  # drain what the block left unread, so gpg reaches the MDC check
            gpg.wait()
            gpg.join()
            _raise_worker_error(gpg)
            _check_decrypted(gpg, fingerprint)
        finally:
            gpg.close()


def _settle_after_error(
    gpg: _GpgProcess, raw: _EofTrackingReader, fingerprint: str, exc: Exception
) -> None:
    """The caller's block raised: find out whether gpg's failure is the real cause."""
    if raw.at_eof:
        gpg.wait(SETTLE_TIMEOUT)  # gpg finished writing; its verdict is moments away
    else:
        gpg.kill()
    gpg.join(timeout=SETTLE_TIMEOUT)
    _raise_worker_error(gpg)
    if gpg.proc.returncode is not None and gpg.proc.returncode >= 0:  # not killed by us
        _check_decrypted(gpg, fingerprint)  # chained to the block's exception as __context__


def decrypt_stream(src: BinaryIO, dst: BinaryIO, private_key: str, passphrase: str | None) -> None:
    """Decrypt ``src`` into ``dst`` with our private key, streaming (constant memory).

    WARNING: gpg writes plaintext to ``dst`` BEFORE the integrity check (MDC) at the end of
    the message has passed. ``dst`` is valid only if this function returns without raising;
    on ``PgpDecryptError`` its content must be discarded."""
    with open_decrypted(src, private_key, passphrase) as plain:
        _copy(plain, dst)


# --------------------------------------------------------------------------- sniffing

# Packets an OpenPGP message can start with, and a sanity check of each one's first body
# byte (version / algorithm / format). The check keeps e.g. UTF-8 text starting with "Ã"
# (0xC3, which is also a new-format SKESK header) from being mistaken for PGP.
_FIRST_BODY_BYTE: dict[int, Callable[[int], bool]] = {
    1: lambda b: b in (3, 6),  # public-key encrypted session key: version
    3: lambda b: b in (4, 5, 6),  # symmetric-key encrypted session key: version
    8: lambda b: b in (0, 1, 2, 3),  # compressed data: algorithm
    10: lambda b: b == ord("P"),  # marker packet: literally "PGP"
    11: lambda b: b in b"btul1m",  # literal data: format
    18: lambda b: b in (1, 2),  # sym. encrypted integrity protected data: version
    20: lambda b: b == 1,  # AEAD encrypted data: version
}
_ARMOR_HEADER = b"-----BEGIN PGP MESSAGE-----"


def looks_like_pgp(head: bytes) -> bool:
    """Cheap sniff of the first bytes of a file: armored or binary OpenPGP message?"""
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_ARMOR_HEADER):
        return True
    if not head or not head[0] & 0x80:
        return False
    tag, body = _packet_header(head)
    if tag not in _FIRST_BODY_BYTE:
        return False
    if body is None or body >= len(head):
        return True  # too short to check further; the header alone matches
    return _FIRST_BODY_BYTE[tag](head[body])


def _packet_header(head: bytes) -> tuple[int, int | None]:
    """(packet tag, offset of the body or None if unknown) for the packet at ``head[0]``."""
    first = head[0]
    if first & 0x40:  # new format: tag in 6 bits, then a 1/2/5-octet or partial length
        tag = first & 0x3F
        if len(head) < 2:
            return tag, None
        octet = head[1]
        if octet < 192 or 224 <= octet < 255:  # one-octet or partial body length
            return tag, 2
        return tag, 3 if octet < 224 else 6
    tag = (first >> 2) & 0x0F  # old format: tag in 4 bits, length type in 2
    return tag, 1 + {0: 1, 1: 2, 2: 4, 3: 0}[first & 0x03]
