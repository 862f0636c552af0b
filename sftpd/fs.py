"""What an SFTP client sees: its home folder as "/", and nothing outside it.

* `Jail` maps client paths to real paths inside the home: ".." stops at "/", absolute
  paths are relative to the home, NUL bytes and over-long names are refused, and the real
  path (symlinks resolved with `os.path.realpath`) must stay inside the home. Files are
  opened with O_NOFOLLOW on top of that.
* Uploads are atomic: writes go to a hidden ``.<name>.<16 hex>.upload`` file in the same
  folder, renamed to the real name when the client closes the file; a client that goes
  away before closing leaves nothing under the real name (`UploadHandle.abort`). Those
  temp names are never listed and cannot be opened, renamed or deleted by clients.
* Optional storage quota per account (`Usage`).

Handles use os-level calls (pread/pwrite on a file descriptor) and do no database work and
no logging per packet: bytes are counted and audited once, when the file is closed.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko
from paramiko.sftp import (
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
)

from sftpd.models import SftpAuditEvent

logger = logging.getLogger("sftpd")
Event = SftpAuditEvent.Event

MAX_NAME_BYTES = 255  # per path component (NAME_MAX)
MAX_PATH_BYTES = 4096  # whole path (PATH_MAX)
MAX_READ = 256 * 1024  # largest read we answer, whatever the client asks for
PROTECTED = frozenset({"/", "/inbound", "/outbound"})  # never removed or renamed by clients
HOME_FOLDERS = ("inbound", "outbound")
TEMP_SUFFIX = ".upload"
TEMP_RE = re.compile(r"\A\..*\.[0-9a-f]{16}\.upload\Z", re.DOTALL)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_MODE = 0o750
FILE_MODE = 0o640


class SftpRefusal(Exception):
    """Answer the request with this SFTP status code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PathEscape(SftpRefusal):
    """A path that tries to leave the home (audited as refused_path)."""

    def __init__(self, message: str = "Permission denied: outside the home folder") -> None:
        super().__init__(SFTP_PERMISSION_DENIED, message)


def refusal_for(exc: OSError) -> SftpRefusal:
    """The SFTP status for an OS error, with a message a person can act on."""
    code = {
        errno.ENOENT: SFTP_NO_SUCH_FILE,
        errno.ENOTDIR: SFTP_NO_SUCH_FILE,
        errno.EACCES: SFTP_PERMISSION_DENIED,
        errno.EPERM: SFTP_PERMISSION_DENIED,
        errno.ELOOP: SFTP_PERMISSION_DENIED,
    }.get(exc.errno, SFTP_FAILURE)
    return SftpRefusal(code, os.strerror(exc.errno) if exc.errno else str(exc))


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class Resolved:
    real: str  # absolute path on our disk, inside the home
    vpath: str  # the same path as the client sees it ("/inbound/a.csv")

    @property
    def name(self) -> str:
        return posixpath.basename(self.vpath)


class Jail:
    def __init__(self, home: str | os.PathLike) -> None:
        self.home = os.path.realpath(home)

    def normalize(self, path: str) -> str:
        """The client path as an absolute, normalised path under the virtual "/"."""
        if "\x00" in path:
            raise PathEscape("Permission denied: NUL byte in path")
        if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
            raise SftpRefusal(SFTP_FAILURE, "File name too long")
        # "/" + path: relative paths start at the home; normpath folds "..", which cannot
        # climb above "/" (like a chroot). lstrip: "//x" would otherwise stay "//x".
        vpath = posixpath.normpath("/" + path.lstrip("/"))
        for part in vpath.split("/"):
            if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
                raise SftpRefusal(SFTP_FAILURE, "File name too long")
            if TEMP_RE.match(part):
                raise SftpRefusal(SFTP_PERMISSION_DENIED, "Permission denied: upload in progress")
        return vpath

    def resolve(self, path: str, *, follow: bool = True) -> Resolved:
        """Map ``path`` into the home; with ``follow=False`` a final symlink is not followed
        (for lstat, remove, rename: they act on the link itself)."""
        vpath = self.normalize(path)
        joined = self.home if vpath == "/" else self.home + vpath
        if follow or vpath == "/":
            real = os.path.realpath(joined)
        else:
            parent, name = os.path.split(joined)
            real = os.path.join(os.path.realpath(parent), name)
        if not self.contains(real):
            raise PathEscape()
        return Resolved(real, vpath)

    def contains(self, real: str) -> bool:
        return real == self.home or real.startswith(self.home + os.sep)


