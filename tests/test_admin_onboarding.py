"""Generate SSH key pair (admin): public half installed, private half PGP-encrypted, once."""

import subprocess
from pathlib import Path

import pytest
from django.urls import reverse

from authorizations.models import Authorization, Method, Partner
from tests.support.sftpd import KeyPair

pytestmark = pytest.mark.django_db(transaction=True)


def gpg_decrypt(armored: bytes, secret_key: str, home: Path) -> str:
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        ["gpg", "--batch", "--import"],
        input=secret_key.encode(),
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        ["gpg", "--batch", "--decrypt"], input=armored, env=env, check=True, capture_output=True
    )
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], env=env)
    return out.stdout.decode()


@pytest.mark.parametrize("kind,header", [("ed25519", "ssh-ed25519"), ("rsa4096", "ssh-rsa")])
def test_generated_key_logs_in_with_openssh_sftp(
    staff_client, sftpd, gpg_keys, tmp_path, kind, header
):
    partner = Partner.objects.create(name="Acme", slug="acme", pgp_public_key=gpg_keys.plain.public)
    account = Authorization.objects.create(
        partner=partner, label="drop", method=Method.MANAGED_SFTP, username="acme_drop"
    )
    url = reverse("admin:authorizations_authorization_generate_ssh_key", args=[account.pk])
    response = staff_client.post(url, {"kind": kind})
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    assert "no-store" in response["Cache-Control"]
    armored = response.content
    assert armored.startswith(b"-----BEGIN PGP MESSAGE-----")

    private = gpg_decrypt(armored, gpg_keys.plain.secret, tmp_path / "gnupg")
    assert "BEGIN OPENSSH PRIVATE KEY" in private
    account.refresh_from_db()
    assert account.public_keys.startswith(header)
    dump = repr(list(Authorization.objects.values_list()))
    assert private.split("\n")[1] not in dump  # the private key is nowhere in the table

    key_path = tmp_path / "id_generated"
    key_path.write_text(private)
    key_path.chmod(0o600)
    key = KeyPair(key_path, account.public_keys, None)
    result = sftpd.run_sftp("acme_drop", key, "ls\n")
    assert result.returncode == 0, result.stderr
    assert "inbound" in result.stdout


def test_partner_without_pgp_key_gets_a_clear_message(staff_client):
    partner = Partner.objects.create(name="NoKey", slug="nokey")
    account = Authorization.objects.create(
        partner=partner, label="drop", method=Method.MANAGED_SFTP, username="nokey_drop"
    )
    url = reverse("admin:authorizations_authorization_generate_ssh_key", args=[account.pk])
    response = staff_client.post(url, {"kind": "ed25519"}, follow=True)
    assert "has no PGP public key" in str(next(iter(response.context["messages"])))
    account.refresh_from_db()
    assert account.public_keys == ""
