"""Partner API under /api/v1/ (paths without a trailing slash; one is accepted too)."""

from django.urls import re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

import transfers.api
from api.token_view import TokenView
from api.views import AuthorizationViewSet, MeView

app_name = "api"


class OptionalSlashRouter(SimpleRouter):
    """Routes that match with or without a trailing slash (``/?``)."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("authorizations", AuthorizationViewSet, basename="authorization")
transfers.api.register(router)  # imports, exports, runs

urlpatterns = [
    re_path(r"^idp/oauth2/token/?$", TokenView.as_view(), name="oauth2-token"),
    re_path(r"^me/?$", MeView.as_view(), name="me"),
    re_path(r"^schema/?$", SpectacularAPIView.as_view(), name="schema"),
    re_path(r"^docs/?$", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    re_path(r"^redoc/?$", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    *router.urls,
]
