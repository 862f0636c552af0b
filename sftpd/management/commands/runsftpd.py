"""Run the managed SFTP server until SIGTERM/SIGINT.

    python manage.py runsftpd [--host H] [--port P]

On SIGTERM or SIGINT: stop accepting, close the sessions (unfinished uploads are
deleted, never published), flush the audit log, exit 0.
"""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand

from sftpd.conf import load_config
from sftpd.server import SftpServer


class Command(BaseCommand):
    help = "Run the managed SFTP server for partners."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", help="Address to listen on (MANAGED_SFTP_HOST).")
        parser.add_argument("--port", type=int, help="Port to listen on (MANAGED_SFTP_PORT).")

    def handle(self, *args, host: str | None = None, port: int | None = None, **options):
        server = SftpServer(load_config(host=host, port=port))
        listen_host, listen_port = server.start()
        self._on_signals(server)
        self.stdout.write(f"Managed SFTP server listening on {listen_host}:{listen_port}")
        self.stdout.write(f"Host key fingerprint: {server.fingerprint}")
        self.stdout.flush()
        try:
            server.serve_forever()
        finally:
            server.shutdown()
        self.stdout.write("Managed SFTP server stopped.")

    @staticmethod
    def _on_signals(server: SftpServer) -> None:
        def stop(signum, frame) -> None:
            server.request_stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
