"""The partner REST API over HTTP: RFC 6750 errors, scopes, IP allowlist, isolation, schema."""

from __future__ import annotations

import json

import pytest

SFTP_PASSWORD = "S3cret-sftp-pa55word!"
ACCOUNT_PASSWORD = "Acc0unt!pass"


def sftp_client_payload(**extra) -> dict:
    return {
        "label": "Acme drop box",
        "description": "Nightly files",
        "method": "sftp_client",
        "host": "sftp.acme.example",
        "port": 2022,
        "username": "lytics",
        "password": SFTP_PASSWORD,
        "folder": "outgoing/daily",
        **extra,
    }


@pytest.fixture
def make_authorization(db):
    """An sftp_client authorization made through the model (secrets encrypted at rest)."""
    from authorizations.models import Authorization

    def make(partner, label: str = "Their server", password: str = SFTP_PASSWORD):
        authz = Authorization(
            partner=partner,
            label=label,
            method="sftp_client",
            host="sftp.example.net",
            username="lytics",
            password=password,
        )
        authz.full_clean()
        authz.save()
        return authz

    return make


@pytest.fixture
def acme_api(api_as, acme_client):
    return api_as(acme_client)


@pytest.fixture
def theirs(make_authorization, globex):
    return make_authorization(globex, "Globex private", password="Gl0bex-only-secret")


