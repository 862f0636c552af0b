"""Key validation on authorizations: what people paste by mistake, and the message they get.

SSH keys come from the real ssh-keygen/puttygen, PGP keys from the real gpg, at test time.
"""

import subprocess
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from authorizations.models import Authorization, Method

PASS = "correct horse"


def keygen(tmp_path: Path, name: str, *args: str, passphrase: str = "") -> tuple[str, str]:
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-N", passphrase, "-C", name, "-f", str(path), *args],
        check=True,
    )
    return path.read_text(), (tmp_path / f"{name}.pub").read_text().strip()


def client_authz(partner, **fields) -> Authorization:
    base = dict(
        partner=partner, label="t", method=Method.SFTP_CLIENT, host="h.example.com", username="u"
    )
    base.update(fields)
    return Authorization(**base)


def errors_of(authz: Authorization) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as exc:
        authz.full_clean()
    return exc.value.message_dict


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [
        ("-t", "ed25519"),
        ("-t", "rsa", "-b", "2048"),
        ("-t", "ecdsa", "-b", "256"),
        ("-t", "rsa", "-b", "2048", "-m", "PEM"),
        ("-t", "ecdsa", "-m", "PEM"),
        ("-t", "ed25519", "-m", "PKCS8"),
        ("-t", "rsa", "-b", "2048", "-m", "PKCS8"),
    ],
    ids=lambda a: "-".join(a),
)
def test_private_keys_as_ssh_keygen_writes_them_are_accepted(partner, tmp_path, args):
    private, _ = keygen(tmp_path, "k", *args)
    authz = client_authz(partner, private_key=private)
    authz.full_clean()
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert authz.private_key_fingerprint == fingerprint


@pytest.mark.django_db
def test_encrypted_key_with_its_passphrase(partner, tmp_path):
    private, _ = keygen(tmp_path, "k", "-t", "ed25519", passphrase=PASS)
    client_authz(partner, private_key=private, passphrase=PASS).full_clean()


@pytest.mark.django_db
def test_encrypted_key_without_passphrase(partner, tmp_path):
    private, _ = keygen(tmp_path, "k", "-t", "ed25519", passphrase=PASS)
    message = errors_of(client_authz(partner, private_key=private))["private_key"][0]
    assert "passphrase" in message.lower()


@pytest.mark.django_db
def test_encrypted_key_with_wrong_passphrase(partner, tmp_path):
    private, _ = keygen(tmp_path, "k", "-t", "rsa", "-b", "2048", passphrase=PASS)
    authz = client_authz(partner, private_key=private, passphrase="wrong")
    assert "passphrase" in errors_of(authz)["private_key"][0].lower()


@pytest.mark.django_db
def test_passphrase_for_unencrypted_key_warns_but_saves(partner, tmp_path):
    private, _ = keygen(tmp_path, "k", "-t", "ed25519")
    authz = client_authz(partner, private_key=private, passphrase="not needed")
    authz.full_clean()
    assert any("not encrypted" in w for w in authz.validation_warnings)


@pytest.mark.django_db
def test_public_key_pasted_as_private_key(partner, tmp_path):
    _, public = keygen(tmp_path, "k", "-t", "ed25519")
    message = errors_of(client_authz(partner, private_key=public))["private_key"][0]
    assert "public key" in message.lower()


@pytest.mark.django_db
def test_garbage_private_key(partner):
    message = errors_of(client_authz(partner, private_key="hello world"))["private_key"][0]
    assert "private key" in message.lower()


@pytest.mark.django_db
def test_putty_key_explains_how_to_export_openssh(partner, tmp_path):
    ppk = tmp_path / "k.ppk"
    subprocess.run(
        ["puttygen", "-t", "ed25519", "-o", str(ppk), "--new-passphrase", "/dev/null"],
        check=True,
        capture_output=True,
    )
    message = errors_of(client_authz(partner, private_key=ppk.read_text()))["private_key"][0]
    assert "PuTTY" in message and "OpenSSH" in message


# --- PGP private key (decrypts what we import) ---------------------------------------


def pgp_private_authz(partner, key: str, passphrase: str | None = None) -> Authorization:
    return client_authz(
        partner,
        method=Method.SFTP_CLIENT_PGP_PRIVATE,
        password="pw",
        pgp_private_key=key,
        pgp_passphrase=passphrase or "",
    )


@pytest.mark.django_db
def test_pgp_private_key_accepted_and_described(partner, gpg_keys):
    key = gpg_keys.protected
    authz = pgp_private_authz(partner, key.secret, key.passphrase)
    authz.full_clean()
    assert authz.pgp_fingerprint == key.fingerprint
    assert key.uid in authz.pgp_user_id
    assert authz.pgp_algorithm


@pytest.mark.django_db
def test_pgp_private_key_wrong_passphrase_is_proved(partner, gpg_keys):
    authz = pgp_private_authz(partner, gpg_keys.protected.secret, "not the passphrase")
    assert "passphrase" in errors_of(authz)["pgp_private_key"][0].lower()


