"""System checks that stop a production start with missing secrets."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=False)
def production_secrets(app_configs, **kwargs) -> list[Error]:
    if settings.DEBUG:
        return []
    errors = []
    if not settings.SECRET_KEY_FROM_ENV:
        errors.append(
            Error(
                "SECRET_KEY is not set while DEBUG is off.",
                hint="Set it: export SECRET_KEY=\"$(python -c 'import secrets; "
                "print(secrets.token_urlsafe(50))')\"",
                id="lyticsops.E001",
            )
        )
    if not settings.FIELD_ENCRYPTION_KEYS_FROM_ENV:
        errors.append(
            Error(
                "FIELD_ENCRYPTION_KEYS is not set while DEBUG is off.",
                hint="Set it: export FIELD_ENCRYPTION_KEYS=\"$(python -c 'from cryptography.fernet "
                "import Fernet; print(Fernet.generate_key().decode())')\"",
                id="lyticsops.E002",
            )
        )
    return errors


def ensure_production_ready() -> None:
    """Refuse to serve (WSGI/ASGI/Celery) when the checks above fail.

    `manage.py runserver` and `migrate` run system checks themselves; gunicorn and Celery
    do not, so their entry points call this.
    """
    from django.core.exceptions import ImproperlyConfigured

    errors = production_secrets(None)
    if errors:
        raise ImproperlyConfigured("; ".join(f"{e.id}: {e.msg} {e.hint}" for e in errors))
