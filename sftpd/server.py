"""The managed SFTP server: paramiko's SSH transport, our authentication and file system.

Threads
    * one accept loop (`SftpServer.serve_forever`), which never touches the database;
    * per connection: a supervisor thread (`Connection.run`), paramiko's transport thread
      (key exchange, authentication -- the ~0.2 s PBKDF2 check runs there, off the accept
      loop) and one thread per SFTP session (`SftpSubsystem`);
    * a few database threads (`DbPool`): every query goes through them, so the number of
      database connections stays bounded whatever the number of clients, and audit
      events are written without making the client wait;
    * a maintenance thread (session heartbeats, pruning).

Accounts are read from the database at every login attempt (a changed password or a
removed key applies at the next login, without restart). Failed logins, bans and live
sessions are in the database too, so several server processes share them.

Speed: TCP_NODELAY (without it, Nagle's algorithm delays paramiko's small window-adjust and
status packets and halves upload speed), a large channel window, a channel input buffer
that does not copy on every read (`FastPipe`), READ/WRITE parsed without paramiko's
per-request overhead, and nothing per packet in the database or the log.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ipaddress
import logging
import os
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from django.db import OperationalError, close_old_connections
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_INIT,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_STATUS,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_BAD_MESSAGE,
    SFTP_DESC,
    SFTP_EOF,
    SFTP_FAILURE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTPError,
)
from paramiko.sftp_attr import SFTPAttributes

from sftpd import store
from sftpd.conf import WEAK_MACS, BanPolicy, ServerConfig, load_config
from sftpd.fs import (
    HomeFileSystem,
    SftpRefusal,
    TempUploads,
    Usage,
    UsageRegistry,
    ensure_home,
    refusal_for,
    sweep_stale_uploads,
)
from sftpd.hostkey import fingerprint, load_or_create_host_key, publish_fingerprint
from sftpd.models import SftpAuditEvent

logger = logging.getLogger("sftpd")
Event = SftpAuditEvent.Event

# paramiko logs every dropped connection (port scanners, health checks reading the banner)
# as an ERROR with a traceback. Its transports log here; we log what matters ourselves.
SSH_LOG_CHANNEL = "sftpd.ssh"
if logging.getLogger(SSH_LOG_CHANNEL).level == logging.NOTSET:
    logging.getLogger(SSH_LOG_CHANNEL).setLevel(logging.CRITICAL)

SERVER_VERSION = "SSH-2.0-lyticsops_sftpd"
SFTP_VERSION = 3
MAX_SFTP_PACKET = 256 * 1024 + 1024  # OpenSSH's limit (256 KiB) plus room for headers
MAX_CHANNELS_OPENED = 64  # channels one connection may open over its life
BAN_CACHE_SECONDS = 15.0  # how long the accept loop trusts a "banned" verdict
DB_LOCK_RETRIES = 50
OUTPUT_BATCH = 256 * 1024  # send gathered responses once they reach this size


# --------------------------------------------------------------------------- database


class DbPool:
    """Runs database work on a few threads of its own.

    `call` waits for the result (authentication needs it), `submit` does not (audit
    events, session bookkeeping). Each job is wrapped in `close_old_connections`, as a
    request would be, so connections obey CONN_MAX_AGE and broken ones are replaced.
    """

    def __init__(self, threads: int) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="sftpd-db"
        )
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future] = set()

    def call(self, func, *args, **kwargs):
        return self._executor.submit(_db_job, func, args, kwargs).result()

    def submit(self, func, *args, **kwargs) -> None:
        try:
            future = self._executor.submit(_db_job, func, args, kwargs)
        except RuntimeError:  # shut down: run it here rather than lose an audit event
            _db_job(func, args, kwargs)
            return
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.exception() is not None:
            logger.error("sftpd: database job failed", exc_info=future.exception())

    def flush(self, timeout: float | None = None) -> None:
        """Wait for the jobs submitted so far (tests, shutdown)."""
        with self._lock:
            pending = set(self._pending)
        concurrent.futures.wait(pending, timeout=timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _db_job(func, args, kwargs):
    close_old_connections()
    try:
        for attempt in range(DB_LOCK_RETRIES):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                # SQLite only: a writer in another thread or process holds the lock longer
                # than the busy timeout (or, with an in-memory database, at all).
                if "locked" not in str(exc) or attempt == DB_LOCK_RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
    finally:
        close_old_connections()


# --------------------------------------------------------------------------- SFTP


class FastPipe(BufferedPipe):
    """Drop-in for paramiko's channel input buffer.

    paramiko's keeps one array and deletes what is read from its front, which copies the
    rest of the buffer on every read; with a large window that cost grows with the
    window. This one keeps the received chunks in a deque.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0

    def feed(self, data) -> None:
        with self._lock:
            if self._event is not None:
                self._event.set()
            self._chunks.append(bytes(data))
            self._size += len(data)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._lock:
            if not self._size:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._size and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise PipeTimeout()
                    self._cv.wait(remaining)
                if not self._size:
                    return b""
            out = self._take(nbytes)
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
        return out

    def _take(self, nbytes: int) -> bytes:
        parts, taken, chunks = [], 0, self._chunks
        while chunks and taken < nbytes:
            chunk = chunks[0]
            if taken + len(chunk) <= nbytes:
                parts.append(chunks.popleft())
                taken += len(chunk)
            else:
                cut = nbytes - taken
                parts.append(chunk[:cut])
                chunks[0] = chunk[cut:]
                taken = nbytes
        self._size -= taken
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def empty(self) -> bytes:
        with self._lock:
            out = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def __len__(self) -> int:
        return self._size


