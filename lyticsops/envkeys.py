"""Development-only secrets, generated once into var/ and reused across restarts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def dev_secret(var_dir: Path, name: str, *, fernet: bool = False, nbytes: int = 50) -> str:
    """Return the secret stored in ``var_dir/name``, creating it (mode 0600) if missing."""
    path = Path(var_dir) / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    if fernet:
        from cryptography.fernet import Fernet

        value = Fernet.generate_key().decode()
    else:
        value = secrets.token_urlsafe(nbytes)
    # O_EXCL: two processes starting at once must not write two different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
