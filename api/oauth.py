"""The OAuth 2.0 client-credentials server: oauthlib's grant, DOT's token storage, our rules.

oauthlib does the RFC 6749 §4.4 logic (grant type, duplicated grant_type/scope, client
authentication, grant allowed, scope) and DOT's validator stores the token. What we add:

- Client authentication is done once per request by `TokenRequest.authenticate` (HTTP
  Basic *or* body credentials, the client's IP allowlist checked before the secret is) and
  remembered, so the view can tell a wrong secret (counts against the client id) from an
  unknown client or a foreign address (counts against the IP only).
- Only the client-credentials grant exists: any other grant_type is unsupported_grant_type.
- Scopes: the request's scopes must be among the client's allowed scopes; a request that
  names none gets exactly the client's allowed scopes (never "all scopes").
- An inactive client or partner is unauthorized_client.
- The token is never logged (oauthlib's grant logs the whole token dict at DEBUG).
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote_plus

from django.contrib.auth.hashers import check_password, identify_hasher
from django.utils.crypto import constant_time_compare
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import BaseScopes
from oauth2_provider.settings import oauth2_settings
from oauthlib.oauth2.rfc6749 import errors
from oauthlib.oauth2.rfc6749.endpoints.token import TokenEndpoint
from oauthlib.oauth2.rfc6749.grant_types import ClientCredentialsGrant
from oauthlib.oauth2.rfc6749.tokens import BearerToken

from lyticsops.netutil import ip_allowed

log = logging.getLogger(__name__)


# -- scopes -------------------------------------------------------------------------------
def allowed_scopes(client) -> list[str]:
    """The client's allowed scopes that the server knows; none for a missing client."""
    return list(client.scope_list) if client is not None else []


class ClientScopes(BaseScopes):
    """DOT scopes backend: a client may have its own allowed scopes and no others."""

    def get_all_scopes(self) -> dict[str, str]:
        return oauth2_settings.SCOPES

    def get_available_scopes(self, application=None, request=None, *args, **kwargs) -> list[str]:
        return allowed_scopes(application)

    def get_default_scopes(self, application=None, request=None, *args, **kwargs) -> list[str]:
        return allowed_scopes(application)


# -- client credentials -------------------------------------------------------------------
@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str
    via_basic: bool


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Basic base64(urlencode(id):urlencode(secret))`` (RFC 6749 §2.3.1), or None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def uses_basic(header: str) -> bool:
    return header.partition(" ")[0].lower() == "basic"


def secret_matches(provided: str, stored: str) -> bool:
    """Check a presented secret against the stored one (hashed, or legacy plaintext)."""
    if not stored or not provided:
        return False
    try:
        identify_hasher(stored)
    except ValueError:  # a client saved with hash_client_secret off
        return constant_time_compare(provided, stored)
    return check_password(provided, stored)


CLIENT_COLUMNS = (
    "client_id",
    "client_secret",
    "client_type",
    "authorization_grant_type",
    "name",
    "scopes",
    "allowed_ips",
    "active",
    "partner__slug",
    "partner__name",
    "partner__active",
)


# -- one token request --------------------------------------------------------------------
@dataclass
class TokenRequest:
    """What the view knows about the request, shared with the validator for one call."""

    ip: str | None
    credentials: ClientCredentials | None
    basic_used: bool
    client: object | None = None
    # Why authentication failed: missing, unknown_client, address, secret; or inactive.
    failure: str | None = None
    _authenticated: bool = field(default=False, repr=False)

    def authenticate(self):
        """The authenticated ApiClient or None; the work is done once per request."""
        if not self._authenticated:
            self._authenticated = True
            self.client = self._authenticate()
        return self.client

    def _authenticate(self):
        from authorizations.models import ApiClient

        creds = self.credentials
        if creds is None or not creds.client_id or "\x00" in creds.client_id:
            self.failure = "missing" if creds is None else "unknown_client"
            return None
        # Every token request: one query, the columns we use, no ORDER BY.
        rows = (
            ApiClient.objects.select_related("partner")
            .only(*CLIENT_COLUMNS)
            .filter(client_id=creds.client_id)[:1]
        )
        client = next(iter(rows), None)
        if client is None:
            self.failure = "unknown_client"
            return None
        # Before the secret: from outside the allowlist a secret cannot even be tested.
        if not ip_allowed(self.ip, client.allowed_ips):
            self.failure = "address"
            return None
        if not secret_matches(creds.client_secret, client.client_secret):
            self.failure = "secret"
            return None
        return client


