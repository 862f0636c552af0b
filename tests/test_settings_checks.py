"""Production start-up refuses missing secrets with a system check that has an id."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent


def run_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "FIELD_ENCRYPTION_KEYS")}
    base.update({"VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"})
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_without_secret_key_stops_with_check_id(tmp_path):
    result = run_check(tmp_path, DEBUG="0", FIELD_ENCRYPTION_KEYS=Fernet.generate_key().decode())
    assert result.returncode != 0
    assert "lyticsops.E001" in result.stderr
    assert "SECRET_KEY" in result.stderr
    assert "lyticsops.E002" not in result.stderr


def test_production_without_encryption_keys_stops_with_check_id(tmp_path):
    result = run_check(tmp_path, DEBUG="0", SECRET_KEY="x" * 50)
    assert result.returncode != 0
    assert "lyticsops.E002" in result.stderr
    assert "Fernet.generate_key" in result.stderr


def test_production_with_both_secrets_passes(tmp_path):
    result = run_check(
        tmp_path,
        DEBUG="0",
        SECRET_KEY="x" * 50,
        FIELD_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="example.com",
    )
    assert result.returncode == 0, result.stderr


def test_development_generates_keys_once_into_var(tmp_path):
    first = run_check(tmp_path, DEBUG="1")
    assert first.returncode == 0, first.stderr
    key = (tmp_path / "field-encryption-key").read_text()
    Fernet(key.strip().encode())  # a valid key
    assert oct((tmp_path / "field-encryption-key").stat().st_mode & 0o777) == "0o600"
    run_check(tmp_path, DEBUG="1")
    assert (tmp_path / "field-encryption-key").read_text() == key


def test_wsgi_refuses_to_serve_without_secrets(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "FIELD_ENCRYPTION_KEYS")}
    env.update({"DEBUG": "0", "VAR_DIR": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "-c", "import lyticsops.wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "lyticsops.E001" in result.stderr and "lyticsops.E002" in result.stderr


@pytest.mark.parametrize("value", ["not-a-key", "abc,def"])
def test_bad_encryption_key_is_reported_clearly(settings, value):
    from django.core.exceptions import ImproperlyConfigured

    from authorizations import crypto

    settings.FIELD_ENCRYPTION_KEYS = value.split(",")
    with pytest.raises(ImproperlyConfigured, match="not a Fernet key"):
        crypto.encrypt("x")
