"""Run web, Celery worker, Celery beat and the managed SFTP server in the foreground.

Ctrl-C (or SIGTERM) stops them all; if one of them dies, the others are stopped too, so a
broken piece is never hidden behind a running web server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand


def processes(port: str) -> dict[str, list[str]]:
    python = sys.executable
    manage = [python, str(settings.BASE_DIR / "manage.py")]
    celery = [python, "-m", "celery", "-A", "lyticsops"]
    return {
        "web": [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
        "worker": [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2"],
        "beat": [*celery, "beat", "--loglevel", "INFO", "--pidfile", ""],
        "sftpd": [*manage, "runsftpd"],
    }


class Command(BaseCommand):
    help = "Run web, worker, beat and runsftpd together until Ctrl-C."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))

    def handle(self, *args, port: str, **options) -> None:
        children: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(signum, frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name, argv in processes(port).items():
            # Own process group: the terminal's Ctrl-C reaches us, and we stop them in order.
            children[name] = subprocess.Popen(argv, start_new_session=True)
            self.stdout.write(f"started {name} (pid {children[name].pid})")
        exit_code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(f"{name} exited with status {child.returncode}; stopping.")
                    exit_code, stopping = 1, True
                    break
            time.sleep(0.5)
        self._stop_all(children)
        sys.exit(exit_code)

    def _stop_all(self, children: dict[str, subprocess.Popen]) -> None:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, child in children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in time; killing it.")
                child.kill()
                child.wait()
        self.stdout.write("all processes stopped.")
