#!/bin/sh
# Entry point of the lyticsops image. The command (gunicorn, celery worker/beat, runsftpd)
# comes from docker-compose.yml; this only applies migrations first where asked to.
#
# MIGRATE_ON_START=1 is set on the web service alone: one place migrates, and the worker,
# beat and sftpd wait for web to be healthy (after its migrations) before they start.
# With several web replicas, migrate as a release step instead (deploy/README.md).
set -eu

if [ "${MIGRATE_ON_START:-0}" = "1" ]; then
    echo "entrypoint: applying database migrations" >&2
    python /app/manage.py migrate --no-input
fi

# exec: the command becomes PID 1's child directly and receives SIGTERM itself.
exec "$@"
