"""GET /healthz: database, broker, gpg and storage checks for load balancers."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time

import pytest

from lyticsops import health


@pytest.fixture(autouse=True)
def _healthy_env(settings, tmp_path, monkeypatch):
    """A working baseline: writable storage, a filesystem broker, the real gpg."""
    broker = tmp_path / "broker"
    broker.mkdir()
    (tmp_path / "sftp").mkdir()
    (tmp_path / "var").mkdir()
    settings.MANAGED_SFTP_ROOT = tmp_path / "sftp"
    settings.VAR_DIR = tmp_path / "var"
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(broker),
        "data_folder_out": str(broker),
    }
    monkeypatch.delenv("GPG_BINARY", raising=False)
    health.reset_cache()
    yield
    health.reset_cache()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_all_checks_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "gpg": "ok", "storage": "ok"},
    }


@pytest.mark.django_db
def test_head_is_allowed_and_post_is_not(client):
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_broker_on_a_closed_port_fails_fast(client, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    response = client.get("/healthz")
    assert time.monotonic() - started < health.BROKER_TIMEOUT * 2 + 1
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"] == "unreachable"
    assert body["checks"]["database"] == "ok"
    assert "127.0.0.1" not in response.content.decode()


@pytest.fixture
def redis_url(tmp_path):
    """A throw-away redis-server on a free loopback port (skipped when not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.django_db
def test_broker_ok_on_a_live_redis(client, settings, redis_url):
    settings.CELERY_BROKER_URL = redis_url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    response = client.get("/healthz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"]["broker"] == "ok"


@pytest.mark.django_db
def test_storage_that_cannot_be_written_fails(client, settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings.MANAGED_SFTP_ROOT = blocker / "sftp"  # a path under a file: never writable
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["storage"]
    assert body["checks"]["storage"] == "not writable: sftp_root"
    assert str(tmp_path) not in response.content.decode()  # no internal paths


@pytest.mark.django_db
def test_storage_probe_leaves_nothing_behind(client, settings):
    assert client.get("/healthz").status_code == 200
    assert list(settings.MANAGED_SFTP_ROOT.iterdir()) == []
    assert list(settings.VAR_DIR.iterdir()) == []


@pytest.mark.django_db
def test_missing_gpg_fails(client, monkeypatch):
    monkeypatch.setenv("GPG_BINARY", "gpg-that-does-not-exist-here")
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["gpg"]
    assert body["checks"]["gpg"] == "not found"
    assert "gpg-that-does-not-exist" not in response.content.decode()


@pytest.mark.django_db
def test_a_crashing_check_reports_error_without_its_text(client, monkeypatch):
    def boom() -> None:
        raise RuntimeError("password=hunter2 at /srv/internal/path")

    monkeypatch.setitem(health.CHECKS, "database", boom)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "error"
    assert "hunter2" not in response.content.decode()
    assert "/srv/internal" not in response.content.decode()


@pytest.mark.django_db
def test_results_are_cached_briefly(client, monkeypatch):
    calls = []
    monkeypatch.setitem(health.CHECKS, "gpg", lambda: calls.append(1))
    client.get("/healthz")
    client.get("/healthz")
    assert len(calls) == 1
    monkeypatch.setattr(health, "CACHE_SECONDS", 0.0)
    client.get("/healthz")
    assert len(calls) == 2


@pytest.mark.django_db
def test_failures_are_logged_once_per_change(client, monkeypatch, settings, caplog):
    monkeypatch.setattr(health, "CACHE_SECONDS", 0.0)
    monkeypatch.setenv("GPG_BINARY", "gpg-that-does-not-exist-here")
    with caplog.at_level(logging.INFO, logger="lyticsops.health"):
        for _ in range(3):
            client.get("/healthz")
        monkeypatch.delenv("GPG_BINARY")
        client.get("/healthz")
    messages = [r.getMessage() for r in caplog.records if r.name == "lyticsops.health"]
    failures = [m for m in messages if "failed" in m]
    assert len(failures) == 1
    # The log (unlike the response) carries the detail an operator needs.
    assert failures[0].startswith("healthz check gpg failed: not found (GpgUnavailable: ")
    assert "healthz check gpg recovered" in messages
    # The 503s themselves are not logged as django.request errors on every probe.
    assert not [r for r in caplog.records if r.name == "django.request"]


@pytest.mark.django_db
def test_host_header_must_be_allowed(client, settings):
    # Documented in deploy/README.md: probes must send an allowed Host.
    settings.ALLOWED_HOSTS = ["ops.example.com"]
    assert client.get("/healthz", HTTP_HOST="10.1.2.3").status_code == 400
    assert client.get("/healthz", HTTP_HOST="ops.example.com").status_code == 200
