"""The folder a job reads from or writes to, whatever kind of authorization it uses.

`open_folder(job)` yields an object with the `SftpSession` interface (`Folder`):

* An authorization that connects out (a partner's SFTP server, or a login to one of our
  managed accounts over SFTP) gets a real `transfers.sftp` session on
  ``job.folder or authorization.folder``. The server's host key is pinned on the first
  successful connection (`services.pin_host_key`); later connections are checked against it
  by `sftp.connect`, and a mismatch fails the run.
* A managed SFTP account itself (method ``managed_sftp``) is served by *our* server, whose
  storage is ``MANAGED_SFTP_ROOT/<username>/``. Workers read and write that storage directly
  (`LocalFolder`) instead of logging in to ourselves: they must therefore share it with
  ``runsftpd`` (same machine, or the same network volume mounted at the same path). The
  job's folder is relative to the account's home (e.g. ``inbound``).

Names given to a folder are relative to it; ``..``, absolute paths and NUL bytes are refused,
and a `LocalFolder` never follows a symlink out of its root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as statmod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from django.conf import settings

from authorizations import services
from authorizations.models import Authorization
from transfers.errors import ConfigError
from transfers.sftp import RemoteFile, SftpError

Progress = Callable[[int], None]
COPY_CHUNK = 1024 * 1024


class Folder(Protocol):
    """What imports and exports need from a folder (SftpSession and LocalFolder have it)."""

    def list_files(self, include_dirs: bool = False) -> list[RemoteFile]: ...
    def stat(self, name: str) -> RemoteFile: ...
    def exists(self, name: str) -> bool: ...
    def download(self, name: str, fileobj: BinaryIO, progress: Progress | None = None) -> int: ...
    def open_read(self, name: str) -> BinaryIO: ...
    def upload(self, fileobj: BinaryIO, name: str, progress: Progress | None = None) -> int: ...
    def open_write(self, name: str) -> Any: ...
    def rename(self, old: str, new: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def mkdir(self, name: str) -> None: ...


def job_folder(job: Any) -> str:
    """The job's folder, else its authorization's."""
    return (job.folder or job.authorization.folder or "").strip()


@contextlib.contextmanager
def open_folder(job: Any, *, folder: str | None = None) -> Iterator[Folder]:
    """Open the job's folder (``folder`` overrides it); closes the connection on exit.

    Raises `SftpError` (``retryable`` says whether trying again can help) or `ConfigError`.
    """
    authz: Authorization = job.authorization
    path = job_folder(job) if folder is None else folder
    if authz.is_managed_account:
        yield LocalFolder(managed_home(authz), path)
        return
    if not authz.connects_out:
        raise ConfigError(f"The authorization '{authz.label}' cannot be used for file transfers.")
    from transfers import sftp

    with sftp.connect(services.sftp_target(authz, folder=path)) as session:
        if not authz.host_key_fingerprint:
            services.pin_host_key(authz, session.host_key_fingerprint, session.host_key_type)
        yield session


def managed_home(authz: Authorization) -> Path:
    """Where runsftpd keeps a managed account's files."""
    username = authz.username
    if not username or "/" in username or username in (".", ".."):
        raise ConfigError(f"The managed account '{authz.label}' has no usable username.")
    return Path(settings.MANAGED_SFTP_ROOT) / username


