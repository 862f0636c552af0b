"""Test connection from the admin, against a real OpenSSH sshd and a password-only server."""

import pytest
from django.urls import reverse

from authorizations.models import Authorization, Method


def press(staff_client, authz: Authorization, button: str = "test_connection") -> list[str]:
    url = reverse(f"admin:authorizations_authorization_{button}", args=[authz.pk])
    response = staff_client.post(url, follow=True)
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def sshd_authz(partner, sshd, key, **extra) -> Authorization:
    fields = dict(
        partner=partner,
        label="Acme",
        method=Method.SFTP_CLIENT,
        host=sshd.host,
        port=sshd.port,
        username=sshd.user,
        private_key=key.private,
    )
    fields.update(extra)
    authz = Authorization(**fields)
    authz.full_clean()
    authz.save()
    return authz


@pytest.mark.django_db
def test_key_auth_lists_the_folder_and_pins_the_host_key(staff_client, partner, sshd, ssh_keypair):
    key = ssh_keypair("ed25519", comment="admin-ok")
    sshd.authorize(key.public)
    (sshd.data_dir / "in").mkdir()
    (sshd.data_dir / "in" / "a.csv").write_text("x")
    authz = sshd_authz(partner, sshd, key, folder="in")
    messages = press(staff_client, authz)
    assert "public key" in messages[0].lower()
    authz.refresh_from_db()
    assert authz.host_key_fingerprint == sshd.host_key_fingerprint
    assert authz.last_test_ok is True
    page = staff_client.get(reverse("admin:authorizations_authorization_change", args=[authz.pk]))
    assert sshd.host_key_fingerprint in page.content.decode()


@pytest.mark.django_db
def test_refused_key_is_reported_as_auth_failure(staff_client, partner, sshd, ssh_keypair):
    key = ssh_keypair("ed25519", comment="admin-refused")  # never authorized
    authz = sshd_authz(partner, sshd, key)
    messages = press(staff_client, authz)
    assert "authentication failed" in messages[0].lower()
    authz.refresh_from_db()
    assert authz.last_test_ok is False and authz.host_key_fingerprint == ""


@pytest.mark.django_db
def test_missing_folder_is_reported(staff_client, partner, sshd, ssh_keypair):
    key = ssh_keypair("ed25519", comment="admin-folder")
    sshd.authorize(key.public)
    authz = sshd_authz(partner, sshd, key, folder="nope")
    assert "does not exist" in press(staff_client, authz)[0]


@pytest.mark.django_db
def test_changed_host_key_is_refused_naming_both_then_pin_can_be_cleared(
    staff_client, partner, sshd, ssh_keypair
):
    key = ssh_keypair("ed25519", comment="admin-rekey")
    sshd.authorize(key.public)
    authz = sshd_authz(partner, sshd, key)
    press(staff_client, authz)
    old = sshd.host_key_fingerprint
    sshd.restart_with_new_host_key()
    new = sshd.host_key_fingerprint
    message = press(staff_client, authz)[0]
    assert old in message and new in message
    authz.refresh_from_db()
    assert authz.host_key_fingerprint == old  # never silently replaced
    press(staff_client, authz, "clear_host_key")
    authz.refresh_from_db()
    assert authz.host_key_fingerprint == ""
    press(staff_client, authz)
    authz.refresh_from_db()
    assert authz.host_key_fingerprint == new


@pytest.mark.django_db
def test_key_refused_then_password_works(staff_client, partner, password_sftp_server, ssh_keypair):
    key = ssh_keypair("ed25519", comment="admin-fallback")  # the server does not know it
    authz = Authorization(
        partner=partner,
        label="Fallback",
        method=Method.SFTP_CLIENT,
        host=password_sftp_server.host,
        port=password_sftp_server.port,
        username=password_sftp_server.username,
        password=password_sftp_server.password,
        private_key=key.private,
    )
    authz.full_clean()
    authz.save()
    message = press(staff_client, authz)[0]
    assert "password" in message.lower()
    authz.refresh_from_db()
    assert authz.last_test_ok is True


@pytest.mark.django_db
def test_connection_refused_and_dns_failure_in_plain_words(staff_client, partner):
    from tests.support.sshd import free_port

    authz = Authorization.objects.create(
        partner=partner,
        label="Down",
        method=Method.SFTP_CLIENT,
        host="127.0.0.1",
        port=free_port(),
        username="u",
        password="pw",
    )
    assert "refused" in press(staff_client, authz)[0]
    authz.host = "no-such-host.invalid"
    authz.save()
    assert "DNS" in press(staff_client, authz)[0]


@pytest.mark.django_db
def test_test_connection_needs_post(staff_client, partner):
    authz = Authorization.objects.create(
        partner=partner, label="x", method=Method.SFTP_CLIENT, host="h", username="u", password="p"
    )
    url = reverse("admin:authorizations_authorization_test_connection", args=[authz.pk])
    assert staff_client.get(url).status_code == 403


@pytest.mark.django_db
def test_losing_a_pin_race_to_another_key_is_refused(partner):
    from authorizations import services
    from transfers.sftp import SftpError

    authz = Authorization.objects.create(
        partner=partner,
        label="race",
        method=Method.SFTP_CLIENT,
        host="h",
        username="u",
        password="p",
    )
    stale = Authorization.objects.get(pk=authz.pk)  # loaded before the other worker pinned
    assert services.pin_host_key(authz, "SHA256:first", "ssh-ed25519")
    assert services.pin_host_key(stale, "SHA256:first", "ssh-ed25519") is False
    with pytest.raises(SftpError) as exc:
        services.pin_host_key(stale, "SHA256:other", "ssh-ed25519")
    assert exc.value.kind == "host_key_mismatch"
    assert "SHA256:first" in str(exc.value) and "SHA256:other" in str(exc.value)
