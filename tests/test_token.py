"""POST /api/v1/idp/oauth2/token: RFC 6749 §4.4 / §5 over HTTP, plus onboarding and upkeep."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.utils import timezone

TOKEN_URL = "/api/v1/idp/oauth2/token"
ALL_SCOPES = "authorizations:read authorizations:write jobs:read jobs:write jobs:run sftp:read"

GOOD = {"grant_type": "client_credentials"}


def body_creds(c, **extra) -> dict:
    return {**GOOD, "client_id": c.client_id, "client_secret": c.secret, **extra}


def assert_no_store(response) -> None:
    assert response["Cache-Control"] == "no-store"
    assert response["Pragma"] == "no-cache"
    assert response["Content-Type"] == "application/json"


def assert_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.content
    assert_no_store(response)
    payload = response.json()
    assert payload["error"] == error
    assert payload.get("error_description")
    return payload


# -- success --------------------------------------------------------------------------------
def test_token_with_body_credentials(oauth, client, acme_client):
    from oauth2_provider.models import AccessToken

    response = oauth.token_request(client, body_creds(acme_client))
    assert response.status_code == 200
    assert_no_store(response)
    payload = response.json()
    assert set(payload) == {"access_token", "expires_in", "token_type", "scope"}
    assert payload["token_type"] == "Bearer"
    assert payload["expires_in"] == 3600
    assert payload["scope"].split() == ALL_SCOPES.split()
    stored = AccessToken.objects.get()
    assert stored.application_id == acme_client.model.pk
    assert stored.token == ""  # RFC 9700 storage: only a checksum is kept
    assert stored.expires - timezone.now() > timedelta(seconds=3590)


def test_token_with_http_basic(oauth, client, acme_client):
    response = oauth.token_request(
        client, GOOD, HTTP_AUTHORIZATION=oauth.basic(acme_client.client_id, acme_client.secret)
    )
    assert response.status_code == 200
    assert "refresh_token" not in response.json()


def test_basic_with_matching_client_id_in_body_is_fine(oauth, client, acme_client):
    response = oauth.token_request(
        client,
        {**GOOD, "client_id": acme_client.client_id},
        HTTP_AUTHORIZATION=oauth.basic(acme_client.client_id, acme_client.secret),
    )
    assert response.status_code == 200


def test_basic_scheme_is_case_insensitive(oauth, client, acme_client):
    header = oauth.basic(acme_client.client_id, acme_client.secret).replace("Basic", "basic")
    assert oauth.token_request(client, GOOD, HTTP_AUTHORIZATION=header).status_code == 200


def test_scope_narrows_the_token(oauth, client, acme_client):
    response = oauth.token_request(client, body_creds(acme_client, scope="authorizations:read"))
    assert response.json()["scope"] == "authorizations:read"
    token = response.json()["access_token"]
    me = client.get("/api/v1/me", **oauth.bearer(token))
    assert me.json()["scopes"] == ["authorizations:read"]
    write = client.post(
        "/api/v1/authorizations", {}, content_type="application/json", **oauth.bearer(token)
    )
    assert write.status_code == 403
    assert write.json()["error"] == "insufficient_scope"


def test_repeated_scope_is_granted_once(oauth, client, acme_client):
    response = oauth.token_request(
        client, body_creds(acme_client, scope="jobs:read authorizations:read jobs:read")
    )
    assert response.json()["scope"] == "jobs:read authorizations:read"


def test_no_scope_gets_the_clients_scopes_not_all(oauth, client, acme, make_client):
    narrow = make_client(acme, scopes="jobs:read")
    assert oauth.token_request(client, body_creds(narrow)).json()["scope"] == "jobs:read"
    # An empty scope parameter counts as omitted (RFC 6749 §3.1).
    assert oauth.token_request(client, body_creds(narrow, scope="")).json()["scope"] == "jobs:read"


# -- errors (RFC 6749 §5.2) ----------------------------------------------------------------
@pytest.mark.parametrize(
    "scope", ["authorizations:write", "jobs:read admin", "no-such-scope", "jobs:read jobs:run"]
)
def test_invalid_scope(oauth, client, acme, make_client, scope):
    narrow = make_client(acme, scopes="jobs:read")
    payload = assert_error(
        oauth.token_request(client, body_creds(narrow, scope=scope)), 400, "invalid_scope"
    )
    assert "jobs:read" not in payload["error_description"].split(": ")[-1].split()


def test_client_without_scopes_gets_invalid_scope(oauth, client, acme, make_client):
    bare = make_client(acme, scopes="")
    assert_error(oauth.token_request(client, body_creds(bare)), 400, "invalid_scope")


def test_missing_grant_type(oauth, client, acme_client):
    creds = {"client_id": acme_client.client_id, "client_secret": acme_client.secret}
    assert_error(oauth.token_request(client, creds), 400, "invalid_request")


@pytest.mark.parametrize("grant_type", ["password", "authorization_code", "refresh_token", "x"])
def test_unsupported_grant_type(oauth, client, acme_client, grant_type):
    data = body_creds(acme_client, grant_type=grant_type)
    assert_error(oauth.token_request(client, data), 400, "unsupported_grant_type")


@pytest.mark.parametrize("param", ["grant_type", "client_id", "client_secret", "scope"])
def test_duplicated_parameter(oauth, client, acme_client, param):
    data = body_creds(acme_client, scope="jobs:read")
    body = "&".join(f"{k}={v}" for k, v in data.items()) + f"&{param}={data[param]}"
    payload = assert_error(oauth.token_request(client, body), 400, "invalid_request")
    assert param in payload["error_description"]


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_other_methods_are_invalid_request(client, acme_client, method):
    response = getattr(client, method)(TOKEN_URL)
    assert_error(response, 400, "invalid_request")
    assert "POST" in response["Allow"]


def test_get_with_credentials_in_query_is_refused(client, acme_client):
    query = f"?grant_type=client_credentials&client_id={acme_client.client_id}"
    assert_error(client.get(TOKEN_URL + query), 400, "invalid_request")


def test_query_parameters_on_post_are_refused(client, acme_client):
    response = client.post(
        f"{TOKEN_URL}?client_secret={acme_client.secret}",
        "grant_type=client_credentials&client_id=" + acme_client.client_id,
        content_type="application/x-www-form-urlencoded",
    )
    assert_error(response, 400, "invalid_request")


def test_json_body_is_refused(client, acme_client):
    response = client.post(TOKEN_URL, body_creds(acme_client), content_type="application/json")
    assert_error(response, 400, "invalid_request")


def test_two_authentication_methods_are_refused(oauth, client, acme_client):
    response = oauth.token_request(
        client,
        body_creds(acme_client),
        HTTP_AUTHORIZATION=oauth.basic(acme_client.client_id, acme_client.secret),
    )
    assert_error(response, 400, "invalid_request")


def test_basic_and_other_client_id_in_body(oauth, client, acme_client, globex_client):
    response = oauth.token_request(
        client,
        {**GOOD, "client_id": globex_client.client_id},
        HTTP_AUTHORIZATION=oauth.basic(acme_client.client_id, acme_client.secret),
    )
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "data",
    [
        {"client_id": "no-such-client", "client_secret": "x"},
        {"client_id": "CLIENT", "client_secret": "wrong"},
        {"client_id": "CLIENT"},
        {},
    ],
    ids=["unknown-client", "wrong-secret", "no-secret", "no-credentials"],
)
def test_invalid_client_with_body_credentials(oauth, client, acme_client, data):
    data = {k: acme_client.client_id if v == "CLIENT" else v for k, v in data.items()}
    response = oauth.token_request(client, {**GOOD, **data})
    assert_error(response, 401, "invalid_client")
    assert response["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.parametrize(
    "header",
    ["Basic !!!notbase64", "Basic " + "bm9jb2xvbg==", "WRONG-SECRET"],
    ids=["not-base64", "no-colon", "wrong-secret"],
)
def test_invalid_client_with_basic(oauth, client, acme_client, header):
    if header == "WRONG-SECRET":
        header = oauth.basic(acme_client.client_id, "wrong")
    response = oauth.token_request(client, GOOD, HTTP_AUTHORIZATION=header)
    assert_error(response, 401, "invalid_client")
    assert response["WWW-Authenticate"] == 'Basic realm="lyticsops", charset="UTF-8"'


def test_inactive_client_is_unauthorized_client(oauth, client, acme_client):
    acme_client.model.active = False
    acme_client.model.save()
    assert_error(oauth.token_request(client, body_creds(acme_client)), 400, "unauthorized_client")


def test_inactive_partner_is_unauthorized_client(oauth, client, acme, acme_client):
    acme.active = False
    acme.save()
    assert_error(oauth.token_request(client, body_creds(acme_client)), 400, "unauthorized_client")


def test_client_of_another_grant_is_unauthorized_client(oauth, client, acme, make_client):
    from authorizations.models import ApiClient

    other = make_client(
        acme,
        authorization_grant_type=ApiClient.GRANT_AUTHORIZATION_CODE,
        redirect_uris="https://acme.example/cb",
    )
    assert_error(oauth.token_request(client, body_creds(other)), 400, "unauthorized_client")


# -- IP allowlist and proxies --------------------------------------------------------------
def test_ip_allowlist_on_token(oauth, client, acme, make_client):
    fenced = make_client(acme, allowed_ips=["203.0.113.0/24", "2001:db8::/32"])
    assert oauth.token_request(client, body_creds(fenced), ip="203.0.113.9").status_code == 200
    assert oauth.token_request(client, body_creds(fenced), ip="2001:db8::5").status_code == 200
    refused = oauth.token_request(client, body_creds(fenced), ip="198.51.100.1")
    assert_error(refused, 401, "invalid_client")


def test_forwarded_for_is_ignored_from_untrusted_peers(oauth, client, acme, make_client, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    fenced = make_client(acme, allowed_ips=["203.0.113.0/24"])
    spoofed = oauth.token_request(
        client, body_creds(fenced), ip="198.51.100.1", HTTP_X_FORWARDED_FOR="203.0.113.9"
    )
    assert spoofed.status_code == 401


def test_forwarded_for_from_trusted_proxy(oauth, client, acme, make_client, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    fenced = make_client(acme, allowed_ips=["203.0.113.0/24"])
    via_proxy = oauth.token_request(
        client, body_creds(fenced), ip="10.1.2.3", HTTP_X_FORWARDED_FOR="203.0.113.9, 10.0.0.7"
    )
    assert via_proxy.status_code == 200
    # The client may prepend anything; only the hop our proxy appended counts.
    prepended = oauth.token_request(
        client, body_creds(fenced), ip="10.1.2.3", HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.1"
    )
    assert prepended.status_code == 401


# -- throttling ----------------------------------------------------------------------------
@pytest.fixture
def tight_throttle(settings):
    settings.API_TOKEN_THROTTLE = {"window_seconds": 300, "per_ip": 5, "per_client": 3}


def test_wrong_secrets_throttle_the_client_id(
    oauth, client, acme_client, globex_client, tight_throttle
):
    wrong = body_creds(acme_client, client_secret="guess")
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            assert oauth.token_request(client, wrong, ip=ip).status_code == 401
        blocked = oauth.token_request(client, body_creds(acme_client), ip="192.0.2.4")
        payload = assert_error(blocked, 429, "too_many_requests")
        assert 1 <= int(blocked["Retry-After"]) <= 300
        assert "secret" not in json.dumps(payload).lower().replace("client_secret", "")
        # Another client from the same address is not affected.
        assert (
            oauth.token_request(client, body_creds(globex_client), ip="192.0.2.1").status_code
            == 200
        )
        traveller.shift(int(blocked["Retry-After"]) + 1)
        assert (
            oauth.token_request(client, body_creds(acme_client), ip="192.0.2.4").status_code == 200
        )


def test_failures_throttle_the_address(oauth, client, acme_client, tight_throttle):
    for n in range(5):
        response = oauth.token_request(
            client, {**GOOD, "client_id": f"nobody-{n}"}, ip="192.0.2.50"
        )
        assert response.status_code == 401
    blocked = oauth.token_request(client, body_creds(acme_client), ip="192.0.2.50")
    assert_error(blocked, 429, "too_many_requests")
    assert blocked["Retry-After"].isdigit()
    assert oauth.token_request(client, body_creds(acme_client), ip="192.0.2.51").status_code == 200


def test_refusals_outside_the_allowlist_do_not_lock_the_client(
    oauth, client, acme, make_client, tight_throttle
):
    fenced = make_client(acme, allowed_ips=["203.0.113.0/24"])
    for n in range(4):
        wrong = body_creds(fenced, client_secret="guess")
        assert oauth.token_request(client, wrong, ip=f"198.51.100.{n + 1}").status_code == 401
    assert oauth.token_request(client, body_creds(fenced), ip="203.0.113.9").status_code == 200


# -- expiry, revocation, rotation ----------------------------------------------------------
def test_token_expires_after_an_hour(oauth, client, acme_client):
    start = timezone.now()
    with time_machine.travel(start, tick=False) as traveller:
        token = oauth.get_token(client, acme_client)
        traveller.shift(3599)
        assert client.get("/api/v1/me", **oauth.bearer(token)).status_code == 200
        traveller.shift(1)
        expired = client.get("/api/v1/me", **oauth.bearer(token))
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired["WWW-Authenticate"]
    assert expired.json()["error"] == "invalid_token"


def test_deactivating_a_client_stops_its_tokens_at_once(oauth, client, acme_client):
    from oauth2_provider.models import AccessToken

    token = oauth.get_token(client, acme_client)
    acme_client.model.active = False
    acme_client.model.save()
    assert not AccessToken.objects.exists()
    response = client.get("/api/v1/me", **oauth.bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response["WWW-Authenticate"]


def test_inactive_client_tokens_refused_even_if_rows_remain(oauth, client, acme_client):
    from authorizations.models import ApiClient

    token = oauth.get_token(client, acme_client)
    ApiClient.objects.filter(pk=acme_client.model.pk).update(active=False)  # bypasses save()
    assert client.get("/api/v1/me", **oauth.bearer(token)).status_code == 401


def test_rotating_the_secret(oauth, client, acme_client):
    token = oauth.get_token(client, acme_client)
    new_secret = acme_client.model.rotate_secret()
    assert new_secret != acme_client.secret
    assert_error(oauth.token_request(client, body_creds(acme_client)), 401, "invalid_client")
    assert client.get("/api/v1/me", **oauth.bearer(token)).status_code == 401
    fresh = body_creds(acme_client, client_secret=new_secret)
    assert oauth.token_request(client, fresh).status_code == 200


# -- secrets at rest and in logs -------------------------------------------------------------
def test_secret_is_stored_with_the_keyed_hash(acme_client):
    from django.contrib.auth.hashers import check_password

    stored = acme_client.model.client_secret
    assert stored.startswith("client_secret_hmac$")
    assert acme_client.secret not in stored
    assert check_password(acme_client.secret, stored)
    assert not check_password(acme_client.secret[:-1] + "x", stored)
    assert acme_client.model.secret_hint == acme_client.secret[:4] + "…"


def test_hash_survives_a_new_pepper_through_fallbacks(acme_client, settings):
    from django.contrib.auth.hashers import check_password

    stored = acme_client.model.client_secret
    settings.CLIENT_SECRET_PEPPER = "a-new-pepper"
    assert not check_password(acme_client.secret, stored)
    settings.CLIENT_SECRET_PEPPER_FALLBACKS = [settings.SECRET_KEY]
    assert check_password(acme_client.secret, stored)


def test_no_secret_or_token_in_logs(oauth, client, acme_client, sql_logging):
    caplog = sql_logging
    response = oauth.token_request(client, body_creds(acme_client))
    token = response.json()["access_token"]
    oauth.token_request(client, body_creds(acme_client, client_secret=acme_client.secret + "x"))
    oauth.token_request(client, GOOD, HTTP_AUTHORIZATION=oauth.basic(acme_client.client_id, "nope"))
    client.get("/api/v1/me", **oauth.bearer(token))
    client.get("/api/v1/me", **oauth.bearer(token + "x"))
    assert "token issued" in caplog.text and "token refused" in caplog.text
    for secret in (acme_client.secret, token, "nope"):
        assert secret not in caplog.text


# -- onboarding commands ---------------------------------------------------------------------
def run_command(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_partner_command(db):
    from authorizations.models import Partner

    created = json.loads(run_command("create_partner", "Initech Holdings"))
    assert created["slug"] == "initech-holdings"
    assert Partner.objects.get(slug="initech-holdings").name == "Initech Holdings"
    assert json.loads(run_command("create_partner", "Umbrella", "--slug", "umb"))["slug"] == "umb"
    with pytest.raises(CommandError, match="already exists"):
        run_command("create_partner", "Initech Holdings")


def test_create_api_client_command(oauth, client, acme):
    out = run_command(
        "create_api_client",
        acme.slug,
        "--scopes",
        "authorizations:read jobs:read",
        "--allowed-ips",
        "127.0.0.1,203.0.113.0/24",
        "--name",
        "Nightly sync",
    )
    assert out.count("\n") <= 1
    created = json.loads(out)
    assert set(created) == {"client_id", "client_secret"}
    from authorizations.models import ApiClient

    model = ApiClient.objects.get(client_id=created["client_id"])
    assert model.name == "Nightly sync"
    assert model.allowed_ips == ["127.0.0.1/32", "203.0.113.0/24"]
    assert created["client_secret"] not in model.client_secret
    response = oauth.token_request(
        client,
        {**GOOD, "client_id": created["client_id"], "client_secret": created["client_secret"]},
    )
    assert response.json()["scope"] == "authorizations:read jobs:read"


@pytest.mark.parametrize(
    "args, message",
    [
        (["nobody", "--scopes", "jobs:read"], "No partner"),
        (["acme-api", "--scopes", "jobs:read everything"], "Unknown scope"),
        (["acme-api", "--scopes", "jobs:read", "--allowed-ips", "10.0.0.1/8"], "allowed_ips"),
    ],
)
def test_create_api_client_command_errors(acme, args, message):
    with pytest.raises(CommandError, match=message):
        run_command("create_api_client", *args)


# -- expired token cleanup (Celery beat) ---------------------------------------------------
def test_expired_tokens_are_deleted_hourly(oauth, client, acme_client):
    from django_celery_beat.models import PeriodicTask
    from oauth2_provider.models import AccessToken

    from api import tasks

    task = PeriodicTask.objects.get(task="api.tasks.delete_expired_tokens")
    assert task.enabled and task.interval.every == 1 and task.interval.period == "hours"
    start = timezone.now()
    with time_machine.travel(start, tick=False) as traveller:
        oauth.get_token(client, acme_client)
        traveller.shift(1800)
        oauth.get_token(client, acme_client)
        traveller.shift(1801)  # the first is over, the second has 30 minutes left
        assert tasks.delete_expired_tokens.run() == 1
    assert AccessToken.objects.count() == 1


# -- admin: create, show once, rotate, revoke ----------------------------------------------
SECRET_INPUT = re.compile(r'id="new-secret-value"[^>]*value="([^"]+)"')
ADD_URL = "/admin/authorizations/apiclient/add/"


def change_url(pk) -> str:
    return f"/admin/authorizations/apiclient/{pk}/change/"


def form_data(partner, **extra) -> dict:
    return {
        "partner": partner.pk,
        "name": "Warehouse sync",
        "scopes": ["authorizations:read", "jobs:run"],
        "allowed_ips": "127.0.0.1\n203.0.113.0/24",
        "active": "on",
        **extra,
    }


def test_admin_creates_a_client_and_shows_the_secret_once(
    apiclient_admin, oauth, admin_client, client, acme
):
    from authorizations.models import ApiClient

    response = admin_client.post(ADD_URL, form_data(acme, _save="Save"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    created = ApiClient.objects.get()
    assert response["Location"] == change_url(created.pk)
    assert created.scopes == "authorizations:read jobs:run"
    assert created.allowed_ips == ["127.0.0.1/32", "203.0.113.0/24"]
    assert created.client_type == "confidential"
    assert created.authorization_grant_type == "client-credentials"

    first = admin_client.get(change_url(created.pk))
    assert "no-store" in first["Cache-Control"]
    secret = SECRET_INPUT.search(first.content.decode()).group(1)
    assert 'id="copy-secret"' in first.content.decode()
    assert created.secret_hint == secret[:4] + "…"
    second = admin_client.get(change_url(created.pk)).content.decode()
    assert secret not in second and "new-secret-value" not in second
    assert created.secret_hint in second
    assert secret not in admin_client.get("/admin/authorizations/apiclient/").content.decode()

    data = {**GOOD, "client_id": created.client_id, "client_secret": secret}
    assert oauth.token_request(client, data).json()["scope"] == "authorizations:read jobs:run"


def test_admin_refuses_bad_networks_and_unknown_partner(apiclient_admin, admin_client, acme):
    from authorizations.models import ApiClient

    response = admin_client.post(ADD_URL, form_data(acme, allowed_ips="10.0.0.1/8"))
    assert response.status_code == 200
    assert "host bits" in response.content.decode()
    response = admin_client.post(ADD_URL, {**form_data(acme), "partner": ""})
    assert response.status_code == 200
    assert not ApiClient.objects.exists()


def test_admin_rotate_secret(apiclient_admin, oauth, admin_client, client, acme_client):
    old_token = oauth.get_token(client, acme_client)
    rotate_url = f"/admin/authorizations/apiclient/{acme_client.model.pk}/rotate-secret/"
    page = admin_client.get(change_url(acme_client.model.pk)).content.decode()
    assert rotate_url in page
    assert admin_client.get(rotate_url).status_code == 200  # a confirmation page only
    assert oauth.token_request(client, body_creds(acme_client)).status_code == 200
    response = admin_client.post(rotate_url)
    assert response.status_code == 302
    shown = admin_client.get(change_url(acme_client.model.pk)).content.decode()
    new_secret = SECRET_INPUT.search(shown).group(1)
    assert new_secret != acme_client.secret
    assert oauth.token_request(client, body_creds(acme_client)).status_code == 401
    assert client.get("/api/v1/me", **oauth.bearer(old_token)).status_code == 401
    fresh = body_creds(acme_client, client_secret=new_secret)
    assert oauth.token_request(client, fresh).status_code == 200


def test_admin_deactivating_revokes_live_tokens(
    apiclient_admin, oauth, admin_client, client, acme, acme_client
):
    token = oauth.get_token(client, acme_client)
    data = form_data(acme, name=acme_client.model.name, scopes=acme_client.model.scope_list)
    del data["active"]
    response = admin_client.post(change_url(acme_client.model.pk), {**data, "_save": "Save"})
    assert response.status_code == 302
    assert client.get("/api/v1/me", **oauth.bearer(token)).status_code == 401


def test_admin_revoke_action(apiclient_admin, oauth, admin_client, client, acme_client):
    token = oauth.get_token(client, acme_client)
    response = admin_client.post(
        "/admin/authorizations/apiclient/",
        {"action": "revoke_clients", "_selected_action": [acme_client.model.pk]},
    )
    assert response.status_code == 302
    acme_client.model.refresh_from_db()
    assert not acme_client.model.active
    assert client.get("/api/v1/me", **oauth.bearer(token)).status_code == 401


def test_admin_token_pages(apiclient_admin, oauth, admin_client, client, acme_client):
    from django.contrib import admin
    from oauth2_provider.models import AccessToken, Grant, IDToken, RefreshToken

    oauth.get_token(client, acme_client)
    for model in (Grant, IDToken, RefreshToken):
        assert not admin.site.is_registered(model)
    listing = admin_client.get("/admin/oauth2_provider/accesstoken/")
    assert listing.status_code == 200
    assert acme_client.model.name in listing.content.decode()
    detail = admin_client.get(f"/admin/oauth2_provider/accesstoken/{AccessToken.objects.get().pk}/")
    assert detail.status_code in (200, 302)


def test_token_request_query_budget(oauth, client, acme_client, django_assert_max_num_queries):
    # Throttle counters, the client, the token insert (and its savepoint in tests).
    with django_assert_max_num_queries(5):
        assert oauth.token_request(client, body_creds(acme_client)).status_code == 200