def ensure_home(root: str | os.PathLike, username: str) -> Path:
    """Create ``root/<username>/{inbound,outbound}`` if missing; return the home."""
    home = Path(root) / username
    for folder in (home, *(home / name for name in HOME_FOLDERS)):
        try:
            folder.mkdir(mode=DIR_MODE, parents=True)
        except FileExistsError:
            pass
    return home


# --------------------------------------------------------------------------- bookkeeping


class TempUploads:
    """Every temp upload file this process has open, to delete them on shutdown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()

    def add(self, path: str) -> None:
        with self._lock:
            self._paths.add(path)

    def discard(self, path: str) -> None:
        with self._lock:
            self._paths.discard(path)

    def remove_all(self) -> int:
        with self._lock:
            paths, self._paths = self._paths, set()
        for path in paths:
            _unlink_quietly(path)
        return len(paths)

    def __len__(self) -> int:
        return len(self._paths)


def sweep_stale_uploads(root: str | os.PathLike, older_than: float) -> int:
    """Delete temp uploads left by a crashed server (only old ones: with several servers
    sharing the storage, a young temp file may be another server's upload in progress)."""
    limit = time.time() - older_than
    removed = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not TEMP_RE.match(name):
                continue
            path = os.path.join(folder, name)
            try:
                if os.lstat(path).st_mtime < limit:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
    return removed


class Usage:
    """Bytes stored in one account's home, against its quota (None: no quota).

    Shared by the account's sessions in this process and recomputed from the disk at each
    login. Several processes each keep their own count, so concurrent sessions on
    different servers can overshoot the quota by what they upload at the same time.
    """

    def __init__(self, quota: int | None = None, used: int = 0) -> None:
        self._lock = threading.Lock()
        self.quota = quota
        self.used = used

    def reserve(self, nbytes: int) -> bool:
        if self.quota is None or nbytes <= 0:
            return True
        with self._lock:
            if self.used + nbytes > self.quota:
                return False
            self.used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        if self.quota is None or nbytes <= 0:
            return
        with self._lock:
            self.used = max(0, self.used - nbytes)

    @property
    def full(self) -> bool:
        return self.quota is not None and self.used >= self.quota


class UsageRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_account: dict[int, Usage] = {}

    def for_account(self, account_id: int, home: Path, quota: int | None) -> Usage:
        with self._lock:
            usage = self._by_account.setdefault(account_id, Usage())
        used = disk_usage(home) if quota is not None else 0
        with usage._lock:
            usage.quota, usage.used = quota, used
        return usage


def disk_usage(home: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(home):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


# --------------------------------------------------------------------------- handles


class SessionContext(Protocol):
    """What the file system needs from the connection it serves."""

    home: Path
    usage: Usage
    temp_uploads: TempUploads  # the server's registry

    def audit(
        self, event: str, *, path: str = "", nbytes: int | None = None, detail: str = ""
    ) -> None: ...


class ReadHandle(paramiko.SFTPHandle):
    def __init__(self, fd: int, resolved: Resolved, session: SessionContext) -> None:
        super().__init__(os.O_RDONLY)
        self.fd = fd
        self.resolved = resolved
        self.session = session
        self.sent = 0
        self.closed = False

    def read(self, offset: int, length: int) -> bytes | int:
        try:
            data = os.pread(self.fd, min(length, MAX_READ), offset)
        except OSError as exc:
            return refusal_for(exc).code
        self.sent += len(data)
        return data

    def write(self, offset: int, data) -> int:
        return SFTP_PERMISSION_DENIED  # opened read-only

    def stat(self):
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.fd))

    def chattr(self, attr) -> int:
        return SFTP_OP_UNSUPPORTED

    def close(self) -> int:
        self._finish("")
        return SFTP_OK

    def abort(self) -> None:
        self._finish("session ended before the file was closed")

    def _finish(self, detail: str) -> None:
        if self.closed:
            return
        self.closed = True
        os.close(self.fd)
        self.session.audit(
            Event.DOWNLOAD, path=self.resolved.vpath, nbytes=self.sent, detail=detail
        )


