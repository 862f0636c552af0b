"""Field rules of authorizations that need neither gpg nor an SSH key."""

import pytest
from django.core.exceptions import ValidationError

from authorizations import validation
from authorizations.models import Authorization, Method


@pytest.mark.parametrize(
    "host,expected",
    [
        ("sftp.example.com", "sftp.example.com"),
        ("SFTP.Example.COM.", "sftp.example.com"),
        ("192.0.2.10", "192.0.2.10"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("localhost", "localhost"),
    ],
)
def test_host_accepts_names_and_addresses(host, expected):
    assert validation.validate_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "sftp://example.com",
        "example.com:22",
        "example.com/path",
        "exa mple.com",
        "-bad.example.com",
        "999.1.1.1",
        "a" * 64 + ".com",
        "under_score.example.com",
        "",
    ],
)
def test_host_refuses_what_is_not_a_host(host):
    with pytest.raises(ValidationError) as exc:
        validation.validate_host(host)
    assert "host name" in exc.value.messages[0]


@pytest.mark.parametrize("port", [0, -1, 65536, None])
def test_port_out_of_range(port):
    with pytest.raises(ValidationError, match="between 1 and 65535"):
        validation.validate_port(port)


@pytest.mark.parametrize(
    "folder,expected",
    [("", ""), ("uploads", "uploads"), ("uploads/in/", "uploads/in"), ("./a//b", "a/b")],
)
def test_folder_normalised(folder, expected):
    assert validation.validate_folder(folder) == expected


@pytest.mark.parametrize(
    "folder,code",
    [
        ("/etc", "folder_absolute"),
        ("~/in", "folder_absolute"),
        ("../other", "folder_parent"),
        ("in/../../x", "folder_parent"),
        ("in\\..\\x", "folder_parent"),
        ("in\x00x", "folder_control"),
        ("in\nx", "folder_control"),
    ],
)
def test_folder_refusals(folder, code):
    with pytest.raises(ValidationError) as exc:
        validation.validate_folder(folder)
    assert exc.value.code == code


@pytest.mark.parametrize("name", ["abc", "a" * 32, "Acme_Drop-1", "_under", "9lives"])
def test_managed_username_accepts(name):
    assert validation.validate_managed_username(name)


@pytest.mark.parametrize("name", ["ab", "a" * 33, "-dash", "with space", "dot.name", "ümlaut"])
def test_managed_username_refuses(name):
    with pytest.raises(ValidationError, match="3 to 32 characters"):
        validation.validate_managed_username(name)


def test_managed_password_lists_every_missing_rule():
    with pytest.raises(ValidationError) as exc:
        validation.validate_managed_password("short")
    message = exc.value.messages[0]
    for part in ("8 to 32", "uppercase", "number", "special character"):
        assert part in message
    assert "lowercase" not in message


@pytest.mark.parametrize("password", ["Abcdef1!", "A" * 10 + "b1#" + "c" * 19])
def test_managed_password_accepts(password):
    assert validation.validate_managed_password(password)


def test_managed_password_too_long():
    with pytest.raises(ValidationError, match="8 to 32"):
        validation.validate_managed_password("Ab1!" + "x" * 29)


@pytest.mark.django_db
def test_all_problems_reported_at_once_each_on_its_field(partner):
    authz = Authorization(
        partner=partner,
        label="",
        method=Method.SFTP_CLIENT,
        host="not a host",
        port=70000,
        username="",
        folder="../up",
    )
    with pytest.raises(ValidationError) as exc:
        authz.full_clean()
    errors = exc.value.message_dict
    assert set(errors) >= {"label", "host", "port", "username", "password", "folder"}
    assert "password or a private key" in errors["password"][0]


@pytest.mark.django_db
def test_client_sftp_with_password_only_is_valid(partner):
    authz = Authorization(
        partner=partner,
        label="Acme",
        method=Method.SFTP_CLIENT,
        host="sftp.example.com",
        username="acme",
        password="secret",
        folder="in/",
    )
    authz.full_clean()
    assert authz.folder == "in"
    assert authz.port == 22


