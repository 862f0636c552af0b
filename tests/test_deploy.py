"""The production deployment files: docker-compose.yml, Dockerfile, docker/ helpers.

CI has no Docker engine, so docker-compose.yml is validated against the Compose
Specification's JSON schema (vendored in deploy/compose-spec.json) plus the rules that
matter to this application: the roles, one beat, shared storage, secrets from `.env`.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest
import yaml

from lyticsops.logging import is_secret_key

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "deploy" / "compose-spec.json"
DEPLOY_README = ROOT / "deploy" / "README.md"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

# sha256 of compose-spec.json as shipped in the check-jsonschema 0.39.0 wheel
# (check_jsonschema/builtin_schemas/vendor/); update both together.
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

APP_SERVICES = ("web", "worker", "beat", "sftpd")
REQUIRED_SECRETS = ("SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "POSTGRES_PASSWORD")
STORAGE = "/srv/lyticsops/sftp"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+x}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def command_text(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def strings(node: object) -> list[str]:
    """Every string value (and mapping key) in a parsed YAML document."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return []


def variables(compose: dict) -> dict[str, set[str]]:
    """Interpolated variable -> the operators it is used with ("" for a bare ${VAR})."""
    found: dict[str, set[str]] = {}
    for text in strings(compose):
        for match in INTERPOLATION.finditer(text.replace("$$", "")):
            found.setdefault(match["name"], set()).add(match["op"] or "")
    return found


# --------------------------------------------------------------------------- schema


def test_vendored_schema_is_the_published_one():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert (ROOT / "deploy" / "LICENSE.compose-spec").is_file()


def test_compose_file_matches_the_compose_specification(compose):
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def _mutations() -> list:
    def service_key(doc: dict) -> None:
        doc["services"]["web"]["restart_policy"] = "always"  # not a service key

    def volume_key(doc: dict) -> None:
        doc["volumes"]["pgdata"] = {"driverr": "local"}  # not a volume key

    def condition(doc: dict) -> None:
        doc["services"]["worker"]["depends_on"]["web"]["condition"] = "service_ready"

    return [service_key, volume_key, condition]


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_the_schema_check_is_not_vacuous(compose, mutate):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    broken = json.loads(json.dumps(compose))
    mutate(broken)
    assert not validator.is_valid(broken)


def test_interpolations_are_well_formed():
    text = COMPOSE_FILE.read_text().replace("$$", "")
    leftovers = INTERPOLATION.sub("", text)
    assert "$" not in leftovers, "a bare $VAR or a broken ${...}; write $$ for a literal $"


# --------------------------------------------------------------------------- roles


def test_every_role_is_there(services):
    assert set(services) >= {"web", "worker", "beat", "sftpd", "postgres", "redis"}
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")


def test_role_commands(services):
    web = command_text(services["web"])
    assert web.startswith("gunicorn ") and "lyticsops.wsgi" in web
    assert command_text(services["worker"]).startswith("celery -A lyticsops worker")
    beat = command_text(services["beat"])
    assert beat.startswith("celery -A lyticsops beat")
    assert "django_celery_beat.schedulers:DatabaseScheduler" in beat
    sftpd = command_text(services["sftpd"])
    assert sftpd == "python manage.py runsftpd --host 0.0.0.0 --port 2222"


def test_exactly_one_beat(services):
    beats = [name for name, svc in services.items() if " beat" in command_text(svc)]
    assert beats == ["beat"]
    assert services["beat"]["deploy"]["replicas"] == 1
    for name, svc in services.items():  # no worker with an embedded beat either
        words = command_text(svc).split()
        assert "-B" not in words and "--beat" not in words, name


def test_app_services_share_one_image_and_settings(services):
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    envs = [services[name]["environment"] for name in APP_SERVICES]
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "FIELD_ENCRYPTION_KEYS"):
        assert len({env[key] for env in envs}) == 1, key
    env = envs[0]
    assert env["DEBUG"] == "0"
    assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert (
        env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
    )
    assert env["REDIS_URL"].startswith("redis://redis:6379/")
    for key in ("ALLOWED_HOSTS", "MANAGED_SFTP_ROOT", "MANAGED_SFTP_HOST_KEY"):
        assert env[key], key


def test_only_web_migrates_on_start(services):
    migrating = [n for n, s in services.items() if s.get("environment", {}).get("MIGRATE_ON_START")]
    assert migrating == ["web"]
    assert services["web"]["environment"]["MIGRATE_ON_START"] == "1"