class LocalFolder:
    """A directory on this machine with the SftpSession interface (managed accounts)."""

    def __init__(self, home: Path, folder: str = "") -> None:
        self.home = home
        self.folder = folder.strip("/") if folder else ""
        self.root = self._resolve_root()
        self.host_key_fingerprint = ""
        self.host_key_type = ""

    def __enter__(self) -> LocalFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _resolve_root(self) -> Path:
        if self.folder and (".." in self.folder.split("/") or "\x00" in self.folder):
            raise ConfigError(f"The folder '{self.folder}' must stay inside the account's home.")
        root = (self.home / self.folder) if self.folder else self.home
        if not root.is_dir():
            where = f"folder '{self.folder}'" if self.folder else "the account's home"
            raise SftpError("folder_missing", f"{where} does not exist on the managed server")
        resolved = root.resolve()
        if not resolved.is_relative_to(self.home.resolve()):
            raise SftpError("permission", f"folder '{self.folder}' leaves the account's home")
        return resolved

    # ---------------------------------------------------------------- paths

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or name.startswith("/") or "\x00" in name or ".." in parts:
            raise ValueError(f"invalid file name {name!r}")
        path = self.root.joinpath(*parts)
        # Symlinks must never lead outside the folder (runsftpd refuses creating them, but
        # the storage may be shared with other tools).
        if not path.resolve().is_relative_to(self.root):
            raise SftpError("permission", f"'{name}' points outside the folder")
        return path

    @contextlib.contextmanager
    def _errors(self, action: str, name: str | None) -> Iterator[None]:
        try:
            yield
        except SftpError:
            raise
        except FileNotFoundError:
            raise SftpError("not_found", f"file '{name}' not found in the folder") from None
        except PermissionError:
            raise SftpError("permission", f"permission denied {action} '{name}'") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SftpError(
                    "server_error",
                    f"no space left on the managed SFTP storage {action} '{name}' (disk full "
                    "or quota reached); free some space, then run the job again",
                ) from None
            raise SftpError(
                "server_error", f"{action} '{name}' failed: {exc.strerror or exc}"
            ) from None

    # ---------------------------------------------------------------- listing

    def list_files(self, include_dirs: bool = False) -> list[RemoteFile]:
        files = []
        with self._errors("listing", "."), os.scandir(self.root) as entries:
            for entry in entries:
                found = self._entry(entry)
                if found is not None and (include_dirs or not found.is_dir):
                    files.append(found)
        return sorted(files, key=lambda f: f.name)

    def _entry(self, entry: os.DirEntry[str]) -> RemoteFile | None:
        try:
            if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(self.root):
                return None
            info = entry.stat()
        except OSError:
            return None  # vanished or dangling: not a file we can import
        return _remote_file(entry.name, info)

    def stat(self, name: str) -> RemoteFile:
        with self._errors("reading details of", name):
            return _remote_file(os.path.basename(name), self._path(name).stat())

    def exists(self, name: str) -> bool:
        try:
            return self._path(name).exists()
        except SftpError:
            return False

    # ---------------------------------------------------------------- transfers

    def open_read(self, name: str) -> BinaryIO:
        with self._errors("reading", name):
            return open(self._path(name), "rb", buffering=COPY_CHUNK)

    def download(self, name: str, fileobj: BinaryIO, progress: Progress | None = None) -> int:
        total = 0
        with self.open_read(name) as source:
            while chunk := source.read(COPY_CHUNK):
                fileobj.write(chunk)
                total += len(chunk)
                if progress is not None:
                    progress(total)
        return total

    def open_write(self, name: str) -> LocalWriter:
        with self._errors("creating", name):
            return LocalWriter(self, name, open(self._path(name), "wb", buffering=COPY_CHUNK))

    def upload(self, fileobj: BinaryIO, name: str, progress: Progress | None = None) -> int:
        total = 0
        with self.open_write(name) as target:
            while chunk := fileobj.read(COPY_CHUNK):
                target.write(chunk)
                total += len(chunk)
                if progress is not None:
                    progress(total)
        return total

    # ---------------------------------------------------------------- changing things

    def rename(self, old: str, new: str) -> None:
        """Atomic, and replaces an existing target (like posix-rename@openssh.com)."""
        with self._errors("renaming", old):
            os.replace(self._path(old), self._path(new))

    def remove(self, name: str) -> None:
        with self._errors("deleting", name):
            path = self._path(name)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a folder")
            path.unlink()

    def mkdir(self, name: str) -> None:
        with self._errors("creating folder", name):
            self._path(name).mkdir()


class LocalWriter:
    """A file being written in a `LocalFolder`, failing like a remote one would.

    Errors (a full disk shows up at ``write`` or only at ``close``, when the buffer is
    flushed) are `SftpError`, with the file's name, instead of a bare OSError; ``close``
    makes the bytes durable before the caller renames the file to its final name.
    """

    def __init__(self, folder: LocalFolder, name: str, file: BinaryIO) -> None:
        self._folder, self._name, self._file = folder, name, file

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        with self._folder._errors("writing", self._name):
            return self._file.write(data)

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            with self._folder._errors("writing", self._name):
                self._file.flush()
                os.fsync(self._file.fileno())
        except BaseException:
            self.abort()
            raise
        self._file.close()

    def abort(self) -> None:
        """Stop without finishing (the caller removes the partial file)."""
        with contextlib.suppress(OSError):
            self._file.close()

    def __enter__(self) -> LocalWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _remote_file(name: str, info: os.stat_result) -> RemoteFile:
    return RemoteFile(
        name=name,
        size=info.st_size,
        mtime=int(info.st_mtime),
        is_dir=statmod.S_ISDIR(info.st_mode),
    )