_current: contextvars.ContextVar[TokenRequest | None] = contextvars.ContextVar(
    "lyticsops_token_request", default=None
)


def current_token_request() -> TokenRequest | None:
    return _current.get()


# -- validator ----------------------------------------------------------------------------
class PartnerOAuth2Validator(OAuth2Validator):
    """DOT's validator with our client authentication, activity and scope rules."""

    def client_authentication_required(self, request, *args, **kwargs) -> bool:
        return True  # every client is confidential

    def authenticate_client(self, request, *args, **kwargs) -> bool:
        ctx = current_token_request()
        if ctx is None:
            # Only api.token_view issues tokens; DOT's own endpoints are not mounted.
            log.warning("client authentication outside the token view refused")
            return False
        client = ctx.authenticate()
        if client is None:
            return False
        request.client = client
        return True

    def authenticate_client_id(self, client_id, request, *args, **kwargs) -> bool:
        return False  # no public clients

    def validate_grant_type(self, client_id, grant_type, client, request, *args, **kwargs):
        if not client.active or client.partner is None or not client.partner.active:
            ctx = current_token_request()
            if ctx is not None:
                ctx.failure = "inactive"
            raise errors.UnauthorizedClientError(
                description="This client is not active.", request=request
            )
        if not super().validate_grant_type(client_id, grant_type, client, request):
            raise errors.UnauthorizedClientError(
                description="This client may not use the client_credentials grant.",
                request=request,
            )
        return True

    def get_default_scopes(self, client_id, request, *args, **kwargs) -> list[str]:
        return allowed_scopes(request.client)

    def validate_scopes(self, client_id, scopes, client, request, *args, **kwargs) -> bool:
        allowed = allowed_scopes(client)
        wanted = list(dict.fromkeys(scope for scope in scopes if scope))  # 'a  b'
        if not wanted:
            raise errors.InvalidScopeError(
                description="This client has no scopes: ask us to grant it some.",
                request=request,
            )
        refused = [scope for scope in wanted if scope not in allowed]
        if refused:
            raise errors.InvalidScopeError(
                description="Scope not allowed for this client: " + " ".join(refused),
                request=request,
            )
        request.scopes = wanted  # each scope once, in the order asked for
        return True


class QuietClientCredentialsGrant(ClientCredentialsGrant):
    """oauthlib's grant minus its DEBUG log line that contains the issued token."""

    def create_token_response(self, request, token_handler):
        headers = self._get_default_headers()
        try:
            self.validate_token_request(request)
        except errors.OAuth2Error as exc:
            headers.update(exc.headers)
            return headers, exc.json, exc.status_code
        token = token_handler.create_token(request, refresh_token=False)
        for modifier in self._token_modifiers:
            token = modifier(token)
        self.request_validator.save_token(token, request)
        return headers, json.dumps(token), 200


@lru_cache(maxsize=1)
def token_endpoint() -> TokenEndpoint:
    """A token endpoint that knows one grant: client credentials (built once per process)."""
    validator = oauth2_settings.OAUTH2_VALIDATOR_CLASS()
    bearer = BearerToken(
        validator,
        token_generator=oauth2_settings.ACCESS_TOKEN_GENERATOR,
        expires_in=oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS,
    )
    grant = QuietClientCredentialsGrant(validator)
    return TokenEndpoint(
        default_grant_type="client_credentials",
        default_token_type=bearer,
        grant_types={"client_credentials": grant},
    )


def run(ctx: TokenRequest, uri: str, body: str) -> tuple[dict, str, int]:
    """Answer one token request: (headers, JSON body, status)."""
    marker = _current.set(ctx)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return token_endpoint().create_token_response(uri, "POST", body, headers)
    except errors.OAuth2Error as exc:  # raised while saving, e.g. a bad RFC 8707 resource
        return exc.headers, exc.json, exc.status_code
    finally:
        _current.reset(marker)
