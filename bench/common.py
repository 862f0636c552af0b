"""What the PostgreSQL benchmarks share: psql, and a migrated database of their own."""

from __future__ import annotations

import os
import subprocess


def psql(url: str, *args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", *args],
        input=stdin,
        capture_output=True,
        check=True,
    )
    return done.stdout.decode()


def migrated_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server if missing, point Django at it, migrate.

    Each benchmark has its own database, so that it never disturbs the test database.
    Returns the database's URL.
    """
    if not name.replace("_", "").isalnum():
        raise SystemExit("--db: letters, digits and _ only")
    exists = psql(server_url, "-c", f"select 1 from pg_database where datname = '{name}'")  # noqa: S608
    if not exists.strip():
        psql(server_url, "-c", f'create database "{name}"')
    url = server_url.rsplit("/", 1)[0] + "/" + name
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lyticsops.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return url
