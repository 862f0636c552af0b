"""The partner REST API. Every queryset is the partner's own: another partner's object is
a 404, exactly like one that does not exist."""

from __future__ import annotations

from django.db.models import ProtectedError, QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.exceptions import Conflict
from api.serializers import AuthorizationSerializer, MeSerializer
from authorizations.models import Authorization

READ, WRITE = "authorizations:read", "authorizations:write"


class MeView(APIView):
    """Who the token speaks for. Any valid token may ask."""

    required_scope = None

    @extend_schema(responses=MeSerializer, tags=["me"], summary="The partner, client and token")
    def get(self, request: Request) -> Response:
        principal = request.user
        client = principal.client
        remaining = (principal.expires - timezone.now()).total_seconds()
        data = {
            "partner": {"slug": principal.partner.slug, "name": principal.partner.name},
            "client": {
                "client_id": client.client_id,
                "name": client.name,
                "allowed_scopes": client.scope_list,
            },
            "scopes": sorted(principal.scopes),
            "expires_at": principal.expires,
            "expires_in": max(0, int(remaining)),
        }
        return Response(data)  # already plain data; MeSerializer documents its shape


@extend_schema_view(
    list=extend_schema(summary="List your authorizations", tags=["authorizations"]),
    retrieve=extend_schema(summary="One of your authorizations", tags=["authorizations"]),
    create=extend_schema(summary="Create an authorization", tags=["authorizations"]),
    update=extend_schema(summary="Replace an authorization", tags=["authorizations"]),
    partial_update=extend_schema(summary="Change an authorization", tags=["authorizations"]),
    destroy=extend_schema(summary="Delete an authorization", tags=["authorizations"]),
)
class AuthorizationViewSet(viewsets.ModelViewSet):
    serializer_class = AuthorizationSerializer
    queryset = Authorization.objects.none()  # the real one is per partner: get_queryset
    lookup_value_regex = "[0-9]+"
    required_scopes = {
        "list": READ,
        "retrieve": READ,
        "create": WRITE,
        "update": WRITE,
        "partial_update": WRITE,
        "destroy": WRITE,
    }

    def get_queryset(self) -> QuerySet[Authorization]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no partner
            return Authorization.objects.none()
        return (
            Authorization.objects.filter(partner=self.request.user.partner)
            .select_related("managed_account")
            .order_by("label", "id")
        )

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["partner"] = self.request.user.partner
        return context

    def perform_destroy(self, instance: Authorization) -> None:
        try:
            instance.delete()
        except ProtectedError as exc:
            raise Conflict(
                "This authorization is still used (by a job or by an authorization that logs "
                "in with this managed account); remove those first."
            ) from exc
