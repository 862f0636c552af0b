"""``POST /api/v1/idp/oauth2/token``: OAuth 2.0 client credentials (RFC 6749 §4.4, §5).

A thin view over oauthlib's token endpoint (api.oauth). It does what oauthlib cannot see
from a parsed body: refuses duplicated parameters and a second client authentication
method, finds the client's address, throttles repeated invalid_client, answers 401 with
``WWW-Authenticate: Basic`` and ``Cache-Control: no-store`` on every answer.

It is a DRF APIView only so that drf-spectacular documents it; it reads the Django request
itself and answers with plain JSON, bypassing DRF's parsers and content negotiation.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse, RawPostDataException
from django.http.multipartparser import MultiPartParserError
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from oauthlib.common import urlencode
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import FormParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from api import oauth, throttle
from api.net import client_ip

log = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
REALM = 'Basic realm="lyticsops", charset="UTF-8"'
# RFC 8707 allows `resource` more than once; every other parameter at most once (§3.2).
REPEATABLE = {"resource"}
DESCRIPTIONS = {
    "invalid_client": "Client authentication failed.",
    "unsupported_grant_type": "Only grant_type=client_credentials is supported.",
    "unauthorized_client": "This client may not obtain a token with this grant.",
    "invalid_scope": "The requested scope is not allowed for this client.",
    "invalid_request": "The request is malformed.",
}


class BadRequest(Exception):
    """An invalid_request found before oauthlib sees the request."""


def oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> HttpResponse:
    return _json_response(status, {"error": error, "error_description": description}, headers)


def _json_response(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> HttpResponse:
    response = HttpResponse(json.dumps(payload), status=status, content_type="application/json")
    # RFC 6749 §5.1: token responses must not be cached, and errors are no different.
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


# -- reading the request ----------------------------------------------------------------
def read_params(request: HttpRequest) -> list[tuple[str, list[str]]]:
    if request.META.get("QUERY_STRING"):
        raise BadRequest("URL query parameters are not allowed; send them in the body.")
    if request.content_type != FORM:
        raise BadRequest(f"Send the parameters as {FORM}.")
    try:
        params = list(request.POST.lists())
    except (RawPostDataException, MultiPartParserError, SuspiciousOperation, ValueError) as exc:
        # SuspiciousOperation: too many fields or too big a body (DATA_UPLOAD_MAX_*).
        raise BadRequest("The request body could not be read.") from exc
    repeated = sorted(k for k, values in params if len(values) > 1 and k not in REPEATABLE)
    if repeated:
        raise BadRequest("Parameter sent more than once: " + ", ".join(repeated) + ".")
    return params


def read_credentials(
    header: str, params: dict[str, list[str]]
) -> tuple[oauth.ClientCredentials | None, str | None]:
    """(credentials, problem): HTTP Basic or body, never both (RFC 6749 §2.3)."""
    body_id = (params.get("client_id") or [""])[-1]
    body_secret = (params.get("client_secret") or [""])[-1]
    if oauth.uses_basic(header):
        if body_secret:
            return None, (
                "Use one client authentication method: HTTP Basic or client_id and "
                "client_secret in the body, not both."
            )
        parsed = oauth.parse_basic(header)
        if parsed is None:
            return None, None  # unreadable Basic credentials: invalid_client
        if body_id and body_id != parsed[0]:
            return None, "client_id in the body differs from the one in HTTP Basic."
        return oauth.ClientCredentials(parsed[0], parsed[1], via_basic=True), None
    if body_id:
        return oauth.ClientCredentials(body_id, body_secret, via_basic=False), None
    return None, None


def oauthlib_body(params: list[tuple[str, list[str]]]) -> str:
    # The secret stays here: oauthlib never needs it, since we authenticate the client.
    # A parameter without a value counts as omitted (RFC 6749 §3.1).
    pairs = [
        (key, value)
        for key, values in params
        if key != "client_secret"
        for value in (values if key in REPEATABLE else values[-1:])
        if value != ""
    ]
    return urlencode(pairs)


# -- answering --------------------------------------------------------------------------
def issue_token(request: HttpRequest) -> HttpResponse:
    ip = client_ip(request)
    header = request.META.get("HTTP_AUTHORIZATION", "")
    basic_used = oauth.uses_basic(header)
    problem: str | None = None
    creds: oauth.ClientCredentials | None = None
    params: list[tuple[str, list[str]]] = []
    try:
        params = read_params(request)
        creds, problem = read_credentials(header, dict(params))
    except BadRequest as exc:
        problem = str(exc)
    retry_after = throttle.blocked(ip, creds.client_id if creds else None)
    if retry_after is not None:
        log.warning("token request throttled ip=%s client_id=%s", ip, _cid(creds))
        return oauth_error(
            429,
            "too_many_requests",
            "Too many failed client authentications; retry later.",
            {"Retry-After": str(retry_after)},
        )
    if problem:
        return oauth_error(400, "invalid_request", problem)
    ctx = oauth.TokenRequest(ip=ip, credentials=creds, basic_used=basic_used)
    _headers, body, status = oauth.run(ctx, request.path, oauthlib_body(params))
    payload = json.loads(body)
    if status == 200:
        client = ctx.client
        log.info(
            "token issued client_id=%s partner=%s scope=%s ip=%s",
            client.client_id,
            client.partner.slug,
            payload.get("scope", ""),
            ip,
        )
        return _json_response(200, payload)
    return _refusal(ctx, payload, status)


def _refusal(ctx: oauth.TokenRequest, payload: dict[str, Any], status: int) -> HttpResponse:
    error = payload.get("error", "invalid_request")
    if not payload.get("error_description"):
        payload["error_description"] = DESCRIPTIONS.get(error, "")
    headers: dict[str, str] = {}
    if error == "invalid_client":
        # RFC 6749 §5.2: 401 with the challenge of the scheme the client can use (Basic);
        # an HTTP 401 always carries a challenge (RFC 9110 §15.5.2), body credentials too.
        status = 401
        headers["WWW-Authenticate"] = REALM
        tried_secret = ctx.failure == "secret"
        throttle.record_failure(ctx.ip, ctx.credentials.client_id if tried_secret else None)
    log.warning(
        "token refused error=%s reason=%s client_id=%s ip=%s basic=%s",
        error,
        ctx.failure or "-",
        _cid(ctx.credentials),
        ctx.ip,
        ctx.basic_used,
    )
    return _json_response(status, payload, headers)


def _cid(creds: oauth.ClientCredentials | None) -> str:
    # The client id is not a secret, but it comes from the request: keep the log line sane.
    return repr(creds.client_id[:80]) if creds else "-"


# -- the DRF wrapper (for the OpenAPI schema) -------------------------------------------
class _AsIs(BaseContentNegotiation):
    """Ignore Accept/Content-Type negotiation: the token endpoint always answers JSON."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class TokenRequestSerializer(serializers.Serializer):
    grant_type = serializers.ChoiceField(choices=["client_credentials"])
    client_id = serializers.CharField(
        required=False, help_text="Unless sent with HTTP Basic (preferred)."
    )
    client_secret = serializers.CharField(
        required=False, help_text="Unless sent with HTTP Basic (preferred)."
    )
    scope = serializers.CharField(
        required=False,
        help_text="Space-separated scopes, a subset of the client's allowed scopes. "
        "Omitted: all of the client's allowed scopes.",
    )


