"""transfers.sftp against a real OpenSSH sshd and a small paramiko password server."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest

from transfers.sftp import SftpError, SftpTarget, connect, test_connection

if TYPE_CHECKING:  # imported by pytest_plugins; importing it here would defeat rewriting
    from tests.support.sshd import KeyMaker, KeyPair, PasswordSftpServer, Sshd


@pytest.fixture(scope="module")
def client_key(ssh_keypair: KeyMaker) -> KeyPair:
    return ssh_keypair("ed25519", comment="lyticsops-client")


@pytest.fixture(scope="module")
def stranger_key(ssh_keypair: KeyMaker) -> KeyPair:
    return ssh_keypair("ed25519", comment="not-authorized")


@pytest.fixture
def server(sshd: Sshd, client_key: KeyPair) -> Sshd:
    sshd.authorize(client_key.public)
    return sshd


def target_for(server: Sshd, key: KeyPair, **changes) -> SftpTarget:
    fields = dict(
        host=server.host,
        port=server.port,
        username=server.user,
        private_key=key.private,
        timeout=5.0,
    )
    fields.update(changes)
    return SftpTarget(**fields)


def raises_sftp(func, *args, **kwargs) -> SftpError:
    with pytest.raises(SftpError) as info:
        func(*args, **kwargs)
    return info.value


# ---------------------------------------------------------------- connecting to real sshd


def test_key_auth_and_report(server, client_key):
    (server.data_dir / "a.csv").write_text("x")
    (server.data_dir / "sub").mkdir()
    report = test_connection(target_for(server, client_key))
    assert report.ok, report.message
    assert report.auth_method == "publickey"
    assert report.fingerprint == server.host_key_fingerprint
    assert report.host_key_type == "ssh-ed25519"
    assert report.entries == 2
    assert report.error_kind is None
    assert f"connected to 127.0.0.1:{server.port} as '{server.user}' with public key" in (
        report.message
    )
    assert "not pinned yet" in report.message


def test_login_directory_is_the_forced_data_dir(server, client_key):
    with connect(target_for(server, client_key)) as session:
        assert session._client.normalize(".") == str(server.data_dir)
        session.upload(io.BytesIO(b"hello"), "hello.txt")
    assert (server.data_dir / "hello.txt").read_bytes() == b"hello"
    assert "forced-command (config) 'internal-sftp -d" in server.log


def test_pinned_fingerprint_accepted_in_any_spelling(server, client_key):
    pin = server.host_key_fingerprint
    for spelling in (pin, pin[len("SHA256:") :], pin + "=", f"  {pin}  "):
        report = test_connection(target_for(server, client_key, pinned_fingerprint=spelling))
        assert report.ok, report.message
        assert "not pinned" not in report.message


def test_refused_key_is_an_auth_error_in_plain_words(server, stranger_key):
    error = raises_sftp(connect, target_for(server, stranger_key))
    assert error.kind == "auth" and error.retryable is False
    assert error.message == f"authentication failed for user '{server.user}' (tried: public key)"
    assert error.host_key_fingerprint == server.host_key_fingerprint


def test_password_against_key_only_server_says_so(server, stranger_key):
    error = raises_sftp(connect, target_for(server, stranger_key, password="hunter2"))
    assert error.kind == "auth"
    assert "(tried: public key)" in error.message
    assert "the server does not accept passwords (it accepts: publickey)" in error.message
    assert "hunter2" not in error.message


def test_no_credentials(server):
    target = SftpTarget(host=server.host, port=server.port, username="u", timeout=5)
    error = raises_sftp(connect, target)
    assert error.kind == "auth"
    assert "no private key or password" in error.message


def test_unusable_local_key_fails_before_connecting(client_key):
    target = SftpTarget(host="127.0.0.1", port=1, username="u", private_key="not a key")
    error = raises_sftp(connect, target)
    assert error.kind == "key" and error.retryable is False
    assert error.message.startswith("our private key cannot be used: ")


def test_dns_failure():
    target = SftpTarget(host="no-such-host.invalid", username="u", password="p", timeout=5)
    report = test_connection(target)
    assert not report.ok
    assert report.error_kind == "dns"
    assert report.message.startswith("DNS lookup of 'no-such-host.invalid' failed")


@pytest.mark.parametrize(
    ("code", "retryable"), [(socket.EAI_AGAIN, True), (socket.EAI_NONAME, False)]
)
def test_dns_retryable_only_for_temporary_failures(monkeypatch, code, retryable):
    def fail(*args, **kwargs):
        raise socket.gaierror(code, "resolver says no")

    monkeypatch.setattr(socket, "create_connection", fail)
    error = raises_sftp(connect, SftpTarget(host="partner.example", username="u", password="p"))
    assert (error.kind, error.retryable) == ("dns", retryable)


def test_connection_refused():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = raises_sftp(connect, SftpTarget("127.0.0.1", port, "u", password="p"))
    assert (error.kind, error.retryable) == ("refused", True)
    assert error.message == f"connection to 127.0.0.1:{port} refused"


def test_silent_server_times_out():
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never says a word
        port = listener.getsockname()[1]
        started = time.monotonic()
        error = raises_sftp(connect, SftpTarget("127.0.0.1", port, "u", password="p", timeout=1))
        elapsed = time.monotonic() - started
    assert (error.kind, error.retryable) == ("timeout", True)
    assert error.message.startswith("timed out after 1 s")
    assert f"127.0.0.1:{port}" in error.message
    assert elapsed < 4


def test_server_hanging_up_at_once_is_a_reset():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        error = raises_sftp(connect, SftpTarget("127.0.0.1", port, "u", password="p", timeout=3))
    finally:
        thread.join(timeout=3)
        listener.close()
    assert (error.kind, error.retryable) == ("reset", True)


def test_folder_missing(server, client_key):
    error = raises_sftp(connect, target_for(server, client_key, folder="nope"))
    assert error.kind == "folder_missing" and not error.retryable
    assert error.message == "folder 'nope' does not exist on the server"
    report = test_connection(target_for(server, client_key, folder="nope/deeper"))
    assert (report.ok, report.error_kind) == (False, "folder_missing")
    assert report.fingerprint == server.host_key_fingerprint


def test_folder_that_is_a_file(server, client_key):
    (server.data_dir / "plain.txt").write_text("x")
    error = raises_sftp(connect, target_for(server, client_key, folder="plain.txt"))
    assert error.kind == "folder_missing"
    assert "not a folder" in error.message


def test_host_key_pin_mismatch_after_rekey(server, client_key):
    old = server.host_key_fingerprint
    target = target_for(server, client_key, pinned_fingerprint=old)
    assert test_connection(target).ok
    server.restart_with_new_host_key()
    new = server.host_key_fingerprint
    assert new != old
    error = raises_sftp(connect, target)
    assert (error.kind, error.retryable) == ("host_key_mismatch", False)
    assert f"pinned {old}, server offered {new}" in error.message
    assert "clear the pin" in error.message
    report = test_connection(target)
    assert (report.ok, report.error_kind, report.fingerprint) == (False, "host_key_mismatch", new)


# ---------------------------------------------------------------- file operations


def test_download_upload_round_trip(server, client_key):
    payload = os.urandom(5 * 1024 * 1024 + 12345)  # not a multiple of any block size
    digest = hashlib.sha256(payload).hexdigest()
    (server.data_dir / "inbox").mkdir()
    progress: list[int] = []
    with connect(target_for(server, client_key, folder="inbox")) as session:
        sent = session.upload(io.BytesIO(payload), "up.bin", progress=progress.append)
        assert sent == len(payload)
        assert progress[-1] == len(payload) and progress == sorted(progress)
        on_disk = (server.data_dir / "inbox" / "up.bin").read_bytes()
        assert hashlib.sha256(on_disk).hexdigest() == digest

        out = io.BytesIO()
        progress.clear()
        assert session.download("up.bin", out, progress=progress.append) == len(payload)
        assert hashlib.sha256(out.getvalue()).hexdigest() == digest
        assert progress[-1] == len(payload)

        with session.open_read("up.bin") as stream:
            head = stream.read(10)
            rest = stream.read()
        assert hashlib.sha256(head + rest).hexdigest() == digest

        assert session.stat("up.bin").size == len(payload)


def test_empty_and_small_files(server, client_key):
    with connect(target_for(server, client_key)) as session:
        assert session.upload(io.BytesIO(b""), "empty") == 0
        assert session.stat("empty").size == 0
        out = io.BytesIO()
        assert session.download("empty", out) == 0
        with session.open_write("lines.csv") as fh:
            for i in range(1000):
                fh.write(f"{i},row\n".encode())
        expected = "".join(f"{i},row\n" for i in range(1000))
        assert (server.data_dir / "lines.csv").read_text() == expected
        with session.open_read("lines.csv") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8")
            assert sum(1 for _ in text) == 1000


def test_list_rename_remove(server, client_key):
    inbox = server.data_dir / "inbox"
    inbox.mkdir()
    (inbox / "b.csv").write_bytes(b"bb")
    (inbox / "a.csv").write_bytes(b"a")
    (inbox / "done").mkdir()
    os.utime(inbox / "a.csv", (1_700_000_000, 1_700_000_000))
    with connect(target_for(server, client_key, folder="inbox")) as session:
        files = session.list_files()
        assert [(f.name, f.size, f.is_dir) for f in files] == [
            ("a.csv", 1, False),
            ("b.csv", 2, False),
        ]
        assert files[0].mtime == 1_700_000_000
        assert [f.name for f in session.list_files(include_dirs=True)] == ["a.csv", "b.csv", "done"]

        session.rename("a.csv", "done/a.csv")
        session.rename("b.csv", "done/a.csv")  # replaces the target (posix-rename)
        assert (inbox / "done" / "a.csv").read_bytes() == b"bb"
        assert session._posix_rename is True
        assert not session.exists("a.csv") and session.exists("done/a.csv")

        session.mkdir("new")
        assert (inbox / "new").is_dir()
        session.remove("done/a.csv")
        assert not (inbox / "done" / "a.csv").exists()
        assert session.list_files() == []


def test_missing_file_errors(server, client_key):
    (server.data_dir / "inbox").mkdir()
    with connect(target_for(server, client_key, folder="inbox")) as session:
        for call in (
            lambda: session.download("ghost.csv", io.BytesIO()),
            lambda: session.stat("ghost.csv"),
            lambda: session.remove("ghost.csv"),
            lambda: session.open_read("ghost.csv"),
        ):
            error = raises_sftp(call)
            assert error.kind == "not_found"
            assert error.message == "file 'ghost.csv' not found in folder 'inbox' on the server"
        (server.data_dir / "inbox").rmdir()  # folder removed while we are connected
        error = raises_sftp(session.stat, "ghost.csv")
        assert error.kind == "folder_missing"


def test_names_cannot_escape_the_folder(server, client_key):
    with connect(target_for(server, client_key)) as session:
        for bad in ("", "/etc/passwd", "../x", "a/../../x"):
            with pytest.raises(ValueError):
                session.stat(bad)


def test_local_write_errors_are_not_remote_errors(server, client_key):
    (server.data_dir / "f").write_bytes(b"x" * 100_000)

    class Full(io.RawIOBase):
        def write(self, data):
            raise OSError(28, "No space left on device")

    with connect(target_for(server, client_key)) as session:
        with pytest.raises(OSError) as info:
            session.download("f", Full())
        assert not isinstance(info.value, SftpError)
        assert session.download("f", io.BytesIO()) == 100_000  # session still usable


# ---------------------------------------------------------------- password fallback


def password_target(server: PasswordSftpServer, **changes) -> SftpTarget:
    fields = dict(
        host=server.host,
        port=server.port,
        username=server.username,
        password=server.password,
        pinned_fingerprint=server.host_key_fingerprint,
        timeout=5.0,
    )
    fields.update(changes)
    return SftpTarget(**fields)


def test_refused_key_then_password(password_sftp_server, client_key):
    report = test_connection(password_target(password_sftp_server, private_key=client_key.private))
    assert report.ok, report.message
    assert report.auth_method == "password"


def test_accepted_key_wins_over_password(password_sftp_server, client_key):
    password_sftp_server.accept_public_key(client_key.public)
    report = test_connection(password_target(password_sftp_server, private_key=client_key.private))
    assert report.ok and report.auth_method == "publickey"


def test_password_only(password_sftp_server):
    (password_sftp_server.data_dir / "x.csv").write_text("1")
    with connect(password_target(password_sftp_server)) as session:
        assert session.auth_method == "password"
        assert [f.name for f in session.list_files()] == ["x.csv"]
        payload = os.urandom(300_000)
        session.upload(io.BytesIO(payload), "y.bin")
        out = io.BytesIO()
        session.download("y.bin", out)
        assert out.getvalue() == payload
        session.rename("y.bin", "x.csv")
        assert (password_sftp_server.data_dir / "x.csv").read_bytes() == payload


def test_server_that_refuses_public_keys_entirely(password_sftp_server, client_key):
    password_sftp_server.allowed_auths = ["password"]  # key attempt -> BadAuthenticationType
    target = password_target(password_sftp_server, private_key=client_key.private)
    report = test_connection(target)
    assert report.ok and report.auth_method == "password"

    target.password = "wrong"
    report = test_connection(target)
    assert (report.ok, report.error_kind) == (False, "auth")
    assert "(tried: password): the server does not accept public keys" in report.message
    assert "wrong" not in report.message


def test_password_through_keyboard_interactive(password_sftp_server, client_key):
    password_sftp_server.allowed_auths = ["publickey", "keyboard-interactive"]
    target = password_target(password_sftp_server, private_key=client_key.private)
    report = test_connection(target)
    assert report.ok, report.message
    assert report.auth_method == "password"


def test_wrong_password_after_refused_key(password_sftp_server, client_key):
    target = password_target(
        password_sftp_server, private_key=client_key.private, password="not-it"
    )
    error = raises_sftp(connect, target)
    assert error.kind == "auth"
    assert error.message == "authentication failed for user 'partner' (tried: public key, password)"
    assert "not-it" not in repr(target)


def test_stalled_server_raises_timeout(password_sftp_server):
    password_sftp_server.stall_seconds = 3
    started = time.monotonic()
    report = test_connection(password_target(password_sftp_server, io_timeout=0.5))
    assert (report.ok, report.error_kind) == (False, "timeout")
    assert "no answer from" in report.message
    assert time.monotonic() - started < 2.5


def test_connection_lost_mid_session_is_a_reset(password_sftp_server):
    with connect(password_target(password_sftp_server)) as session:
        password_sftp_server.stop()  # drops every connection
        time.sleep(0.2)
        error = raises_sftp(session.list_files)
    assert (error.kind, error.retryable) == ("reset", True)
    assert "connection to 127.0.0.1:" in error.message


# ---------------------------------------------------------------- the error type itself


def test_unreachable_network(monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", fail)
    error = raises_sftp(connect, SftpTarget(host="10.1.2.3", username="u", password="p"))
    assert (error.kind, error.retryable) == ("unreachable", True)
    assert error.message == "cannot reach 10.1.2.3:22: Network is unreachable"


def _pickle_round_trip(obj: object):
    return pickle.loads(pickle.dumps(obj))  # noqa: S301 - our own object, just pickled


def test_sftp_error_pickles():
    error = SftpError("host_key_mismatch", "host key changed")
    error.host_key_fingerprint = "SHA256:abc"
    copy = _pickle_round_trip(error)
    assert (copy.kind, copy.message, copy.retryable) == (
        "host_key_mismatch",
        "host key changed",
        False,
    )
    assert copy.host_key_fingerprint == "SHA256:abc"
    assert _pickle_round_trip(SftpError("dns", "x", retryable=True)).retryable is True


def test_target_repr_hides_secrets(client_key):
    target = SftpTarget(
        "h", username="u", password="pw-123", private_key=client_key.private, passphrase="pp-456"
    )
    text = repr(target)
    assert "pw-123" not in text and "pp-456" not in text and "PRIVATE" not in text


def test_permission_denied(password_sftp_server):
    with connect(password_target(password_sftp_server)) as session:
        error = raises_sftp(session.upload, io.BytesIO(b"x"), "forbidden.csv")
        assert (error.kind, error.retryable) == ("permission", False)
        assert error.message == "permission denied creating 'forbidden.csv' on the server"
        assert session.exists("forbidden.csv") is False  # session still usable


@pytest.mark.parametrize("fail_at", [100_000, 2 * 1024 * 1024 - 100_000, 2 * 1024 * 1024 - 10])
def test_failed_pipelined_write_is_reported(password_sftp_server, fail_at):
    # A failed write in the middle leaves the file at full size (a hole), so the size
    # check cannot see it; the middle case is one of the last pipelined writes, which
    # paramiko's close() does not check (putfo would report success).
    password_sftp_server.fail_write_at = fail_at
    payload = os.urandom(2 * 1024 * 1024)
    with connect(password_target(password_sftp_server)) as session:
        error = raises_sftp(session.upload, io.BytesIO(payload), "full.bin")
    assert error.kind == "server_error"
    assert "uploading 'full.bin'" in error.message


def test_open_read_closed_early_leaves_session_usable(server, client_key):
    (server.data_dir / "big").write_bytes(os.urandom(3 * 1024 * 1024))
    (server.data_dir / "small").write_bytes(b"small")
    with connect(target_for(server, client_key)) as session:
        with session.open_read("big") as stream:
            assert len(stream.read(1000)) == 1000
        out = io.BytesIO()
        session.download("small", out)
        assert out.getvalue() == b"small"
        assert [f.name for f in session.list_files()] == ["big", "small"]
