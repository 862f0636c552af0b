"""Gunicorn settings for the web container (see deploy/README.md, "Sizing the web tier").

Every value can be changed through the environment without rebuilding the image.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Processes: about 2 per core. Threads let one process serve a slow request (an admin
# "Test connection" waits on a partner's SFTP server) without blocking the others.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
# Longer than SFTP_CONNECT_TIMEOUT plus a directory listing: "Test connection" runs in-request.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5  # behind a load balancer that reuses connections
# Recycle workers now and then so a slow leak never grows without bound.
max_requests = 2000
max_requests_jitter = 200
# The heartbeat file on tmpfs: on overlay filesystems its writes can stall the worker.
# (gunicorn creates it with mkstemp: a private, unpredictable name.)
_SHM = "/dev/shm"  # noqa: S108
worker_tmp_dir = _SHM if os.path.isdir(_SHM) else None

_LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
_FORMATTER = (
    {"()": "lyticsops.logging.JsonFormatter"}
    if _LOG_FORMAT == "json"
    else {
        "()": "lyticsops.logging.PlainFormatter",
        "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
    }
)
# Gunicorn's own records (boot, worker timeouts, the access log) in the same format as the
# application's, redacted the same way (the access log's request line may hold a token).
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "lyticsops.logging.RedactingFilter"}},
    "formatters": {"default": _FORMATTER},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "filters": ["redact"],
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
    },
}
