from django.contrib import admin
from django.urls import include, path

from lyticsops.health import healthz

admin.site.site_header = "lyticsops"
admin.site.site_title = "lyticsops"
admin.site.index_title = "Data exchange with partners"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("api.urls")),
]