class TokenResponseSerializer(serializers.Serializer):
    access_token = serializers.CharField()
    token_type = serializers.ChoiceField(choices=["Bearer"])
    expires_in = serializers.IntegerField(help_text="Seconds; 3600.")
    scope = serializers.CharField(help_text="The scopes granted, space-separated.")


class OAuthErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    error_description = serializers.CharField(required=False)


class TokenView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []
    parser_classes = [FormParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _AsIs

    @extend_schema(
        operation_id="oauth2_token",
        summary="Obtain an access token (OAuth 2.0 client credentials)",
        description=(
            "Authenticate with HTTP Basic (`client_id:client_secret`, form-encoded then "
            "base64) or with `client_id` and `client_secret` in the body, not both. "
            "Errors follow RFC 6749 §5.2. Repeated failed client authentication from one "
            "address or for one client id is answered 429 with `Retry-After`."
        ),
        tags=["auth"],
        auth=[],
        request={FORM: TokenRequestSerializer},
        responses={
            200: TokenResponseSerializer,
            400: OpenApiResponse(
                OAuthErrorSerializer,
                description="invalid_request, "
                "unsupported_grant_type, invalid_scope, unauthorized_client",
            ),
            401: OpenApiResponse(OAuthErrorSerializer, description="invalid_client"),
            429: OpenApiResponse(OAuthErrorSerializer, description="too_many_requests"),
        },
        examples=[
            OpenApiExample(
                "Token",
                response_only=True,
                status_codes=["200"],
                value={
                    "access_token": "n0tAr3alT0k3n",
                    "expires_in": 3600,
                    "token_type": "Bearer",
                    "scope": "authorizations:read",
                },
            )
        ],
    )
    def post(self, request, *args: Any, **kwargs: Any) -> HttpResponse:
        return issue_token(request._request)

    def http_method_not_allowed(self, request, *args: Any, **kwargs: Any) -> HttpResponse:
        # RFC 6749 §3.2: the client MUST use POST; oauthlib calls anything else
        # invalid_request, and so do we.
        return oauth_error(
            400,
            "invalid_request",
            f"Unsupported request method {request.method}: use POST.",
            {"Allow": "POST"},
        )
