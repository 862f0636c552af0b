from django.contrib import admin
from django.urls import path

admin.site.site_header = "lyticsops"
admin.site.site_title = "lyticsops"
admin.site.index_title = "Data exchange with partners"

urlpatterns = [
    path("admin/", admin.site.urls),
]
