"""Container health checks, run inside the container by docker-compose.yml.

    python docker/healthcheck.py web    GET /healthz with a Host that ALLOWED_HOSTS accepts
    python docker/healthcheck.py sftp   the managed SFTP server answers with an SSH banner

Exit status 0 when healthy, 1 otherwise (with a one-line reason that `docker inspect` shows).
Standard library only: it must work even when the application cannot start.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request

TIMEOUT = 8.0  # below the compose healthcheck timeout


def allowed_host() -> str:
    """The first concrete name in ALLOWED_HOSTS: Django answers 400 to any other Host."""
    for entry in os.environ.get("ALLOWED_HOSTS", "").split(","):
        name = entry.strip().lstrip(".")  # ".example.com" allows example.com itself too
        if name and name != "*":
            return name
    return "localhost"


def check_web() -> str | None:
    port = os.environ.get("HEALTHCHECK_WEB_PORT", "8000")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/healthz", headers={"Host": allowed_host()}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read(500).decode('utf-8', 'replace')}"
    except OSError as exc:
        return f"no answer: {exc}"


def check_sftp() -> str | None:
    port = int(os.environ.get("HEALTHCHECK_SFTP_PORT", "2222"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            banner = sock.recv(256)
    except OSError as exc:
        return f"no answer: {exc}"
    return None if banner.startswith(b"SSH-2.0-") else "no SSH banner"


def main(argv: list[str]) -> int:
    checks = {"web": check_web, "sftp": check_sftp}
    if len(argv) != 2 or argv[1] not in checks:
        print(f"usage: {argv[0]} {{{'|'.join(checks)}}}", file=sys.stderr)
        return 2
    problem = checks[argv[1]]()
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