def error_of(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    return body


# -- /me and RFC 6750 ------------------------------------------------------------------
def test_me(acme_api, acme, acme_client):
    response = acme_api.get("me")
    assert response.status_code == 200
    body = response.json()
    assert body["partner"] == {"slug": acme.slug, "name": acme.name}
    assert body["client"]["client_id"] == acme_client.client_id
    assert body["client"]["allowed_scopes"] == acme_client.model.scope_list
    assert sorted(body["scopes"]) == sorted(acme_client.model.scope_list)
    assert 3590 <= body["expires_in"] <= 3600
    assert body["expires_at"]
    assert acme_api.get("me/").status_code == 200  # a trailing slash is accepted too


def test_no_token_is_401_with_a_bare_bearer_challenge(client, acme_client, oauth):
    for extra in ({}, {"HTTP_AUTHORIZATION": oauth.basic(acme_client.client_id, "x")}):
        response = client.get("/api/v1/me", **extra)
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="lyticsops"'
        assert response.json()["error"] == "not_authenticated"


def test_unknown_token_is_invalid_token(db, client, oauth):
    response = client.get("/api/v1/authorizations", **oauth.bearer("not-a-token"))
    body = error_of(response, 401, "invalid_token")
    challenge = response["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="lyticsops", error="invalid_token"')
    assert body["error_description"] in challenge


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b"])
def test_malformed_bearer_header_is_invalid_request(client, header):
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=header)
    error_of(response, 400, "invalid_request")
    assert 'error="invalid_request"' in response["WWW-Authenticate"]


def test_token_in_query_string_is_refused(client, acme_client, oauth):
    token = oauth.get_token(client, acme_client)
    error_of(client.get(f"/api/v1/me?access_token={token}"), 400, "invalid_request")


def test_insufficient_scope_names_the_scope(api_as, acme_client):
    reader = api_as(acme_client, scope="authorizations:read")
    assert reader.get("authorizations").status_code == 200
    response = reader.post("authorizations", sftp_client_payload())
    body = error_of(response, 403, "insufficient_scope")
    assert body["scope"] == "authorizations:write"
    challenge = response["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="authorizations:write"' in challenge
    writer_only = api_as(acme_client, scope="jobs:read")
    assert error_of(writer_only.get("authorizations"), 403, "insufficient_scope")["scope"] == (
        "authorizations:read"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "localhost", "::1"])
def test_partners_cannot_point_us_at_internal_hosts(api_as, acme_client, host, settings):
    writer = api_as(acme_client, scope="authorizations:write")
    response = writer.post("authorizations", sftp_client_payload(host=host))
    assert "not a public address" in error_of(response, 400, "invalid")["fields"]["host"][0]
    settings.API_ALLOW_INTERNAL_HOSTS = True
    assert writer.post("authorizations", sftp_client_payload(host=host)).status_code == 201


def test_scope_removed_from_client_stops_working_on_live_tokens(api_as, acme_client):
    reader = api_as(acme_client, scope="authorizations:read")
    assert reader.get("authorizations").status_code == 200
    model = acme_client.model
    model.scopes = "jobs:read"
    model.save()
    body = error_of(reader.get("authorizations"), 403, "insufficient_scope")
    assert body["scope"] == "authorizations:read"


def test_ip_allowlist_on_every_call(client, acme, make_client, oauth, settings):
    fenced = make_client(acme, allowed_ips=["203.0.113.0/24"])
    token = oauth.get_token(client, fenced, ip="203.0.113.5")
    inside = client.get("/api/v1/me", REMOTE_ADDR="203.0.113.77", **oauth.bearer(token))
    assert inside.status_code == 200
    outside = client.get("/api/v1/me", REMOTE_ADDR="198.51.100.1", **oauth.bearer(token))
    error_of(outside, 403, "ip_not_allowed")
    spoofed = client.get(
        "/api/v1/me",
        REMOTE_ADDR="198.51.100.1",
        HTTP_X_FORWARDED_FOR="203.0.113.5",
        **oauth.bearer(token),
    )
    assert spoofed.status_code == 403
    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    proxied = client.get(
        "/api/v1/me",
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="203.0.113.5",
        **oauth.bearer(token),
    )
    assert proxied.status_code == 200


def test_inactive_partner_tokens_stop(acme_api, acme):
    acme.active = False
    acme.save()
    error_of(acme_api.get("me"), 401, "invalid_token")


# -- authorizations: list / detail -----------------------------------------------------------
def test_list_shows_only_own_authorizations_paginated(acme_api, acme, make_authorization, theirs):
    for n in range(3):
        make_authorization(acme, f"Acme {n}")
    response = acme_api.get("authorizations?page_size=2")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert len(body["results"]) == 2 and body["next"]
    assert {row["label"] for row in body["results"]} <= {"Acme 0", "Acme 1", "Acme 2"}
    everything = acme_api.get("authorizations/").json()["results"]
    assert theirs.label not in {row["label"] for row in everything}


def test_detail_has_fields_but_no_secrets(acme_api, acme, make_authorization):
    mine = make_authorization(acme)
    response = acme_api.get(f"authorizations/{mine.pk}")
    assert response.status_code == 200
    body = response.json()
    for name in (
        "label",
        "description",
        "method",
        "host",
        "port",
        "username",
        "folder",
        "pgp_public_key",
        "public_keys",
        "allowed_ips",
        "managed_account",
        "host_key_fingerprint",
        "private_key_fingerprint",
        "pgp_fingerprint",
        "created_at",
    ):
        assert name in body
    for secret in ("password", "private_key", "passphrase", "pgp_private_key", "pgp_passphrase"):
        assert secret not in body
    assert body["password_set"] is True and body["private_key_set"] is False
    assert SFTP_PASSWORD not in response.content.decode()


# -- create / update / delete ----------------------------------------------------------------
def test_create_sftp_client(acme_api, acme):
    from authorizations.models import Authorization

    response = acme_api.post("authorizations", sftp_client_payload())
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["method"] == "sftp_client" and body["port"] == 2022
    assert body["folder"] == "outgoing/daily"
    assert "password" not in body and body["password_set"] is True
    stored = Authorization.objects.get(pk=body["id"])
    assert stored.partner == acme
    assert stored.password == SFTP_PASSWORD
    assert SFTP_PASSWORD not in json.dumps(
        Authorization.objects.values().get(pk=stored.pk), default=str
    )


def test_create_runs_the_models_validation(acme_api):
    response = acme_api.post(
        "authorizations",
        sftp_client_payload(host="http://bad host/", port=70000, password="", folder="../up"),
    )
    body = error_of(response, 400, "invalid")
    assert set(body["fields"]) >= {"host", "port", "password", "folder"}
    unknown = acme_api.post("authorizations", sftp_client_payload(method="carrier_pigeon"))
    assert "method" in error_of(unknown, 400, "invalid")["fields"]


def test_create_managed_sftp_account(acme_api):
    pytest.importorskip("transfers.sshkeys")  # the model parses public keys with it
    from authorizations.models import Authorization

    payload = {
        "label": "Acme account",
        "method": "managed_sftp",
        "username": "acme_upload",
        "password": ACCOUNT_PASSWORD,
        "allowed_ips": ["198.51.100.0/24", "203.0.113.7"],
    }
    response = acme_api.post("authorizations", payload)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["allowed_ips"] == ["198.51.100.0/24", "203.0.113.7/32"]
    assert body["password_set"] is True and ACCOUNT_PASSWORD not in response.content.decode()
    account = Authorization.objects.get(pk=body["id"])
    assert account.check_account_password(ACCOUNT_PASSWORD)
    assert account.password == ""  # only the hash is kept
    weak = acme_api.post("authorizations", {**payload, "username": "acme_two", "password": "x"})
    assert "password" in error_of(weak, 400, "invalid")["fields"]


def test_update_keeps_blank_secrets_and_replaces_given_ones(acme_api, acme, make_authorization):
    mine = make_authorization(acme)
    url = f"authorizations/{mine.pk}"
    response = acme_api.patch(url, {"label": "Renamed", "password": ""})
    assert response.status_code == 200, response.content
    mine.refresh_from_db()
    assert mine.label == "Renamed" and mine.password == SFTP_PASSWORD
    assert acme_api.patch(url, {"password": "An0ther-secret"}).status_code == 200
    mine.refresh_from_db()
    assert mine.password == "An0ther-secret"
    # Removing the only credential is refused by the model, on the password field.
    assert "password" in error_of(acme_api.patch(url, {"password": None}), 400, "invalid")["fields"]
    put = acme_api.put(url, sftp_client_payload(label="Put", password=""))
    assert put.status_code == 200, put.content
    mine.refresh_from_db()
    assert mine.label == "Put" and mine.password == "An0ther-secret"


def test_method_cannot_change(acme_api, acme, make_authorization):
    mine = make_authorization(acme)
    response = acme_api.patch(f"authorizations/{mine.pk}", {"method": "managed_sftp"})
    assert "method" in error_of(response, 400, "invalid")["fields"]


def test_delete_own(acme_api, acme, make_authorization):
    from authorizations.models import Authorization

    mine = make_authorization(acme)
    assert acme_api.delete(f"authorizations/{mine.pk}").status_code == 204
    assert not Authorization.objects.filter(pk=mine.pk).exists()


# -- isolation: another partner's objects are 404 everywhere ----------------------------------
@pytest.mark.parametrize(
    "call",
    [
        ("get", None),
        ("patch", {"label": "Mine now"}),
        ("put", "FULL"),
        ("delete", None),
    ],
    ids=["detail", "partial-update", "update", "delete"],
)
def test_other_partners_authorization_is_404(acme_api, theirs, call):
    from authorizations.models import Authorization

    method, data = call
    data = sftp_client_payload(label="Mine now") if data == "FULL" else data
    url = f"authorizations/{theirs.pk}"
    args = (url,) if data is None else (url, data)
    response = getattr(acme_api, method)(*args)
    body = error_of(response, 404, "not_found")
    # Exactly what a missing id answers: nothing confirms the object exists.
    missing = getattr(acme_api, method)(f"authorizations/{theirs.pk + 1000}", *args[1:])
    assert missing.status_code == 404 and missing.json() == body
    theirs.refresh_from_db()
    assert theirs.label == "Globex private"
    assert Authorization.objects.filter(pk=theirs.pk).exists()


def test_other_partners_objects_never_listed_or_linkable(acme_api, globex, theirs):
    assert acme_api.get("authorizations").json()["count"] == 0
    pytest.importorskip("transfers.sshkeys")
    from authorizations.models import Authorization

    account = Authorization(
        partner=globex, label="Globex acct", method="managed_sftp", username="globex_acct"
    )
    account.set_account_password(ACCOUNT_PASSWORD)
    account.full_clean()
    account.save()
    use = {
        "label": "Use theirs",
        "method": "managed_sftp_pgp_public",
        "managed_account": account.pk,
        "password": ACCOUNT_PASSWORD,
    }
    response = acme_api.post("authorizations", use)
    fields = error_of(response, 400, "invalid")["fields"]
    assert "managed_account" in fields
    assert str(account.pk) in fields["managed_account"][0]  # same text as a missing id


# -- secrets never in responses or logs -----------------------------------------------------
def test_secrets_absent_from_every_response_and_log(acme_api, acme, oauth, sql_logging):
    caplog = sql_logging
    created = acme_api.post("authorizations", sftp_client_payload())
    pk = created.json()["id"]
    acme_api.get(f"authorizations/{pk}")
    acme_api.get("authorizations")
    acme_api.patch(f"authorizations/{pk}", {"password": "Upd4ted-secret!"})
    acme_api.put(f"authorizations/{pk}", sftp_client_payload(password="Put-secret-9"))
    acme_api.post("authorizations", sftp_client_payload(host="bad host", password="Inv4lid-pw"))
    acme_api.get("me")
    acme_api.delete(f"authorizations/{pk}")
    secrets = (SFTP_PASSWORD, "Upd4ted-secret!", "Put-secret-9", "Inv4lid-pw", acme_api.token)
    oauth.assert_no_secret([r.content for r in acme_api.responses], *secrets)
    assert "INSERT INTO" in caplog.text  # the SQL was logged, parameters included
    oauth.assert_no_secret([caplog.text], *secrets)


# -- errors and schema -----------------------------------------------------------------------
def test_error_bodies_are_consistent(acme_api, oauth):
    error_of(acme_api.get("authorizations/999999"), 404, "not_found")
    error_of(acme_api.call("post", "me", {}), 405, "method_not_allowed")
    bad_json = acme_api.http.post(
        "/api/v1/authorizations",
        "{not json",
        content_type="application/json",
        REMOTE_ADDR=acme_api.ip,
        **oauth.bearer(acme_api.token),
    )
    error_of(bad_json, 400, "parse_error")


def test_openapi_schema(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert "/api/v1/idp/oauth2/token" in paths
    token_op = paths["/api/v1/idp/oauth2/token"]["post"]
    assert "application/x-www-form-urlencoded" in token_op["requestBody"]["content"]
    assert {"/api/v1/me", "/api/v1/authorizations", "/api/v1/authorizations/{id}"} <= set(paths)
    schemes = schema["components"]["securitySchemes"]
    flow = schemes["oauth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/api/v1/idp/oauth2/token"
    assert "authorizations:write" in flow["scopes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerAuth"]["description"],
    }
    create = paths["/api/v1/authorizations"]["post"]
    assert {"oauth2": ["authorizations:write"]} in create["security"]
    request_schema = json.dumps(schema["components"]["schemas"]["AuthorizationRequest"])
    response_schema = schema["components"]["schemas"]["Authorization"]["properties"]
    assert "password" in request_schema and "password" not in response_schema


def test_docs_page_is_self_hosted(client):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html and "drf_spectacular_sidecar" in html
    assert "cdn." not in html


def test_me_costs_one_query(acme_api, django_assert_num_queries):
    # The authentication runs on every call: token, client and partner in one query.
    with django_assert_num_queries(1):
        assert acme_api.get("me").status_code == 200