class UploadHandle(paramiko.SFTPHandle):
    """A file being written: a temp file until `close` renames it to the real name."""

    def __init__(
        self,
        fd: int,
        temp: str,
        target: Resolved,
        session: SessionContext,
        *,
        append: bool,
        exclusive: bool,
        size: int,
    ) -> None:
        super().__init__(os.O_APPEND if append else 0)
        self.fd = fd
        self.temp = temp
        self.target = target
        self.session = session
        self.append = append
        self.exclusive = exclusive
        self.size = size  # current size of the temp file (what the quota holds for it)
        self.received = 0
        self.times: tuple[float, float] | None = None
        self.quota_refused = False
        self.failed: str | None = None  # a write failed: the file must never be published
        self.closed = False

    # -- data ------------------------------------------------------------------------
    def write(self, offset: int, data) -> int:
        if self.append:
            offset = self.size
        end = offset + len(data)
        grow = max(0, end - self.size)
        if grow and not self.session.usage.reserve(grow):
            self._refuse_quota()
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            self.session.usage.release(grow)
            refusal = refusal_for(exc)
            self.failed = refusal.message
            return refusal.code
        self.size = max(self.size, end)
        self.received += len(data)
        return SFTP_OK

    def read(self, offset: int, length: int) -> bytes | int:
        try:
            return os.pread(self.fd, min(length, MAX_READ), offset)
        except OSError as exc:
            return refusal_for(exc).code

    def stat(self):
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.fd))

    def chattr(self, attr) -> int:
        if attr._flags & attr.FLAG_SIZE and attr.st_size != self.size:
            grow = attr.st_size - self.size
            if grow > 0 and not self.session.usage.reserve(grow):
                self._refuse_quota()
            os.ftruncate(self.fd, attr.st_size)
            if grow < 0:
                self.session.usage.release(-grow)
            self.size = attr.st_size
        if attr._flags & attr.FLAG_AMTIME:
            self.times = (attr.st_atime, attr.st_mtime)  # applied after the last write
        return SFTP_OK  # permissions and owners are ours to decide: ignored, not refused

    def _refuse_quota(self) -> None:
        self.failed = "Quota exceeded"
        if not self.quota_refused:
            self.quota_refused = True
            self.session.audit(
                Event.REFUSED_QUOTA,
                path=self.target.vpath,
                nbytes=self.session.usage.quota,
                detail=f"quota {self.session.usage.quota} bytes",
            )
        raise SftpRefusal(SFTP_PERMISSION_DENIED, "Quota exceeded")

    # -- end -------------------------------------------------------------------------
    def close(self) -> int:
        """The client closed the file: publish it under its real name."""
        if self.closed:
            return SFTP_OK
        self.closed = True
        if self.failed is not None:
            # A write was refused: publishing would give the real name to a file with a
            # hole or a missing end. The client gets the error (again) at close.
            os.close(self.fd)
            self._discard(f"a write failed: {self.failed}")
            raise SftpRefusal(
                SFTP_PERMISSION_DENIED if self.quota_refused else SFTP_FAILURE,
                f"{self.failed}: the upload was discarded",
            )
        try:
            if self.times is not None:
                os.utime(self.fd, self.times)
            os.close(self.fd)
            replaced = self._publish()
        except OSError as exc:
            self._discard("could not publish the file: " + (exc.strerror or str(exc)))
            raise refusal_for(exc) from exc
        except SftpRefusal as exc:
            self._discard(exc.message)
            raise
        self.session.temp_uploads.discard(self.temp)
        self.session.usage.release(replaced)
        self.session.audit(
            Event.UPLOAD,
            path=self.target.vpath,
            nbytes=self.size,
            detail="replaced an existing file" if replaced else "",
        )
        return SFTP_OK

    def _publish(self) -> int:
        """Rename the temp file to the real name; return the size of a file it replaced."""
        final = self.target.real
        try:
            old = os.lstat(final)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise SftpRefusal(SFTP_FAILURE, "A folder with that name exists")
        if self.exclusive:
            # O_EXCL: never replace a file created while we were uploading.
            try:
                os.link(self.temp, final)
            except FileExistsError as exc:
                raise SftpRefusal(SFTP_FAILURE, "File exists") from exc
            os.unlink(self.temp)
            return 0
        os.replace(self.temp, final)  # atomic: readers see the old or the new file
        return old.st_size if old is not None and stat.S_ISREG(old.st_mode) else 0

    def abort(self) -> None:
        """The session ended without a close: the partial file never gets its real name."""
        if self.closed:
            return
        self.closed = True
        try:
            os.close(self.fd)
        except OSError:
            pass
        self._discard("session ended before the file was closed")

    def _discard(self, why: str) -> None:
        _unlink_quietly(self.temp)
        self.session.temp_uploads.discard(self.temp)
        self.session.usage.release(self.size)
        self.session.audit(
            Event.UPLOAD_ABORTED, path=self.target.vpath, nbytes=self.received, detail=why
        )


# --------------------------------------------------------------------------- file system


