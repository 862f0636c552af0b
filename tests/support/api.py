"""Fixtures for the token endpoint and the partner API (plugged in with pytest_plugins)."""

from __future__ import annotations

import base64
import json
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote_plus

import pytest

TOKEN_URL = "/api/v1/idp/oauth2/token"
ALL_SCOPES = "authorizations:read authorizations:write jobs:read jobs:write jobs:run sftp:read"
FORM = "application/x-www-form-urlencoded"


@dataclass
class Client:
    """An ApiClient and the plaintext secret we were shown once."""

    model: object
    secret: str

    @property
    def client_id(self) -> str:
        return self.model.client_id


# Nothing here is autouse: pytest_plugins loads this module for the whole session, and
# other features' tests must not inherit our settings or a database they did not ask for.
@pytest.fixture
def api_hashers(settings):
    """Fast hashing for people's passwords; the client-secret hasher under test stays."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "api.hashers.ClientSecretHasher",
    ]


@pytest.fixture
def fresh_cache(db):
    """An empty default cache (throttle counters). The database cache is rolled back with
    each test anyway; this also covers a locmem/Redis cache set through CACHE_URL."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def make_partner(db, api_hashers, fresh_cache) -> Callable[..., object]:
    from authorizations.models import Partner

    def make(slug: str, name: str | None = None, **fields):
        return Partner.objects.create(slug=slug, name=name or slug.title(), **fields)

    return make


@pytest.fixture
def acme(make_partner):
    return make_partner("acme-api", "Acme API Retail")


@pytest.fixture
def globex(make_partner):
    return make_partner("globex-api", "Globex API")


@pytest.fixture
def make_client(db, api_hashers, fresh_cache) -> Callable[..., Client]:
    from authorizations.models import ApiClient

    def make(partner, scopes: str = ALL_SCOPES, allowed_ips: Iterable[str] = (), **fields):
        client = ApiClient(
            partner=partner,
            name=fields.pop("name", f"{partner.slug} client"),
            scopes=scopes,
            allowed_ips=list(allowed_ips),
            client_type=ApiClient.CLIENT_CONFIDENTIAL,
            authorization_grant_type=fields.pop(
                "authorization_grant_type", ApiClient.GRANT_CLIENT_CREDENTIALS
            ),
            **fields,
        )
        secret = client.set_new_secret()
        client.full_clean()
        client.save()
        return Client(client, secret)

    return make


@pytest.fixture
def acme_client(acme, make_client) -> Client:
    return make_client(acme)


@pytest.fixture
def globex_client(globex, make_client) -> Client:
    return make_client(globex)


def basic(client_id: str, secret: str) -> str:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def token_request(http, data: dict | str | None = None, *, ip: str = "127.0.0.1", **extra):
    """POST the form to the token endpoint; ``data`` as a dict or a raw urlencoded body."""
    body = (
        data
        if isinstance(data, str)
        else "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in (data or {}).items())
    )
    return http.post(TOKEN_URL, body, content_type=FORM, REMOTE_ADDR=ip, **extra)


def get_token(http, client: Client, scope: str | None = None, ip: str = "127.0.0.1") -> str:
    data = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret,
    }
    if scope is not None:
        data["scope"] = scope
    response = token_request(http, data, ip=ip)
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


class Api:
    """Calls to /api/v1 with a Bearer token, from a given address."""

    def __init__(self, http, token: str, ip: str = "127.0.0.1") -> None:
        self.http, self.token, self.ip = http, token, ip
        self.responses: list = []

    def call(self, method: str, path: str, data=None, **extra):
        kwargs = {"REMOTE_ADDR": self.ip, **bearer(self.token), **extra}
        if data is not None:
            kwargs.update(data=json.dumps(data), content_type="application/json")
        response = getattr(self.http, method)(f"/api/v1/{path.lstrip('/')}", **kwargs)
        self.responses.append(response)
        return response

    def get(self, path: str, **extra):
        return self.call("get", path, **extra)

    def post(self, path: str, data, **extra):
        return self.call("post", path, data, **extra)

    def patch(self, path: str, data, **extra):
        return self.call("patch", path, data, **extra)

    def put(self, path: str, data, **extra):
        return self.call("put", path, data, **extra)

    def delete(self, path: str, **extra):
        return self.call("delete", path, **extra)


@pytest.fixture
def api_as(client) -> Callable[..., Api]:
    """``api_as(api_client_fixture, scope=None, ip=...)`` -> an Api holding a fresh token."""

    def make(api_client: Client, scope: str | None = None, ip: str = "127.0.0.1") -> Api:
        return Api(client, get_token(client, api_client, scope=scope, ip=ip), ip=ip)

    return make


def assert_no_secret(texts: Iterable[str | bytes], *secrets: str) -> None:
    for text in texts:
        body = text.decode() if isinstance(text, bytes) else text
        for secret in secrets:
            assert secret not in body, "a secret leaked"


@pytest.fixture
def oauth():
    """These helpers (token_request, get_token, basic, bearer, ...) without importing this
    module from a test file, which would keep pytest from rewriting its asserts."""
    return sys.modules[__name__]


@pytest.fixture
def apiclient_admin():
    """Make sure our ApiClient admin is the registered one, and routed.

    Normally authorizations/admin.py imports it during admin autodiscovery. If a run got
    here another way (DOT's own ApplicationAdmin registered, or the URLconf built before
    the registration), put ours in place and rebuild the admin routes.
    """
    import importlib

    from django.conf import settings
    from django.contrib import admin
    from django.urls import NoReverseMatch, clear_url_caches, reverse

    from authorizations.admin_apiclients import ApiClientAdmin
    from authorizations.models import ApiClient

    if not isinstance(admin.site._registry.get(ApiClient), ApiClientAdmin):
        if admin.site.is_registered(ApiClient):
            admin.site.unregister(ApiClient)
        admin.site.register(ApiClient, ApiClientAdmin)
    try:
        reverse("admin:authorizations_apiclient_rotate_secret", args=[1])
    except NoReverseMatch:
        importlib.reload(importlib.import_module(settings.ROOT_URLCONF))
        clear_url_caches()


@pytest.fixture
def sql_logging(caplog):
    """Everything at DEBUG, SQL statements with their parameters included."""
    from django.db import connection

    caplog.set_level(logging.DEBUG)
    for name in ("oauthlib", "oauth2_provider", "api", "django", "django.db.backends"):
        caplog.set_level(logging.DEBUG, logger=name)
    forced = connection.force_debug_cursor
    connection.force_debug_cursor = True
    yield caplog
    connection.force_debug_cursor = forced
