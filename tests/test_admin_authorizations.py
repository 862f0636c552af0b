"""The authorization admin: method first, only that method's fields, secrets write-only."""

import re

import pytest
from django.urls import reverse

from authorizations.models import Authorization, Method

ADD_URL = reverse("admin:authorizations_authorization_add")
PASSWORD = "Sup3r-secret-pw"


def field_names(html: str) -> set[str]:
    return set(re.findall(r'name="([a-z_]+)"', html))


def test_add_starts_with_method_choice(staff_client):
    response = staff_client.get(ADD_URL)
    assert response.status_code == 200
    html = response.content.decode()
    for method in Method:
        assert method.label in html
        assert f"method={method.value}" in html


@pytest.mark.parametrize(
    "method,present,absent",
    [
        (
            Method.SFTP_CLIENT,
            {"host", "port", "password", "private_key", "folder"},
            {"pgp_private_key", "pgp_public_key", "public_keys", "allowed_ips"},
        ),
        (
            Method.SFTP_CLIENT_PGP_PRIVATE,
            {"host", "pgp_private_key", "pgp_passphrase"},
            {"pgp_public_key", "public_keys"},
        ),
        (
            Method.SFTP_CLIENT_PGP_PUBLIC,
            {"host", "pgp_public_key"},
            {"pgp_private_key", "pgp_passphrase"},
        ),
        (
            Method.MANAGED_SFTP,
            {"username", "password", "public_keys", "allowed_ips"},
            {"host", "port", "private_key", "folder"},
        ),
        (
            Method.MANAGED_SFTP_PGP_PRIVATE,
            {"managed_account", "password", "pgp_private_key"},
            {"host", "port", "pgp_public_key"},
        ),
        (
            Method.MANAGED_SFTP_PGP_PUBLIC,
            {"managed_account", "pgp_public_key"},
            {"host", "pgp_private_key"},
        ),
    ],
)
def test_each_method_shows_only_its_fields(staff_client, method, present, absent):
    html = staff_client.get(ADD_URL, {"method": method.value}).content.decode()
    names = field_names(html)
    assert present <= names
    assert not absent & names


def test_fields_follow_the_seed_order(staff_client):
    html = staff_client.get(ADD_URL, {"method": "sftp_client"}).content.decode()
    order = [
        html.index(f'name="{n}"')
        for n in ("host", "port", "username", "password", "private_key", "passphrase", "folder")
    ]
    assert order == sorted(order)


