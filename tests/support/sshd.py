"""SSH/SFTP servers and SSH keys for tests, all real and all local (127.0.0.1).

Fixtures (plug in with ``pytest_plugins = ["tests.support.sshd"]``):

* ``sshd`` - a real OpenSSH sshd in its own temp dir, key authentication only.
  The sftp login directory is the test's ``data_dir``: ``ForceCommand internal-sftp -d
  <data_dir>`` applies to subsystem requests too (sshd logs "forced-command (config)
  'internal-sftp -d ...'"), and relative paths resolve there; no chroot is needed.
* ``password_sftp_server`` - a small paramiko SFTP server accepting a password (and,
  optionally, public keys), for the key-then-password fallback; it can also stall.
* ``ssh_keypair`` - a factory of key pairs made by the real ``ssh-keygen``, and
  ``putty_key()`` for a .ppk made by ``puttygen`` (skips when puttygen is missing).
"""

from __future__ import annotations

import getpass
import hmac
import io
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 10.0


def free_port() -> int:
    """A port nothing listens on right now (tiny race: fine for tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def keygen_fingerprint(public_key_file: Path) -> str:
    """SHA256:... as `ssh-keygen -l` prints it."""
    return _run("ssh-keygen", "-l", "-f", str(public_key_file)).split()[1]


# ---------------------------------------------------------------- real OpenSSH


class Sshd:
    """A real OpenSSH server on 127.0.0.1, public key authentication only."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = getpass.getuser()
        self.data_dir = base / "data"
        self.data_dir.mkdir()
        self.authorized_keys = base / "authorized_keys"
        self.authorized_keys.touch()
        self.host_key = base / "ssh_host_ed25519_key"
        self.config = base / "sshd_config"
        self.log_file = base / "sshd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._new_host_key()
        self._write_config()

    @property
    def host_key_fingerprint(self) -> str:
        return keygen_fingerprint(self.host_key.with_suffix(".pub"))

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def authorize(self, public_key_line: str) -> None:
        with self.authorized_keys.open("a") as fh:
            fh.write(public_key_line.strip() + "\n")

    def start(self) -> None:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.log_file.write_text("")
        command = [SSHD, "-D", "-e", "-f", str(self.config)]
        if shutil.which("setpriv"):
            # if pytest is killed before teardown (CI timeout), sshd must not outlive it
            command = ["setpriv", "--pdeathsig", "TERM", *command]
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._wait_listening()

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart_with_new_host_key(self) -> None:
        self.stop()
        self._new_host_key()
        self.start()

    def _new_host_key(self) -> None:
        for path in (self.host_key, self.host_key.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(self.host_key))

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.base / 'sshd.pid'}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin yes",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "UseDNS no",
            "Subsystem sftp internal-sftp",
            # Applies to subsystem requests too: the sftp login dir becomes data_dir.
            f"ForceCommand internal-sftp -d {self.data_dir}",
            "LogLevel VERBOSE",
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if "Server listening on" in self.log:
                return
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"sshd exited at start:\n{self.log}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not start listening in {START_TIMEOUT} s:\n{self.log}")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not Path(SSHD).exists():
        pytest.skip(f"OpenSSH server not installed ({SSHD} missing)")
    base = tmp_path / "sshd"
    base.mkdir()
    server = Sshd(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- paramiko server


class _Handle(paramiko.SFTPHandle):
    """A file handle whose write covering byte ``fail_at`` fails (a bad sector)."""

    fail_at: int | None = None

    def write(self, offset: int, data: bytes) -> int:
        if self.fail_at is not None and offset <= self.fail_at < offset + len(data):
            return paramiko.SFTP_FAILURE
        return super().write(offset, data)


class _Sftp(paramiko.SFTPServerInterface):
    """Serves one directory; every client path (relative or absolute) is inside it."""

    def __init__(self, server: paramiko.ServerInterface, *, owner: PasswordSftpServer) -> None:
        super().__init__(server)
        self._owner = owner
        self._root = owner.data_dir.resolve()

    def _local(self, path: str) -> Path:
        relative = os.path.normpath("/" + path).lstrip("/")
        return self._root / relative if relative else self._root

    def canonicalize(self, path: str) -> str:
        return "/" + os.path.normpath("/" + path).lstrip("/")

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        time.sleep(self._owner.stall_seconds)  # lets tests see a stalled server
        try:
            folder = self._local(path)
            return [
                paramiko.SFTPAttributes.from_stat(os.lstat(folder / name), name)
                for name in os.listdir(folder)
            ]
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.lstat(self._local(path)))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle:
        if Path(path).name.startswith("forbidden"):
            return paramiko.SFTP_PERMISSION_DENIED
        try:
            fd = os.open(self._local(path), flags, 0o644)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        if flags & os.O_WRONLY:
            mode = "ab" if flags & os.O_APPEND else "wb"
        elif flags & os.O_RDWR:
            mode = "a+b" if flags & os.O_APPEND else "r+b"
        else:
            mode = "rb"
        handle = _Handle(flags)
        handle.fail_at = self._owner.fail_write_at
        handle.filename = str(self._local(path))
        handle.readfile = handle.writefile = os.fdopen(fd, mode)
        return handle

    def _call(self, func: Callable[[], object]) -> int:
        try:
            func()
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        return paramiko.SFTP_OK

    def remove(self, path: str) -> int:
        return self._call(lambda: os.remove(self._local(path)))

    def rename(self, oldpath: str, newpath: str) -> int:
        new = self._local(newpath)
        if new.exists():  # plain SFTP rename must not overwrite
            return paramiko.SFTP_FAILURE
        return self._call(lambda: os.rename(self._local(oldpath), new))

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._call(lambda: os.replace(self._local(oldpath), self._local(newpath)))

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return self._call(lambda: os.mkdir(self._local(path)))

    def rmdir(self, path: str) -> int:
        return self._call(lambda: os.rmdir(self._local(path)))

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return paramiko.SFTP_OK