class SftpSubsystem(paramiko.SFTPServer):
    """paramiko's SFTP server with a buffered packet reader, fast READ/WRITE paths,
    status messages from `SftpRefusal`, limits, and abort (not commit) of the files a
    vanished client left open."""

    max_handles = 256

    def start_subsystem(self, name, transport, channel) -> None:
        self.sock = channel
        self._rbuf = bytearray()
        self._out: list[bytes] = []
        self._out_size = 0
        self._send_server_version()
        self.server.session_started()
        while True:
            try:
                kind, data = self._read_packet()
                self._dispatch(kind, data)
            except (EOFError, OSError, SFTPError, PipeTimeout):
                return  # client gone, channel closed, or garbage: end the session

    # -- framing -------------------------------------------------------------------------
    def _fill(self, size: int) -> None:
        buf = self._rbuf
        while len(buf) < size:
            if self._out and not self.sock.recv_ready():
                self._flush()  # about to wait for the client: first send what we owe it
            chunk = self.sock.recv(max(size - len(buf), 1 << 20))
            if not chunk:
                raise EOFError()
            buf += chunk

    def _read_packet(self) -> tuple[int, bytes]:
        self._fill(4)
        buf = self._rbuf
        size = int.from_bytes(buf[:4], "big")
        if not 0 < size <= MAX_SFTP_PACKET:
            raise SFTPError(f"bad SFTP packet length {size}")
        self._fill(4 + size)
        kind = buf[4]
        with memoryview(buf) as view:
            body = bytes(view[5 : 4 + size])
        del buf[: 4 + size]
        return kind, body

    def _write_all(self, out) -> None:
        # Responses are gathered while more requests are already waiting and sent
        # together: clients keep up to 64 requests in flight, and one SSH packet for many
        # small status replies (or full-size packets for consecutive data replies) saves
        # the per-packet encryption, MAC and system call.
        self._out.append(out)
        self._out_size += len(out)
        if self._out_size >= OUTPUT_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        view = memoryview(data)
        while view:
            sent = self.sock.send(view)
            if sent <= 0:
                raise EOFError()
            view = view[sent:]

    def _send_server_version(self) -> int:
        kind, data = self._read_packet()
        if kind != CMD_INIT:
            raise SFTPError("Incompatible sftp protocol")
        msg = Message()
        msg.add_int(SFTP_VERSION)
        msg.add_string("posix-rename@openssh.com")
        msg.add_string("1")
        self._send_packet(CMD_VERSION, msg)
        return struct.unpack(">I", data[:4])[0]

    def _send_status(self, request_number: int, code: int, desc: str | None = None) -> None:
        if desc is None:
            desc = SFTP_DESC[code] if 0 <= code < len(SFTP_DESC) else "Unknown"
        text = desc.encode("utf-8", "replace")
        body = struct.pack(">BIII", CMD_STATUS, request_number, code, len(text))
        body += text + b"\x00\x00\x00\x00"  # empty language tag
        self._write_all(len(body).to_bytes(4, "big") + body)

    # -- requests ------------------------------------------------------------------------
    def _dispatch(self, kind: int, data: bytes) -> None:
        request_number = int.from_bytes(data[:4], "big")
        try:
            if kind == CMD_WRITE:
                self._fast_write(request_number, data)
            elif kind == CMD_READ:
                self._fast_read(request_number, data)
            else:
                msg = Message(data)
                msg.get_int()
                self._process(kind, request_number, msg)
        except SftpRefusal as exc:
            self._send_status(request_number, exc.code, exc.message)
        except OSError as exc:
            if self.sock.closed:
                raise EOFError() from exc  # the channel, not the file system
            refusal = refusal_for(exc)
            self._send_status(request_number, refusal.code, refusal.message)
        except (EOFError, SFTPError):
            raise
        except Exception:
            logger.exception("sftpd: SFTP request %d failed", kind)
            self._send_status(request_number, SFTP_FAILURE)

    def _handle(self, handle: bytes):
        found = self.file_table.get(handle)
        if found is None:
            raise SftpRefusal(SFTP_BAD_MESSAGE, "Invalid handle")
        return found

    def _fast_write(self, request_number: int, data: bytes) -> None:
        (hlen,) = struct.unpack_from(">I", data, 4)
        handle = data[8 : 8 + hlen]
        offset, length = struct.unpack_from(">QI", data, 8 + hlen)
        start = 20 + hlen
        if start + length > len(data):
            raise SftpRefusal(SFTP_BAD_MESSAGE, "Truncated write")
        with memoryview(data) as view:
            code = self._handle(handle).write(offset, view[start : start + length])
        self._send_status(request_number, code)

    def _fast_read(self, request_number: int, data: bytes) -> None:
        (hlen,) = struct.unpack_from(">I", data, 4)
        handle = data[8 : 8 + hlen]
        offset, length = struct.unpack_from(">QI", data, 8 + hlen)
        result = self._handle(handle).read(offset, length)
        if isinstance(result, int):
            self._send_status(request_number, result)
        elif not result:
            self._send_status(request_number, SFTP_EOF)
        else:
            header = struct.pack(">IBII", 9 + len(result), CMD_DATA, request_number, len(result))
            self._write_all(header + result)

    def _process(self, t: int, request_number: int, msg: Message) -> None:
        if t == CMD_CLOSE:
            self._close(request_number, msg.get_binary())
        elif t in (CMD_OPEN, CMD_OPENDIR):
            if len(self.file_table) + len(self.folder_table) >= self.max_handles:
                raise SftpRefusal(SFTP_FAILURE, "Too many open files")
            super()._process(t, request_number, msg)
        elif t == CMD_FSETSTAT:
            handle = self._handle(msg.get_binary())
            self._send_status(request_number, handle.chattr(SFTPAttributes._from_msg(msg)))
        elif t == CMD_EXTENDED:
            self._extended(request_number, msg)
        else:
            super()._process(t, request_number, msg)

    def _close(self, request_number: int, handle: bytes) -> None:
        if self.folder_table.pop(handle, None) is not None:
            self._send_status(request_number, SFTP_OK)
            return
        found = self.file_table.pop(handle, None)
        if found is None:
            raise SftpRefusal(SFTP_BAD_MESSAGE, "Invalid handle")
        self._send_status(request_number, found.close())  # an upload is published here

    def _extended(self, request_number: int, msg: Message) -> None:
        if msg.get_text() == "posix-rename@openssh.com":
            old, new = msg.get_text(), msg.get_text()
            self._send_status(request_number, self.server.posix_rename(old, new))
        else:
            self._send_status(request_number, SFTP_OP_UNSUPPORTED)

    def finish_subsystem(self) -> None:
        # paramiko would close() leftover handles, which for us would publish a partial
        # upload under its real name: abort them instead.
        handles = list(self.file_table.values())
        self.file_table, self.folder_table = {}, {}
        for handle in handles:
            try:
                handle.abort()
            except Exception:
                logger.exception("sftpd: could not abort an open file")
        super().finish_subsystem()