def test_create_then_change_never_renders_the_secret(staff_client, partner):
    response = staff_client.post(
        ADD_URL + "?method=sftp_client",
        {
            "partner": partner.pk,
            "label": "Acme SFTP",
            "description": "",
            "host": "sftp.example.com",
            "port": 22,
            "username": "acme",
            "password": PASSWORD,
            "private_key": "",
            "passphrase": "",
            "folder": "in",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    authz = Authorization.objects.get(label="Acme SFTP")
    assert authz.method == Method.SFTP_CLIENT and authz.password == PASSWORD
    change = staff_client.get(reverse("admin:authorizations_authorization_change", args=[authz.pk]))
    html = change.content.decode()
    assert PASSWORD not in html
    assert "Leave blank to keep it" in html
    listing = staff_client.get(reverse("admin:authorizations_authorization_changelist"))
    assert PASSWORD not in listing.content.decode()
    assert "password ••••" in listing.content.decode()


def _change_post(authz, **overrides):
    data = {
        "partner": authz.partner_id,
        "label": authz.label,
        "description": "",
        "host": authz.host,
        "port": authz.port,
        "username": authz.username,
        "password": "",
        "private_key": "",
        "passphrase": "",
        "folder": authz.folder,
    }
    data.update(overrides)
    return data


@pytest.fixture
def stored(partner):
    return Authorization.objects.create(
        partner=partner,
        label="Stored",
        method=Method.SFTP_CLIENT,
        host="h.example.com",
        username="u",
        password=PASSWORD,
    )


def test_blank_secret_keeps_the_stored_value(staff_client, stored):
    url = reverse("admin:authorizations_authorization_change", args=[stored.pk])
    response = staff_client.post(url, _change_post(stored, label="Renamed"))
    assert response.status_code == 302
    stored.refresh_from_db()
    assert stored.label == "Renamed" and stored.password == PASSWORD


def test_clearing_the_only_credential_is_refused_on_its_field(staff_client, stored):
    url = reverse("admin:authorizations_authorization_change", args=[stored.pk])
    response = staff_client.post(url, _change_post(stored, clear_password="on"))
    assert response.status_code == 200
    assert "Give a password or a private key" in response.content.decode()
    stored.refresh_from_db()
    assert stored.password == PASSWORD


def test_errors_are_shown_beside_each_field(staff_client, partner):
    response = staff_client.post(
        ADD_URL + "?method=sftp_client",
        {
            "partner": partner.pk,
            "label": "",
            "host": "bad host",
            "port": 0,
            "username": "",
            "password": "",
            "folder": "../x",
        },
    )
    html = response.content.decode()
    assert response.status_code == 200
    for text in (
        "This field is required",
        "Enter a host name",
        "between 1 and 65535",
        "Give a password or a private key",
        "may not contain &#x27;..&#x27;",
    ):
        assert text in html, text


def test_managed_account_weak_password_shows_the_rule(staff_client, partner):
    url = ADD_URL + "?method=managed_sftp"
    data = {
        "partner": partner.pk,
        "label": "Drop",
        "username": "acme_drop",
        "password": "weakpass",
        "public_keys": "",
        "allowed_ips": "10.0.0.0/8",
        "active": "on",
        "max_sessions": 5,
    }
    response = staff_client.post(url, data)
    assert response.status_code == 200
    assert "include an uppercase letter" in response.content.decode()
    data["password"] = "Str0ng!Pass"
    response = staff_client.post(url, data)
    assert response.status_code == 302
    account = Authorization.objects.get(username="acme_drop")
    assert account.check_account_password("Str0ng!Pass")
    html = staff_client.get(
        reverse("admin:authorizations_authorization_change", args=[account.pk])
    ).content.decode()
    assert "Str0ng!Pass" not in html and account.password_hash not in html


def test_search_does_not_cover_secrets(staff_client, stored):
    url = reverse("admin:authorizations_authorization_changelist")
    assert (
        "Stored"
        not in staff_client.get(url, {"q": PASSWORD}).content.decode().split('id="result_list"')[-1]
    )


@pytest.fixture
def viewer_client(client, django_user_model):
    """Staff who may only view authorizations and API clients."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_authorization", "view_apiclient"])
    )
    client.force_login(user)
    return client


def test_view_only_staff_can_read_but_not_act(viewer_client, stored):
    change_url = reverse("admin:authorizations_authorization_change", args=[stored.pk])
    page = viewer_client.get(change_url)
    assert page.status_code == 200
    assert PASSWORD not in page.content.decode()
    listing = viewer_client.get(reverse("admin:authorizations_authorization_changelist"))
    assert "test_connection_action" not in listing.content.decode()
    test_url = reverse("admin:authorizations_authorization_test_connection", args=[stored.pk])
    assert viewer_client.post(test_url).status_code == 403
    clients = viewer_client.get(reverse("admin:authorizations_apiclient_changelist"))
    assert clients.status_code == 200
    assert "revoke_clients" not in clients.content.decode()


def test_pasted_pgp_private_key_is_not_echoed_back(staff_client, partner, gpg_keys):
    secret_line = gpg_keys.plain.secret.strip().splitlines()[3]
    response = staff_client.post(
        ADD_URL + "?method=sftp_client_pgp_public",
        {
            "partner": partner.pk,
            "label": "Enc",
            "host": "h.example.com",
            "port": 22,
            "username": "u",
            "password": "pw",
            "pgp_public_key": gpg_keys.plain.secret,
        },
    )
    html = response.content.decode()
    assert response.status_code == 200 and "private" in html.lower()
    assert secret_line not in html
    response = staff_client.post(
        reverse("admin:authorizations_partner_change", args=[partner.pk]),
        {
            "name": partner.name,
            "slug": partner.slug,
            "active": "on",
            "pgp_public_key": gpg_keys.plain.secret,
        },
    )
    assert response.status_code == 200
    assert secret_line not in response.content.decode()