@pytest.mark.django_db
def test_managed_account_rules(partner):
    authz = Authorization(partner=partner, label="drop", method=Method.MANAGED_SFTP, username="-x")
    authz.set_account_password("weak")
    with pytest.raises(ValidationError) as exc:
        authz.full_clean()
    errors = exc.value.message_dict
    assert "cannot start with a hyphen" in errors["username"][0]
    assert "8 to 32" in errors["password"][0]


@pytest.mark.django_db
def test_managed_account_needs_password_or_key(partner):
    authz = Authorization(
        partner=partner, label="drop", method=Method.MANAGED_SFTP, username="ab_c"
    )
    with pytest.raises(ValidationError) as exc:
        authz.full_clean()
    assert "password or a public key" in exc.value.message_dict["password"][0]


@pytest.mark.django_db
def test_managed_username_unique_case_insensitive(partner):
    first = Authorization(partner=partner, label="a", method=Method.MANAGED_SFTP, username="Drop")
    first.set_account_password("Str0ng!pass")
    first.full_clean()
    first.save()
    second = Authorization(partner=partner, label="b", method=Method.MANAGED_SFTP, username="drop")
    second.set_account_password("Str0ng!pass")
    with pytest.raises(ValidationError) as exc:
        second.full_clean()
    assert "already taken" in exc.value.message_dict["username"][0]


@pytest.mark.django_db
def test_managed_password_is_stored_only_as_hash(partner):
    authz = Authorization(partner=partner, label="a", method=Method.MANAGED_SFTP, username="hashme")
    authz.set_account_password("Str0ng!pass")
    authz.full_clean()
    authz.save()
    authz.refresh_from_db()
    assert authz.password == ""
    assert authz.password_hash and "Str0ng!pass" not in authz.password_hash
    assert authz.check_account_password("Str0ng!pass")
    assert not authz.check_account_password("Str0ng!pasS")


@pytest.mark.django_db
def test_allowed_ips_validated_and_normalised(partner):
    authz = Authorization(
        partner=partner,
        label="a",
        method=Method.MANAGED_SFTP,
        username="ipuser",
        allowed_ips=["10.0.0.0/8", "192.0.2.7", "10.1.2.3/8", "nonsense"],
    )
    authz.set_account_password("Str0ng!pass")
    with pytest.raises(ValidationError) as exc:
        authz.full_clean()
    message = exc.value.message_dict["allowed_ips"][0]
    assert "10.1.2.3/8" in message and "nonsense" in message
    authz.allowed_ips = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
    authz.full_clean()
    assert authz.allowed_ips == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]


@pytest.mark.django_db
def test_switching_method_drops_other_methods_secrets(partner):
    authz = Authorization(
        partner=partner,
        label="a",
        method=Method.SFTP_CLIENT,
        host="h.example.com",
        username="u",
        password="pw",
        pgp_passphrase="left over",
    )
    authz.full_clean()
    assert authz.pgp_passphrase == ""


@pytest.mark.django_db
def test_managed_account_cannot_be_renamed(partner):
    account = Authorization(partner=partner, label="a", method=Method.MANAGED_SFTP, username="keep")
    account.set_account_password("Str0ng!pass")
    account.full_clean()
    account.save()
    account.username = "renamed"
    with pytest.raises(ValidationError) as exc:
        account.full_clean()
    assert "cannot be renamed" in exc.value.message_dict["username"][0]


@pytest.mark.django_db(transaction=True)
def test_deleted_account_home_is_moved_aside_before_the_name_is_reused(partner, settings, tmp_path):
    settings.MANAGED_SFTP_ROOT = tmp_path
    account = Authorization.objects.create(
        partner=partner, label="a", method=Method.MANAGED_SFTP, username="reused"
    )
    (tmp_path / "reused" / "inbound").mkdir(parents=True)
    (tmp_path / "reused" / "inbound" / "private.csv").write_text("old owner's data")
    pk = account.pk
    account.delete()
    assert not (tmp_path / "reused").exists()
    (moved,) = (tmp_path / ".deleted").iterdir()
    assert moved.name.startswith(f"reused-{pk}-")
    assert (moved / "inbound" / "private.csv").read_text() == "old owner's data"
