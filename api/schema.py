"""OpenAPI description of the Bearer authentication: OAuth 2.0 client credentials."""

from __future__ import annotations

from django.urls import NoReverseMatch, reverse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from oauth2_provider.settings import oauth2_settings
from rest_framework.exceptions import APIException

from api.permissions import required_scope

TOKEN_PATH = "/api/v1/idp/oauth2/token"  # noqa: S105  (a URL, not a password)


def token_url() -> str:
    try:
        return reverse("api:oauth2-token")
    except NoReverseMatch:
        return TOKEN_PATH


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.BearerTokenAuthentication"
    name = ["oauth2", "bearerAuth"]

    def get_security_definition(self, auto_schema):
        return [
            {
                "type": "oauth2",
                "description": "Client credentials: trade the client id and secret for a "
                "one-hour Bearer token.",
                "flows": {
                    "clientCredentials": {
                        "tokenUrl": token_url(),
                        "scopes": dict(oauth2_settings.SCOPES),
                    }
                },
            },
            {
                "type": "http",
                "scheme": "bearer",
                "description": "An access token from the token endpoint.",
            },
        ]

    def get_security_requirement(self, auto_schema):
        try:
            scope = required_scope(auto_schema.view)
        except APIException:
            scope = None
        return [{"oauth2": [scope] if scope else []}, {"bearerAuth": []}]


def canonical_paths(endpoints):
    """drf-spectacular preprocessing hook: document paths without a trailing slash.

    Our routes accept an optional slash (``/?``), which spectacular renders as ``/``; the
    documented, canonical form has none.
    """
    return [
        (path.rstrip("/") or "/", path_regex, method, callback)
        for path, path_regex, method, callback in endpoints
    ]
