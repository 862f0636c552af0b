"""Shared fixtures. Feature-specific fixtures live in tests/support/ and are plugged in here."""

import pytest

pytest_plugins = [
    "tests.support.gpgkeys",
    "tests.support.sshd",
    "tests.support.sftpd",
    "tests.support.jobs",
    "tests.support.api",
]


@pytest.fixture
def partner(db):
    from authorizations.models import Partner

    return Partner.objects.create(name="Acme Retail", slug="acme")


@pytest.fixture
def other_partner(db):
    from authorizations.models import Partner

    return Partner.objects.create(name="Globex", slug="globex")


@pytest.fixture
def staff_client(client, django_user_model):
    """The Django test client, logged in as a superuser."""
    user = django_user_model.objects.create_superuser("staff", "staff@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Django's PBKDF2 costs ~0.2 s per hash here; tests hash many times. The client-secret
    # hasher (added by the API) stays in the list so its hashes still verify.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"] + [
        h for h in settings.PASSWORD_HASHERS if "MD5" not in h
    ]
