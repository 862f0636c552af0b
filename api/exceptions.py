"""Errors of the partner API, all with one JSON body shape.

Every error answers ``{"error": <code>, "error_description": <text>}``; a validation error
adds ``"fields": {<field>: [<message>, ...]}`` and an insufficient scope adds ``"scope"``.
Bearer errors also carry the RFC 6750 ``WWW-Authenticate`` challenge.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

REALM = "lyticsops"


def bearer_challenge(**params: str) -> str:
    """``Bearer realm="lyticsops", error="...", ...`` (RFC 6750 §3)."""
    parts = [f'realm="{REALM}"']
    for name, value in params.items():
        clean = value.replace("\\", "").replace('"', "'")
        parts.append(f'{name}="{clean}"')
    return "Bearer " + ", ".join(parts)


class BearerError(exceptions.APIException):
    """An RFC 6750 error: its challenge goes in WWW-Authenticate."""

    error = "invalid_request"

    def challenge(self) -> str:
        return bearer_challenge(error=self.error, error_description=str(self.detail))


class InvalidToken(BearerError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "The access token is invalid."
    default_code = error = "invalid_token"


class InvalidBearerRequest(BearerError):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "Malformed Authorization header."
    default_code = error = "invalid_request"


class InsufficientScope(BearerError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = error = "insufficient_scope"

    def __init__(self, scope: str) -> None:
        super().__init__(f"This request needs the scope {scope}.")
        self.scope = scope

    def challenge(self) -> str:
        return bearer_challenge(
            error=self.error, error_description=str(self.detail), scope=self.scope
        )


class AddressNotAllowed(exceptions.PermissionDenied):
    default_detail = "This client may not be used from this address."
    default_code = "ip_not_allowed"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object is still in use."
    default_code = "conflict"


def validation_error(exc: DjangoValidationError) -> exceptions.ValidationError:
    """A model ValidationError as DRF field errors (``__all__`` becomes non_field_errors)."""
    if hasattr(exc, "error_dict"):
        fields = {
            ("non_field_errors" if name == NON_FIELD_ERRORS else name): messages
            for name, messages in exc.message_dict.items()
        }
    else:
        fields = {"non_field_errors": exc.messages}
    return exceptions.ValidationError(fields)


def _error_code(exc: exceptions.APIException) -> str:
    if isinstance(exc, BearerError):
        return exc.error
    if isinstance(exc, exceptions.ValidationError):
        return "invalid"
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    # Imported here: rest_framework.views loads DEFAULT_AUTHENTICATION_CLASSES, which
    # imports this module (api.authentication -> api.exceptions).
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, DjangoValidationError):
        exc = validation_error(exc)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    body: dict[str, Any] = {"error": _error_code(exc)}
    if isinstance(exc, exceptions.ValidationError):
        body["error_description"] = "The request has invalid fields."
        detail = exc.detail
        body["fields"] = detail if isinstance(detail, dict) else {"non_field_errors": detail}
    else:
        body["error_description"] = str(exc.detail)
    if isinstance(exc, InsufficientScope):
        body["scope"] = exc.scope
    if isinstance(exc, BearerError):
        response["WWW-Authenticate"] = exc.challenge()
    response.data = body
    response["Cache-Control"] = "no-store"
    return response
