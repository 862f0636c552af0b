"""Secrets are encrypted at rest, rotate under a new key, and fail loudly when unreadable."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from authorizations.crypto import DecryptionError
from authorizations.models import Authorization, Method

SECRETS = {
    "password": "hunter2-Password",
    "passphrase": "key-passphrase-xyz",
}


def make_authz(partner, **extra) -> Authorization:
    fields = dict(
        partner=partner,
        label="Acme",
        method=Method.SFTP_CLIENT,
        host="sftp.example.com",
        username="acme",
        **SECRETS,
    )
    fields.update(extra)
    # Saved without full_clean: these tests are about storage, not validation.
    return Authorization.objects.create(**fields)


def raw_table_dump() -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {Authorization._meta.db_table}")  # noqa: S608 (a model name)
        return repr(cursor.fetchall())


@pytest.mark.django_db
def test_database_holds_no_plaintext_secret(partner):
    make_authz(partner, pgp_passphrase="pgp-passphrase-abc")
    dump = raw_table_dump()
    for secret in [*SECRETS.values(), "pgp-passphrase-abc"]:
        assert secret not in dump
    assert "gAAAAA" in dump  # Fernet tokens are there instead


@pytest.mark.django_db
def test_secret_reads_back_and_unchanged_save_keeps_token(partner):
    authz = make_authz(partner)
    loaded = Authorization.objects.get(pk=authz.pk)
    before = raw_table_dump()
    assert loaded.password == SECRETS["password"]
    loaded.label = "renamed"
    loaded.save()
    after = raw_table_dump()
    token = [t for t in before.split("'") if t.startswith("gAAAAA")]
    assert token and all(t in after for t in token)


@pytest.mark.django_db
def test_unreadable_secret_raises_naming_the_record(partner, settings):
    authz = make_authz(partner)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    loaded = Authorization.objects.get(pk=authz.pk)
    with pytest.raises(DecryptionError) as exc:
        _ = loaded.password
    assert f"Authorization #{authz.pk} .password" in str(exc.value)
    assert SECRETS["password"] not in str(exc.value)


@pytest.mark.django_db
def test_listing_does_not_decrypt(partner, settings):
    make_authz(partner)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    labels = [a.label for a in Authorization.objects.all()]  # no DecryptionError
    assert labels == ["Acme"]


@pytest.mark.django_db
def test_rotation_reencrypts_under_newest_key(partner, settings):
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    authz = make_authz(partner)
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    out = io.StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "Re-encrypted 2 value(s)" in out.getvalue()
    settings.FIELD_ENCRYPTION_KEYS = [new_key]  # the old key can now be dropped
    loaded = Authorization.objects.get(pk=authz.pk)
    assert loaded.password == SECRETS["password"]
    assert loaded.passphrase == SECRETS["passphrase"]


@pytest.mark.django_db
def test_rotation_reports_values_no_key_opens(partner, settings):
    authz = make_authz(partner)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError) as exc:
        call_command("rotate_encryption_keys", stdout=io.StringIO())
    assert f"Authorization #{authz.pk}" in str(exc.value)


@pytest.mark.django_db
def test_dumpdata_never_writes_plaintext(partner):
    make_authz(partner)
    out = io.StringIO()
    call_command("dumpdata", "authorizations.authorization", stdout=out)
    for secret in SECRETS.values():
        assert secret not in out.getvalue()
