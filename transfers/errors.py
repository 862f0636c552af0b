"""Errors of the transfer pipeline.

Every error raised out of a run says whether retrying can help (``retryable``). The
modules that talk to outside systems (`sftp.py`, `pgp.py`) have their own error types with
the same attribute; the worker treats them all alike: `is_retryable(exc)`.
"""

from __future__ import annotations


class TransferError(Exception):
    """A run cannot complete. Permanent unless ``retryable`` is True."""

    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigError(TransferError):
    """The job or its authorization is set up wrong; a person must fix it."""


class FileRejected(TransferError):
    """One file cannot be imported (bad format, wrong key...). Other files go on."""


class JobLocked(TransferError):
    """Another run of the same job holds the lock; try again later."""

    retryable = True


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return bool(getattr(exc, "retryable", False))
