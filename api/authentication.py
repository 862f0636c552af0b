"""Bearer tokens (RFC 6750 §2.1 header only) issued by the token endpoint.

One query per request: the token by its checksum, with its client and partner. A token
works only while it is unexpired, its client and partner are active and the request comes
from an address in the client's allowlist, checked on every call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone
from oauth2_provider.models import get_access_token_model
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from api.exceptions import AddressNotAllowed, InvalidBearerRequest, InvalidToken, bearer_challenge
from api.net import client_ip
from lyticsops.netutil import ip_allowed

TOKEN_COLUMNS = (
    "expires",
    "scope",
    "resource",
    "application__client_id",
    "application__name",
    "application__scopes",
    "application__allowed_ips",
    "application__active",
    "application__partner__slug",
    "application__partner__name",
    "application__partner__active",
)


@dataclass(frozen=True)
class PartnerClient:
    """``request.user`` of an API call: the API client acting for its partner."""

    client: object
    partner: object
    scopes: frozenset[str]
    expires: datetime

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False

    @property
    def pk(self) -> int:
        return self.client.pk

    def __str__(self) -> str:
        return f"{self.partner.slug}/{self.client.client_id}"


class BearerTokenAuthentication(BaseAuthentication):
    keyword = "bearer"

    def authenticate(self, request):
        if "access_token" in request.query_params:
            # RFC 9700 §4.3.2: a token in a URL ends up in logs and browser history.
            raise InvalidBearerRequest("Send the access token in the Authorization header.")
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.encode():
            return None  # no Bearer credentials: 401 with a bare challenge
        if len(header) != 2:
            raise InvalidBearerRequest("Use 'Authorization: Bearer <token>'.")
        try:
            token = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidToken() from exc
        access = self._load(token)
        self._check(request, access)
        principal = PartnerClient(
            client=access.application,
            partner=access.application.partner,
            # A scope removed from the client stops working at once, not when tokens expire.
            scopes=frozenset(access.scope.split()) & frozenset(access.application.scopes.split()),
            expires=access.expires,
        )
        return principal, access

    @staticmethod
    def _load(token: str):
        checksum = hashlib.sha256(token.encode("ascii")).hexdigest()
        # Runs on every API call: one query, only the columns we use, no ORDER BY.
        rows = (
            get_access_token_model()
            .objects.select_related("application__partner")
            .only(*TOKEN_COLUMNS)
            .filter(token_checksum=checksum)[:1]
        )
        access = next(iter(rows), None)
        if access is None:
            raise InvalidToken("The access token is unknown or was revoked.")
        if access.expires <= timezone.now():
            raise InvalidToken("The access token has expired.")
        return access

    @staticmethod
    def _check(request, access) -> None:
        client = access.application
        if client is None or not client.active:
            raise InvalidToken("The access token was revoked.")
        partner = client.partner
        if partner is None or not partner.active:
            raise InvalidToken("The access token was revoked.")
        if access.resource and not access.allows_audience(request.build_absolute_uri()):
            raise InvalidToken("The access token is not valid for this resource.")
        if not ip_allowed(client_ip(request._request), client.allowed_ips):
            raise AddressNotAllowed()

    def authenticate_header(self, request) -> str:
        return bearer_challenge()