class HomeFileSystem(paramiko.SFTPServerInterface):
    """paramiko's SFTP file-system interface over one account's home folder.

    Methods raise `SftpRefusal` (answered with its code and message by
    `sftpd.server.SftpSubsystem`) or return paramiko's values.
    """

    def __init__(self, server: SessionContext, *args, **kwargs) -> None:
        super().__init__(server, *args, **kwargs)
        self.session = server
        self.jail = Jail(server.home)

    # -- paths ---------------------------------------------------------------------------
    def _resolve(self, path: str, *, follow: bool = True) -> Resolved:
        try:
            return self.jail.resolve(path, follow=follow)
        except PathEscape as exc:
            self.session.audit(Event.REFUSED_PATH, path=path, detail=exc.message)
            raise

    def canonicalize(self, path: str) -> str:
        return self.jail.normalize(path)

    # -- reading -------------------------------------------------------------------------
    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes]:
        folder = self._resolve(path)
        entries = []
        with _os_errors(), os.scandir(folder.real) as listing:
            for entry in listing:
                if TEMP_RE.match(entry.name) or not _encodable(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append(paramiko.SFTPAttributes.from_stat(info, entry.name))
        return entries

    def stat(self, path: str) -> paramiko.SFTPAttributes:
        with _os_errors():
            return paramiko.SFTPAttributes.from_stat(os.stat(self._resolve(path).real))

    def lstat(self, path: str) -> paramiko.SFTPAttributes:
        with _os_errors():
            return paramiko.SFTPAttributes.from_stat(
                os.lstat(self._resolve(path, follow=False).real)
            )

    def readlink(self, path: str) -> int:
        return SFTP_OP_UNSUPPORTED  # would reveal paths outside the home

    # -- open ----------------------------------------------------------------------------
    def open(self, path: str, flags: int, attr) -> paramiko.SFTPHandle:
        if flags & (os.O_WRONLY | os.O_RDWR):
            return self._open_upload(path, flags)
        resolved = self._resolve(path)
        with _os_errors():
            # O_NONBLOCK: opening a FIFO planted in the home must not hang the session.
            fd = os.open(resolved.real, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SftpRefusal(SFTP_FAILURE, "Not a regular file")
        return ReadHandle(fd, resolved, self.session)

    def _open_upload(self, path: str, flags: int) -> UploadHandle:
        target = self._resolve(path, follow=False)
        if target.vpath == "/":
            raise SftpRefusal(SFTP_FAILURE, "Is a directory")
        existing = _lstat_or_none(target.real)
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise SftpRefusal(SFTP_FAILURE, "Is a directory")
            if not stat.S_ISREG(existing.st_mode):
                raise SftpRefusal(SFTP_PERMISSION_DENIED, "Not a regular file")
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise SftpRefusal(SFTP_FAILURE, "File exists")
        elif not flags & os.O_CREAT:
            raise SftpRefusal(SFTP_NO_SUCH_FILE, "No such file")
        keep = existing.st_size if existing is not None and not flags & os.O_TRUNC else 0
        if self.session.usage.full or not self.session.usage.reserve(keep):
            self.session.audit(
                Event.REFUSED_QUOTA,
                path=target.vpath,
                detail=f"quota {self.session.usage.quota} bytes",
            )
            raise SftpRefusal(SFTP_PERMISSION_DENIED, "Quota exceeded")
        fd, temp = self._create_temp(target, read=bool(flags & os.O_RDWR), keep=keep)
        return UploadHandle(
            fd,
            temp,
            target,
            self.session,
            append=bool(flags & os.O_APPEND),
            exclusive=bool(flags & os.O_EXCL),
            size=keep,
        )

    def _create_temp(self, target: Resolved, *, read: bool, keep: int) -> tuple[int, str]:
        folder = os.path.dirname(target.real)
        temp = os.path.join(folder, temp_name(target.name))
        mode = (os.O_RDWR if read else os.O_WRONLY) | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(temp, mode | O_NOFOLLOW | O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            self.session.usage.release(keep)
            raise refusal_for(exc) from exc
        self.session.temp_uploads.add(temp)
        if keep:
            # Resume/append to an existing file: start from a copy, so that the real name
            # still shows the old content until the new one is complete.
            try:
                _copy_file(target.real, fd, keep)
            except OSError as exc:
                os.close(fd)
                _unlink_quietly(temp)
                self.session.temp_uploads.discard(temp)
                self.session.usage.release(keep)
                raise refusal_for(exc) from exc
        return fd, temp

    # -- changes -------------------------------------------------------------------------
    def remove(self, path: str) -> int:
        target = self._resolve(path, follow=False)
        _refuse_protected(target)
        with _os_errors():
            info = os.lstat(target.real)
            if stat.S_ISDIR(info.st_mode):
                raise SftpRefusal(SFTP_FAILURE, "Is a directory (use rmdir)")
            os.unlink(target.real)
        if stat.S_ISREG(info.st_mode):
            self.session.usage.release(info.st_size)
        self.session.audit(Event.DELETE, path=target.vpath, nbytes=info.st_size)
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        """SFTP v3 rename: refuses to replace an existing file."""
        old, new = self._rename_paths(oldpath, newpath)
        if os.path.lexists(new.real):
            raise SftpRefusal(SFTP_FAILURE, "File exists")
        with _os_errors():
            os.rename(old.real, new.real)
        self.session.audit(Event.RENAME, path=old.vpath, detail=f"to {new.vpath}")
        return SFTP_OK

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        """posix-rename@openssh.com: replaces the target atomically."""
        old, new = self._rename_paths(oldpath, newpath)
        replaced = _lstat_or_none(new.real)
        with _os_errors():
            os.replace(old.real, new.real)
        if replaced is not None and stat.S_ISREG(replaced.st_mode) and old.real != new.real:
            self.session.usage.release(replaced.st_size)
        self.session.audit(Event.RENAME, path=old.vpath, detail=f"to {new.vpath} (replace)")
        return SFTP_OK

    def _rename_paths(self, oldpath: str, newpath: str) -> tuple[Resolved, Resolved]:
        old = self._resolve(oldpath, follow=False)
        new = self._resolve(newpath, follow=False)
        _refuse_protected(old)
        _refuse_protected(new)
        return old, new

    def mkdir(self, path: str, attr) -> int:
        target = self._resolve(path, follow=False)
        with _os_errors():
            os.mkdir(target.real, DIR_MODE)
        self.session.audit(Event.MKDIR, path=target.vpath)
        return SFTP_OK

    def rmdir(self, path: str) -> int:
        target = self._resolve(path, follow=False)
        _refuse_protected(target)
        with _os_errors():
            os.rmdir(target.real)
        self.session.audit(Event.RMDIR, path=target.vpath)
        return SFTP_OK

    def chattr(self, path: str, attr) -> int:
        target = self._resolve(path)
        if attr._flags & attr.FLAG_SIZE:
            return SFTP_OP_UNSUPPORTED  # truncating in place would bypass atomic uploads
        if attr._flags & attr.FLAG_AMTIME:
            with _os_errors():
                os.utime(target.real, (attr.st_atime, attr.st_mtime))
        return SFTP_OK  # permissions and owners: ignored, as clients set them by habit

    def symlink(self, target_path: str, path: str) -> int:
        self.session.audit(
            Event.REFUSED_PATH, path=path, detail=f"symlink to {target_path!r} refused"
        )
        raise SftpRefusal(SFTP_PERMISSION_DENIED, "Permission denied: symbolic links")


# --------------------------------------------------------------------------- helpers


def temp_name(name: str) -> str:
    """``.<name>.<16 hex>.upload``, shortening ``name`` so the whole fits NAME_MAX."""
    budget = MAX_NAME_BYTES - len(".") - len(".") - 16 - len(TEMP_SUFFIX)
    short = name.encode("utf-8", "surrogatepass")[:budget].decode("utf-8", "ignore")
    return f".{short}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


@contextmanager
def _os_errors() -> Iterator[None]:
    """``with _os_errors():`` turns an OSError into the matching SFTP refusal."""
    try:
        yield
    except OSError as exc:
        raise refusal_for(exc) from exc


def _refuse_protected(target: Resolved) -> None:
    if target.vpath in PROTECTED:
        raise SftpRefusal(SFTP_PERMISSION_DENIED, f"Permission denied: {target.vpath} is kept")


def _lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise refusal_for(exc) from exc


def _encodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False  # undecodable bytes on disk: cannot be sent as SFTP text
    return True


def _copy_file(source: str, dst_fd: int, length: int) -> None:
    src_fd = os.open(source, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    try:
        offset = 0
        while offset < length:
            chunk = _copy_chunk(src_fd, dst_fd, offset, min(length - offset, 1 << 24))
            if chunk == 0:
                break
            offset += chunk
    finally:
        os.close(src_fd)


def _copy_chunk(src_fd: int, dst_fd: int, offset: int, count: int) -> int:
    try:
        return os.copy_file_range(src_fd, dst_fd, count, offset, offset)
    except (AttributeError, OSError):
        data = os.pread(src_fd, min(count, 1 << 20), offset)
        os.pwrite(dst_fd, data, offset)
        return len(data)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        logger.warning("sftpd: could not delete %s", path, exc_info=True)