class _Auth(paramiko.ServerInterface):
    def __init__(self, owner: PasswordSftpServer) -> None:
        self._owner = owner

    def get_allowed_auths(self, username: str) -> str:
        return ",".join(self._owner.allowed_auths)

    def check_auth_password(self, username: str, password: str) -> int:
        owner = self._owner
        ok = (
            "password" in owner.allowed_auths
            and username == owner.username
            and hmac.compare_digest(password.encode(), owner.password.encode())
        )
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        owner = self._owner
        ok = (
            "publickey" in owner.allowed_auths
            and username == owner.username
            and key.asbytes() in owner.public_keys
        )
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_interactive(self, username: str, submethods: str) -> object:
        # how OpenSSH with PAM asks for passwords: one keyboard-interactive prompt
        if "keyboard-interactive" not in self._owner.allowed_auths:
            return paramiko.AUTH_FAILED
        self._kbd_user = username
        return paramiko.InteractiveQuery("", "", ("Password: ", False))

    def check_auth_interactive_response(self, responses: list[str]) -> int:
        owner = self._owner
        ok = (
            getattr(self, "_kbd_user", None) == owner.username
            and len(responses) == 1
            and hmac.compare_digest(responses[0].encode(), owner.password.encode())
        )
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class PasswordSftpServer:
    """paramiko SFTP server in background threads: password auth, optional public keys."""

    sftp_handler: type[paramiko.SFTPServerInterface] = _Sftp

    def __init__(self, data_dir: Path) -> None:
        self.host = "127.0.0.1"
        self.username = "partner"
        self.password = "s3cret-Pa55"
        self.data_dir = data_dir
        self.allowed_auths = ["publickey", "password"]
        self.public_keys: set[bytes] = set()
        self.stall_seconds = 0.0  # list_folder sleeps this long
        self.fail_write_at: int | None = None  # the write covering this offset fails
        # files named forbidden* cannot be opened (permission denied)
        self._host_key = _ed25519_paramiko_key()
        self.host_key_fingerprint = self._host_key.fingerprint  # "SHA256:..." as OpenSSH
        self._listener = socket.create_server((self.host, 0))
        self.port = self._listener.getsockname()[1]
        self._transports: list[paramiko.Transport] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="test-sftp")

    def accept_public_key(self, line: str) -> None:
        import base64

        self.public_keys.add(base64.b64decode(line.split()[1]))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for transport in self._transports:
            transport.close()

    def _serve(self) -> None:
        # close() from another thread does not wake a blocked accept(): poll instead. The
        # loop keeps its own listener and event: a subclass may restart with new ones.
        listener, stopping = self._listener, self._stopping
        listener.settimeout(0.05)
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed by stop()
            conn.settimeout(None)
            transport = paramiko.Transport(conn)
            transport.add_server_key(self._host_key)
            transport.set_subsystem_handler(
                "sftp", paramiko.SFTPServer, self.sftp_handler, owner=self
            )
            self._transports.append(transport)
            try:
                transport.start_server(server=_Auth(self))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()


