"""Scopes: each view names the scope each action needs; the token must carry it."""

from __future__ import annotations

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from api.authentication import PartnerClient
from api.exceptions import InsufficientScope

# Actions any valid token may use (DRF's OPTIONS metadata).
OPEN_ACTIONS = {"metadata"}


def required_scope(view) -> str | None:
    """The scope the view's current action needs; None when any valid token will do.

    A view sets ``required_scope`` (one scope for everything) or ``required_scopes``
    (``{action or HTTP method: scope}``). An action missing from ``required_scopes`` is
    refused rather than left open.
    """
    scopes = getattr(view, "required_scopes", None)
    if scopes is None:
        return getattr(view, "required_scope", None)
    action = getattr(view, "action", None)
    request = getattr(view, "request", None)
    method = request.method if request is not None else None
    for key in (action, method):
        if key in scopes:
            return scopes[key]
    if action in OPEN_ACTIONS or method == "OPTIONS":
        return None
    raise PermissionDenied("This action has no scope configured.")


class ScopePermission(BasePermission):
    """An authenticated partner client holding the scope of the action."""

    def has_permission(self, request, view) -> bool:
        if not isinstance(request.user, PartnerClient):
            return False  # DRF answers 401 with the Bearer challenge
        scope = required_scope(view)
        if scope and scope not in request.user.scopes:
            raise InsufficientScope(scope)
        return True