# --------------------------------------------------------------------------- connections


@dataclass(frozen=True)
class Login:
    """The account a connection authenticated as (a snapshot: no model across threads)."""

    account_id: int
    username: str
    quota: int | None
    max_sessions: int
    how: str  # "password" or "publickey SHA256:..."


class Connection(paramiko.ServerInterface):
    """One client connection: authentication, its sessions, its bookkeeping."""

    def __init__(self, server: SftpServer, sock: socket.socket, address) -> None:
        self.server = server
        self.config = server.config
        self.sock = sock
        self.ip = normalize_ip(address[0])
        self.transport: paramiko.Transport | None = None
        self.thread: threading.Thread | None = None
        self.kick = threading.Event()  # set: close the connection now
        self.lock = threading.Lock()
        self.username = ""  # as the client typed it
        self.login: Login | None = None
        self.pending_failure: tuple[str, int | None] | None = None
        self.failure_recorded = False
        self.refused_ip_logged = False
        self.session_id: int | None = None
        self.started_at: float | None = None
        self.home: Path | None = None
        self.usage: Usage = Usage()
        self.temp_uploads = server.temp_uploads
        self.channels_opened = 0
        self.sftp_channels: set[int] = set()
        self.handlers: list[SftpSubsystem] = []
        self.close_at: float | None = None

    # -- lifecycle (supervisor thread) ---------------------------------------------------
    def run(self) -> None:
        try:
            self._serve()
        except Exception:
            logger.exception("sftpd: connection from %s failed", self.ip)
        finally:
            try:
                self._finish()
            finally:
                self.server.release(self)

    def _serve(self) -> None:
        if self._banned():
            self.server.refuse_banned(self.ip, self.sock)
            return
        self.transport = self.server.make_transport(self.sock)
        try:
            self.transport.start_server(server=self)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # Port scanners and health checks end here; not worth more than a debug line.
            logger.debug("sftpd: SSH handshake with %s failed: %s", self.ip, exc)
            return
        self._supervise()

    def _banned(self) -> bool:
        ban = self.server.db.call(store.active_ban, self.ip)
        if ban is not None:
            self.server.cache_ban(self.ip)
        return ban is not None

    def _supervise(self) -> None:
        deadline = time.monotonic() + self.config.login_timeout
        while not self.kick.wait(0.5):
            now = time.monotonic()
            if not self.transport.is_active():
                return
            if self.close_at is not None and now >= self.close_at:
                return
            if self.session_id is None and self.close_at is None and now > deadline:
                logger.info(
                    "sftpd: %s did not log in within %ss", self.ip, self.config.login_timeout
                )
                return

    def close_now(self) -> None:
        self.kick.set()
        if self.transport is not None:
            self.transport.close()  # also ends a handshake still in progress

    def close_soon(self, delay: float = 0.5) -> None:
        """Close after ``delay`` (time for the refusal we are answering to reach the
        client)."""
        self.close_at = time.monotonic() + delay

    def _finish(self) -> None:
        authenticated = self.transport is not None and self.transport.is_authenticated()
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()
        deadline = time.monotonic() + self.config.shutdown_timeout
        for handler in list(self.handlers):
            handler.join(max(0.0, deadline - time.monotonic()))
        if self.session_id is not None:
            self.server.db.submit(store.end_session, self.session_id)
            seconds = time.monotonic() - (self.started_at or time.monotonic())
            self.audit(Event.LOGOUT, detail=f"session of {seconds:.0f} s")
            logger.info("sftpd: %s from %s logged out", self.login.username, self.ip)
        elif not authenticated and not self.failure_recorded:
            pending = self.pending_failure
            if pending is None and self.login is not None:
                # The key was acceptable but no valid signature followed.
                pending = (f"no valid signature ({self.login.how})", self.login.account_id)
            if pending is not None:
                self._record_failure(*pending)

    # -- authentication (transport thread) -----------------------------------------------
    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"  # the same for every name: no account enumeration

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str | bytes) -> int:
        if isinstance(password, bytes):  # paramiko passes non-UTF-8 passwords as bytes
            password = password.decode("utf-8", "replace")

        def verify(account):
            if account is None or not account.password_hash:
                _dummy_password_check(password)  # same time as a real check
                return False
            return account.check_account_password(password)

        return self._authenticate(username, "password", verify)

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        # Called for "would you accept this key?" and again before the signature check;
        # a success here is final only once paramiko has verified the signature, hence
        # the session starts at the first channel, not here.
        def verify(account):
            return account is not None and store.key_authorized(account, key)

        return self._authenticate(username, "publickey " + fingerprint(key), verify)

    def _authenticate(self, username: str, how: str, verify) -> int:
        self.username = username
        if self.kick.is_set() or self.close_at is not None:
            return paramiko.AUTH_FAILED
        try:
            account = self.server.db.call(store.load_account, username)
        except Exception:
            logger.exception("sftpd: cannot read account %r", username[:64])
            return paramiko.AUTH_FAILED  # fail closed
        if account is not None and store.ip_refused(account, self.ip):
            self._refuse_ip(account)  # before looking at the credentials
            return paramiko.AUTH_FAILED
        refusal = store.account_refusal(account) if account is not None else "unknown user"
        if verify(account) and refusal is None:
            self.login = Login(
                account.pk, account.username, account.quota_bytes, account.max_sessions, how
            )
            return paramiko.AUTH_SUCCESSFUL
        detail = refusal or ("wrong password" if how == "password" else "key not authorized")
        account_id = account.pk if account is not None else None
        if how == "password":
            self._record_failure(f"{detail} ({how})", account_id)
        else:
            # Clients offer each key they have: count a key-only failure once, when the
            # connection ends without a login.
            self.pending_failure = (f"{detail} ({how})", account_id)
        return paramiko.AUTH_FAILED

    def _refuse_ip(self, account) -> None:
        if self.refused_ip_logged:
            return
        self.refused_ip_logged = True
        self.server.db.submit(
            store.write_audit,
            Event.REFUSED_IP,
            account_id=account.pk,
            username=self.username,
            ip=self.ip,
            detail="IP not in the account's allowlist",
        )
        self._record_failure("IP not in the allowlist", account.pk, audit=False)

    def _record_failure(self, detail: str, account_id: int | None, *, audit: bool = True) -> None:
        self.failure_recorded = True
        logger.info("sftpd: failed login as %r from %s: %s", self.username[:64], self.ip, detail)
        if audit:
            self.audit(Event.LOGIN_FAILED, detail=detail, account_id=account_id)
        try:
            ban = self.server.db.call(
                store.record_failure, self.ip, self.username, BanPolicy.from_settings()
            )
        except Exception:
            logger.exception("sftpd: cannot record a failed login")
            return
        if ban is not None:
            self.server.cache_ban(self.ip)
            self.close_soon(0.2)

    # -- channels (transport thread) -----------------------------------------------------
    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session" or self.login is None or not self.transport.is_authenticated():
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        with self.lock:
            if self.channels_opened >= MAX_CHANNELS_OPENED or self.close_at is not None:
                return paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
            if self.session_id is None and not self._start_session():
                return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
            self.channels_opened += 1
        return paramiko.OPEN_SUCCEEDED

    def _start_session(self) -> bool:
        login = self.login
        row = self.server.db.call(
            store.register_session,
            login.account_id,
            self.ip,
            self.server.server_id,
            self.config.session_ttl,
            login.max_sessions,
        )
        if row is None:
            self.audit(
                Event.REFUSED_SESSIONS,
                detail=f"{login.max_sessions} sessions already open",
                account_id=login.account_id,
            )
            logger.info("sftpd: %s refused: too many sessions of %s", self.ip, login.username)
            self.close_soon()
            return False
        try:
            self.home = ensure_home(self.config.root, login.username)
            self.usage = self.server.usage.for_account(login.account_id, self.home, login.quota)
        except OSError:
            logger.exception("sftpd: cannot prepare the home of %s", login.username)
            self.server.db.submit(store.end_session, row.pk)
            self.close_soon()
            return False
        self.session_id, self.started_at = row.pk, time.monotonic()
        self.audit(Event.LOGIN_OK, detail=login.how)
        logger.info("sftpd: %s logged in from %s (%s)", login.username, self.ip, login.how)
        self.server.db.submit(store.clear_failures, self.ip, self.username)
        return True

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name != "sftp" or self.session_id is None:
            return False
        with self.lock:
            alive = [handler for handler in self.handlers if handler.is_alive()]
            if channel.get_id() in self.sftp_channels or len(alive) >= self.config.max_channels:
                return False
            self.sftp_channels.add(channel.get_id())
            _install_fast_pipe(channel)
            handler = SftpSubsystem(channel, name, self, HomeFileSystem)
            handler.max_handles = self.config.max_handles
            self.handlers = [*alive, handler]
        handler.start()
        return True

    # -- helpers -------------------------------------------------------------------------
    def audit(
        self,
        event: str,
        *,
        path: str = "",
        nbytes: int | None = None,
        detail: str = "",
        account_id: int | None = None,
    ) -> None:
        """Queue an audit event (never makes the client wait)."""
        login = self.login if self.session_id is not None else None
        if account_id is None and login is not None:
            account_id = login.account_id
        self.server.db.submit(
            store.write_audit,
            event,
            account_id=account_id,
            username=login.username if login is not None else self.username,
            ip=self.ip,
            path=path,
            nbytes=nbytes,
            detail=detail,
        )