def test_the_others_wait_for_a_healthy_web(services):
    for name in ("worker", "beat", "sftpd"):
        assert services[name]["depends_on"]["web"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        for dep in ("postgres", "redis"):
            assert services[name]["depends_on"][dep]["condition"] == "service_healthy"


def test_healthchecks(services):
    for name in ("web", "worker", "sftpd", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert "healthcheck.py" in " ".join(services["web"]["healthcheck"]["test"])
    assert "/healthz" in (ROOT / "docker" / "healthcheck.py").read_text()


# --------------------------------------------------------------------------- storage


def mounts(service: dict) -> dict[str, str]:
    """Mount target -> source (named volume or host path), short syntax."""
    result = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        result[target] = source
    return result


def test_worker_and_sftpd_share_the_account_storage(compose, services):
    for name in ("worker", "sftpd", "web"):
        assert services[name]["environment"]["MANAGED_SFTP_ROOT"] == STORAGE
        assert mounts(services[name]).get(STORAGE) == "sftp-data", name
    assert "sftp-data" in compose["volumes"]


def test_host_key_is_on_a_volume_of_its_own(compose, services):
    key_path = services["sftpd"]["environment"]["MANAGED_SFTP_HOST_KEY"]
    key_dir = str(Path(key_path).parent)
    volume = mounts(services["sftpd"]).get(key_dir)
    assert volume in compose["volumes"] and volume != "sftp-data"
    assert not key_path.startswith(STORAGE + "/")  # never inside the partners' storage


def test_databases_keep_their_data(services):
    assert mounts(services["postgres"]).get("/var/lib/postgresql/data") == "pgdata"
    assert mounts(services["redis"]).get("/data") == "redis-data"
    assert "--appendonly" in services["redis"]["command"]


# --------------------------------------------------------------------------- secrets


def test_required_secrets_fail_loudly_when_missing(compose):
    used = variables(compose)
    for name in (*REQUIRED_SECRETS, "ALLOWED_HOSTS"):
        assert used.get(name) == {":?"}, f"{name} must always be ${{{name}:?message}}"


def test_no_secret_is_written_into_the_compose_file(compose, services):
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if is_secret_key(key) and value:
                assert re.fullmatch(r"\$\{[^}]+\}", value), f"{name}.{key} is hard-coded"
    for text in strings(compose):
        assert "PRIVATE KEY" not in text
        for match in re.finditer(r"://[^/@\s]*:([^@/\s]*)@", text):  # user:password@ in URLs
            assert match[1].startswith("${"), text


def test_every_variable_is_documented(compose):
    readme = DEPLOY_README.read_text()
    example = ENV_EXAMPLE.read_text()
    for name in variables(compose):
        assert f"`{name}`" in readme, f"{name} is not described in deploy/README.md"
        assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} is not in env.example"


def test_env_files_stay_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv", "var"} <= set(ignored)


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_dockerfile_base_packages_and_requirements():
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [rest for word, rest in steps if word == "RUN"]
    apt = next(r for r in runs if "apt-get install" in r)
    assert re.search(r"\bgnupg\b", apt) and re.search(r"\bopenssh-client\b", apt)
    assert any("pip install -r requirements.txt" in r for r in runs)
    assert ("COPY", "requirements.txt ./") in steps


def test_dockerfile_runs_as_a_user_and_bakes_no_secret():
    steps = dockerfile_instructions()
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in {"root", "0"}
    for word, rest in steps:
        if word in {"ENV", "ARG"}:
            assert "SECRET" not in rest and "PASSWORD" not in rest
    collect = [rest for word, rest in steps if word == "RUN" and "collectstatic" in rest]
    assert len(collect) == 1 and "SECRET_KEY=" in collect[0] and "DEBUG=0" in collect[0]
    assert ("ENTRYPOINT", '["/app/docker/entrypoint.sh"]') in steps


# --------------------------------------------------------------------------- docker/


def test_entrypoint_is_executable_and_valid_sh():
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


def _fake_python(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_entrypoint_migrates_only_when_asked(tmp_path):
    env = _fake_python(tmp_path)
    calls = tmp_path / "calls"
    out = subprocess.run(
        [str(ENTRYPOINT), "echo", "started"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout == "started\n" and not calls.exists()
    out = subprocess.run(
        [str(ENTRYPOINT), "echo", "started"],
        env={**env, "MIGRATE_ON_START": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert calls.read_text() == "/app/manage.py migrate --no-input\n"
    assert out.stdout == "started\n"


def _load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "container_healthcheck", ROOT / "docker" / "healthcheck.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        ("ops.example.com,localhost", "ops.example.com"),
        ("*, .example.com", "example.com"),
        ("", "localhost"),
        ("*", "localhost"),
    ],
)
def test_healthcheck_host_header(monkeypatch, allowed, expected):
    monkeypatch.setenv("ALLOWED_HOSTS", allowed)
    assert _load_healthcheck().allowed_host() == expected


class _Healthz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # http.server's naming
        ok = self.path == "/healthz" and self.headers["Host"] == "ops.example.com"
        body = b'{"status": "ok"}' if ok else b"bad host"
        self.send_response(self.status if ok else 400)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_web(monkeypatch, status, healthy):
    handler = type("Handler", (_Healthz,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("ALLOWED_HOSTS", "ops.example.com")
        monkeypatch.setenv("HEALTHCHECK_WEB_PORT", str(server.server_address[1]))
        assert (_load_healthcheck().main(["healthcheck.py", "web"]) == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_sftp(monkeypatch):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"SSH-2.0-lyticsops\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("HEALTHCHECK_SFTP_PORT", str(port))
    module = _load_healthcheck()
    assert module.main(["healthcheck.py", "sftp"]) == 0
    thread.join(5)
    listener.close()
    assert module.main(["healthcheck.py", "sftp"]) == 1  # nobody listens any more


def test_gunicorn_config_is_accepted_by_gunicorn(tmp_path):
    env = {
        **os.environ,
        "LOG_FORMAT": "json",
        "VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "lyticsops.settings",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--check-config",
            "--config",
            str(ROOT / "docker" / "gunicorn.conf.py"),
            "lyticsops.wsgi:application",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
