# syntax=docker/dockerfile:1
# lyticsops: one image for every role -- web (gunicorn), Celery worker, Celery beat and the
# managed SFTP server (runsftpd). docker-compose.yml picks the role through the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# gpg: PGP encrypt/decrypt (python-gnupg drives the binary); openssh-client: ssh-keygen for
# generated key pairs and checks. Nothing else: a small image has less to patch.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gnupg openssh-client \
 && rm -rf /var/lib/apt/lists/*

# Dependencies before the code, so that this layer is rebuilt only when they change.
WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .

# Static files are collected into the image. The SECRET_KEY here is a throw-away that exists
# for this one command only (not ENV, so not in the running image); DEBUG=0 keeps settings
# from generating development secrets, and VAR_DIR points at a directory removed right after.
RUN SECRET_KEY=collectstatic-only-not-a-secret DEBUG=0 VAR_DIR=/tmp/build-var \
    python manage.py collectstatic --no-input \
 && rm -rf /tmp/build-var \
 && chmod 0755 docker/entrypoint.sh

# A fixed non-root user; the code stays root-owned and read-only to it. The data
# directories exist (owned by it) so that named volumes mounted there inherit the owner.
RUN groupadd --system --gid 10001 lyticsops \
 && useradd --system --uid 10001 --gid lyticsops --create-home --home-dir /home/lyticsops \
      --shell /usr/sbin/nologin lyticsops \
 && install -d -o lyticsops -g lyticsops -m 0750 \
      /srv/lyticsops/var /srv/lyticsops/sftp /srv/lyticsops/hostkey

ENV DEBUG=0 \
    LOG_FORMAT=json \
    VAR_DIR=/srv/lyticsops/var \
    MANAGED_SFTP_ROOT=/srv/lyticsops/sftp \
    MANAGED_SFTP_HOST_KEY=/srv/lyticsops/hostkey/ssh_host_key

USER lyticsops
EXPOSE 8000 2222
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["gunicorn", "--config", "/app/docker/gunicorn.conf.py", "lyticsops.wsgi:application"]