def _ed25519_paramiko_key() -> paramiko.PKey:
    text = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(text.decode()))


@pytest.fixture
def password_sftp_server(tmp_path: Path) -> Iterator[PasswordSftpServer]:
    data_dir = tmp_path / "password-sftp"
    data_dir.mkdir()
    server = PasswordSftpServer(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    private: str  # the private key file's text
    public: str  # the .pub line
    path: Path  # private key file; public key at path + ".pub"
    passphrase: str = ""

    @property
    def fingerprint(self) -> str:
        return keygen_fingerprint(Path(f"{self.path}.pub"))


class KeyMaker:
    """Makes key pairs with the real ssh-keygen (and puttygen) in a temp dir."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._count = 0
        self._made: dict[tuple, KeyPair] = {}

    def __call__(
        self,
        kind: str = "ed25519",
        bits: int | None = None,
        passphrase: str = "",
        fmt: str | None = None,
        comment: str = "test@lyticsops",
    ) -> KeyPair:
        """kind: ed25519, rsa, ecdsa, dsa; fmt: None (OpenSSH), "PEM" or "PKCS8".

        Same arguments, same key (RSA generation is slow); vary ``comment`` for another.
        """
        wanted = (kind, bits, passphrase, fmt, comment)
        if wanted not in self._made:
            self._made[wanted] = self._make(*wanted)
        return self._made[wanted]

    def _make(
        self, kind: str, bits: int | None, passphrase: str, fmt: str | None, comment: str
    ) -> KeyPair:
        path = self._next_path(kind)
        args = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", comment, "-f", str(path)]
        if bits:
            args += ["-b", str(bits)]
        if fmt:
            args += ["-m", fmt]
        _run(*args)
        return KeyPair(
            private=path.read_text(),
            public=Path(f"{path}.pub").read_text().strip(),
            path=path,
            passphrase=passphrase,
        )

    def putty_key(self) -> str:
        """Text of a .ppk private key made by puttygen (skips the test without puttygen)."""
        if shutil.which("puttygen") is None:
            pytest.skip("puttygen not installed (apt-get install putty-tools)")
        path = self._next_path("putty").with_suffix(".ppk")
        _run(
            "puttygen",
            "-q",
            "-t",
            "ed25519",
            "--new-passphrase",
            os.devnull,  # empty passphrase, no prompt
            "-o",
            str(path),
        )
        return path.read_text()

    def rfc4716_public(self, pair: KeyPair) -> str:
        """The public key as `ssh-keygen -e` (and PuTTYgen's "Save public key") write it."""
        return _run("ssh-keygen", "-e", "-f", f"{pair.path}.pub")

    def _next_path(self, kind: str) -> Path:
        self._count += 1
        return self.base / f"key{self._count}_{kind}"


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyMaker:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed")
    return KeyMaker(tmp_path_factory.mktemp("sshkeys"))