def _install_fast_pipe(channel: paramiko.Channel) -> None:
    # Called on the transport thread, the only one that feeds the buffer: nothing can
    # arrive between emptying the old buffer and installing the new one.
    pipe = FastPipe()
    leftover = channel.in_buffer.empty()
    if leftover:
        pipe.feed(leftover)
    channel.in_buffer = pipe


_DUMMY_HASH: list[str] = []


def _dummy_password_check(password: str) -> None:
    from django.contrib.auth.hashers import check_password, make_password

    if not _DUMMY_HASH:
        _DUMMY_HASH.append(make_password(secrets.token_urlsafe(16)))
    check_password(password, _DUMMY_HASH[0])


def normalize_ip(address: str) -> str:
    """The client address as stored and matched: IPv4-mapped IPv6 becomes IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


# --------------------------------------------------------------------------- server


class SftpServer:
    """Listens, hands each connection to a `Connection`, shuts down cleanly.

    Usage: ``server.start()`` (bind, host key), ``server.serve_forever()`` (until
    `request_stop`), ``server.shutdown()``. Tests use `start_background`.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or load_config()
        self.server_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:128]
        self.db = DbPool(self.config.db_threads)
        self.temp_uploads = TempUploads()  # uploads in progress, deleted at shutdown
        self.usage = UsageRegistry()  # quota bookkeeping per account
        self.host_key: paramiko.PKey | None = None
        self.fingerprint = ""
        self.address: tuple[str, int] | None = None
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._ban_cache: dict[str, float] = {}
        self._refusals_logged: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self._stopped = False

    # -- start -------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        cfg = self.config
        cfg.root.mkdir(parents=True, exist_ok=True)
        self.host_key = load_or_create_host_key(cfg.host_key)
        self.fingerprint = fingerprint(self.host_key)
        self.db.call(publish_fingerprint, self.fingerprint)
        self._listener = _listen(cfg.host, cfg.port)
        self._listener.settimeout(0.5)  # the accept loop checks for a stop request
        self.address = self._listener.getsockname()[:2]
        self._spawn(self._maintain, "sftpd-maintenance")
        logger.info("sftpd: listening on %s:%s", *self.address)
        return self.address

    def start_background(self) -> tuple[str, int]:
        address = self.start()
        self._spawn(self.serve_forever, "sftpd-accept")
        return address

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- accept ----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                logger.warning("sftpd: accept failed: %s", exc)  # e.g. out of descriptors
                time.sleep(0.1)
                continue
            self._dispatch(sock, address)

    def _dispatch(self, sock: socket.socket, address) -> None:
        ip = normalize_ip(address[0])
        if self._ban_cache.get(ip, 0.0) > time.monotonic():
            self.refuse_banned(ip, sock)
            return
        with self._lock:
            if len(self._connections) >= self.config.max_connections:
                logger.warning(
                    "sftpd: %d connections open, refusing %s", len(self._connections), ip
                )
                sock.close()
                return
            # One address must not take every slot (idle TCP connections never fail a
            # login, so the ban would not catch them).
            from_ip = sum(1 for c in self._connections if c.ip == ip)
            if from_ip >= self.config.max_connections_per_ip:
                logger.warning("sftpd: %d connections from %s, refusing another", from_ip, ip)
                sock.close()
                return
            connection = Connection(self, sock, address)
            self._connections.add(connection)
        _tune_socket(sock)
        connection.thread = threading.Thread(
            target=connection.run, name=f"sftpd-conn-{ip}", daemon=True
        )
        connection.thread.start()

    def make_transport(self, sock: socket.socket) -> paramiko.Transport:
        cfg = self.config
        transport = paramiko.Transport(
            sock,
            default_window_size=cfg.window_size,
            default_max_packet_size=cfg.max_packet_size,
            disabled_algorithms={
                "ciphers": [
                    c for c in paramiko.Transport._preferred_ciphers if c not in cfg.ciphers
                ],
                "macs": list(WEAK_MACS),
            },
        )
        transport.local_version = SERVER_VERSION
        transport.set_log_channel(SSH_LOG_CHANNEL)
        transport.add_server_key(self.host_key)
        transport.set_keepalive(cfg.keepalive)
        return transport

    def cache_ban(self, ip: str) -> None:
        self._ban_cache[ip] = time.monotonic() + BAN_CACHE_SECONDS

    def clear_ban_cache(self) -> None:
        """Forget cached "banned" verdicts (otherwise a lifted ban applies within
        BAN_CACHE_SECONDS)."""
        self._ban_cache.clear()

    def refuse_banned(self, ip: str, sock: socket.socket) -> None:
        """Close a banned client's socket before any SSH; audit it at most once a minute.

        The audit event is queued before the socket closes, so that whoever sees the
        refusal (a test, an operator) finds it in the audit log once queued work is flushed.
        """
        now = time.monotonic()
        if self._refusals_logged.get(ip, 0.0) <= now:
            self._refusals_logged[ip] = now + 60
            logger.info("sftpd: refused %s: banned", ip)
            self.db.submit(
                store.write_audit,
                Event.REFUSED_BANNED,
                ip=ip,
                detail="connection refused: IP banned",
            )
        sock.close()

    def release(self, connection: Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- housekeeping -------------------------------------------------------------------
    def _maintain(self) -> None:
        # Here rather than in start(): walking a large storage tree must not delay listening.
        removed = sweep_stale_uploads(self.config.root, self.config.stale_upload_age)
        if removed:
            logger.info("sftpd: deleted %d stale temporary uploads", removed)
        interval = max(1, min(30, self.config.session_ttl // 3))
        while not self._stop.wait(interval):
            self.db.submit(store.heartbeat, self.server_id, self.config.session_ttl)
            self.db.submit(store.prune_failures, BanPolicy.from_settings())
            now = time.monotonic()
            for table in (self._ban_cache, self._refusals_logged):
                for ip, until in list(table.items()):
                    if until <= now:
                        table.pop(ip, None)

    # -- stop ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the accept loop to end (safe from a signal handler)."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop accepting, close every session, delete temp uploads, flush the database."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close_now()
        deadline = time.monotonic() + self.config.shutdown_timeout
        for connection in connections:
            if connection.thread is not None:
                connection.thread.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        leftovers = self.temp_uploads.remove_all()
        if leftovers:
            logger.warning("sftpd: deleted %d unfinished uploads at shutdown", leftovers)
        self.db.submit(store.forget_server, self.server_id)
        self.db.close()
        logger.info("sftpd: stopped")


def _listen(host: str, port: int) -> socket.socket:
    if ":" in host:  # IPv6; "::" also accepts IPv4 where the system allows dual-stack
        dualstack = host == "::" and socket.has_dualstack_ipv6()
        return socket.create_server(
            (host, port), family=socket.AF_INET6, backlog=128, dualstack_ipv6=dualstack
        )
    return socket.create_server((host, port), backlog=128)


def _tune_socket(sock: socket.socket) -> None:
    sock.settimeout(None)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass  # not TCP (tests may pass a socketpair)