@pytest.mark.django_db
def test_pgp_public_key_pasted_as_private(partner, gpg_keys):
    message = errors_of(pgp_private_authz(partner, gpg_keys.plain.public))["pgp_private_key"][0]
    assert "public" in message.lower()


@pytest.mark.django_db
@pytest.mark.parametrize("which,word", [("expired", "expired"), ("revoked", "revoked")])
def test_pgp_private_key_expired_or_revoked(partner, gpg_keys, which, word):
    key = getattr(gpg_keys, which)
    message = errors_of(pgp_private_authz(partner, key.secret, key.passphrase))["pgp_private_key"]
    assert word in message[0].lower()


@pytest.mark.django_db
def test_pgp_private_key_garbage(partner):
    assert errors_of(pgp_private_authz(partner, "-----BEGIN nonsense"))["pgp_private_key"]


# --- PGP public key (encrypts what we export) ----------------------------------------


def pgp_public_authz(partner, key: str) -> Authorization:
    return client_authz(
        partner, method=Method.SFTP_CLIENT_PGP_PUBLIC, password="pw", pgp_public_key=key
    )


@pytest.mark.django_db
def test_pgp_public_key_accepted_and_described(partner, gpg_keys):
    authz = pgp_public_authz(partner, gpg_keys.expiring.public)
    authz.full_clean()
    assert authz.pgp_fingerprint == gpg_keys.expiring.fingerprint
    assert authz.pgp_expires_at is not None


@pytest.mark.django_db
def test_private_key_pasted_as_public_is_refused_and_never_kept(partner, gpg_keys):
    authz = pgp_public_authz(partner, gpg_keys.plain.secret)
    message = errors_of(authz)["pgp_public_key"][0]
    assert "private" in message.lower()
    assert authz.pgp_public_key == ""


@pytest.mark.django_db
@pytest.mark.parametrize(
    "which,word",
    [("sign_only", "encrypt"), ("expired", "expired"), ("revoked", "revoked")],
)
def test_pgp_public_key_unusable(partner, gpg_keys, which, word):
    message = errors_of(pgp_public_authz(partner, getattr(gpg_keys, which).public))
    assert word in message["pgp_public_key"][0].lower()


@pytest.mark.django_db
def test_pgp_public_key_garbage(partner):
    assert errors_of(pgp_public_authz(partner, "not a key"))["pgp_public_key"]


# --- managed accounts: public keys, and using them ------------------------------------


def managed(partner, **fields) -> Authorization:
    base = dict(partner=partner, label="m", method=Method.MANAGED_SFTP, username="drop_box")
    base.update(fields)
    return Authorization(**base)


@pytest.mark.django_db
def test_managed_public_keys_accepted_and_weak_rsa_refused(partner, tmp_path):
    _, good = keygen(tmp_path, "good", "-t", "ed25519")
    _, weak = keygen(tmp_path, "weak", "-t", "rsa", "-b", "1024")
    managed(partner, public_keys=good).full_clean()
    message = errors_of(managed(partner, public_keys=f"{good}\n{weak}"))["public_keys"][0]
    assert "2048" in message and "line 2" in message


@pytest.mark.django_db
def test_managed_public_key_field_refuses_a_private_key(partner, tmp_path):
    private, _ = keygen(tmp_path, "k", "-t", "ed25519")
    assert errors_of(managed(partner, public_keys=private))["public_keys"]


@pytest.fixture
def account(partner, tmp_path):
    _, public = keygen(tmp_path, "acct", "-t", "ed25519")
    authz = managed(partner, public_keys=public)
    authz.set_account_password("Str0ng!Pass")
    authz.full_clean()
    authz.save()
    return authz


@pytest.mark.django_db
def test_using_a_managed_account_checks_the_credentials(partner, account, tmp_path, gpg_keys):
    use = Authorization(
        partner=partner,
        label="use",
        method=Method.MANAGED_SFTP_PGP_PUBLIC,
        managed_account=account,
        password="Wrong!Pass1",
        pgp_public_key=gpg_keys.plain.public,
    )
    assert "not the managed account's password" in errors_of(use)["password"][0]
    other_private, _ = keygen(tmp_path, "other", "-t", "ed25519")
    use.password, use.private_key = "", other_private
    assert "not installed" in errors_of(use)["private_key"][0]
    use.private_key, use.password = "", "Str0ng!Pass"
    use.full_clean()
    assert use.username == "drop_box"


@pytest.mark.django_db
def test_a_managed_account_of_another_partner_cannot_be_used(
    partner, other_partner, account, gpg_keys
):
    use = Authorization(
        partner=other_partner,
        label="use",
        method=Method.MANAGED_SFTP_PGP_PUBLIC,
        managed_account=account,
        password="Str0ng!Pass",
        pgp_public_key=gpg_keys.plain.public,
    )
    assert "another partner" in errors_of(use)["managed_account"][0]
