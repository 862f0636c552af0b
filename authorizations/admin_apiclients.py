"""Admin for API clients (OAuth 2.0 client credentials) and their access tokens.

Staff never type a client id or secret: both are generated. The secret is shown exactly
once, on the page that follows its creation or rotation (it travels there encrypted in
the session and is removed as it is shown); afterwards only its first characters remain
visible. Unticking "active" (or the "Revoke" action) deletes the client's tokens, and the
API refuses tokens of inactive clients anyway.

DOT's own admin for the Application model is replaced; its noisy Grant, ID token and
refresh token admins are removed (this server issues none of those).
"""

from __future__ import annotations

from typing import Any

import oauth2_provider.admin  # noqa: F401  (registers DOT's admins first, so we can replace them)
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from oauth2_provider.admin import AccessTokenAdmin as DotAccessTokenAdmin
from oauth2_provider.models import (
    get_access_token_model,
    get_grant_model,
    get_id_token_model,
    get_refresh_token_model,
)
from oauth2_provider.settings import oauth2_settings

from authorizations import crypto
from authorizations.forms import CidrListField
from authorizations.models import ApiClient

AccessToken = get_access_token_model()
SESSION_KEY = "apiclient_new_secret"

for _model in (
    ApiClient,
    AccessToken,
    get_grant_model(),
    get_id_token_model(),
    get_refresh_token_model(),
):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)


def scope_choices() -> list[tuple[str, str]]:
    return [(name, f"{name} — {text}") for name, text in oauth2_settings.SCOPES.items()]


class ApiClientForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=scope_choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="What the client may request. A token request naming no scope gets all of "
        "these, and never more.",
    )
    allowed_ips = CidrListField(
        required=False,
        label="Allowed IP networks",
        help_text="One address or CIDR network per line (203.0.113.0/24). Empty allows any "
        "address. Checked at the token endpoint and on every API call.",
    )

    class Meta:
        model = ApiClient
        fields = ["partner", "name", "scopes", "allowed_ips", "active"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["partner"].required = True
        self.fields["name"].required = True
        self.initial["scopes"] = self.instance.scopes.split()

    def clean_scopes(self) -> str:
        return " ".join(self.cleaned_data["scopes"])


# -- the secret, shown once ----------------------------------------------------------------
def stash_secret(request: HttpRequest, client: ApiClient, secret: str) -> None:
    # Encrypted under FIELD_ENCRYPTION_KEYS: the session row never holds it in clear.
    request.session[SESSION_KEY] = {"pk": client.pk, "value": crypto.encrypt(secret)}


def pop_secret(request: HttpRequest, client_pk: Any) -> str | None:
    stashed = request.session.get(SESSION_KEY)
    if not stashed or str(stashed.get("pk")) != str(client_pk):
        return None
    del request.session[SESSION_KEY]
    return crypto.decrypt(stashed["value"], where="the API client secret in the session")


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    form = ApiClientForm
    change_form_template = "admin/authorizations/apiclient/change_form.html"
    view_on_site = False  # DOT's application pages are not mounted
    list_display = [
        "name",
        "partner",
        "scopes",
        "ip_networks",
        "active",
        "secret",
        "live_tokens",
    ]
    list_filter = ["active", "partner"]
    list_select_related = ["partner"]
    search_fields = ["name", "client_id", "partner__name", "partner__slug"]
    actions = ["revoke_clients"]

    def get_fieldsets(self, request: HttpRequest, obj: ApiClient | None = None):
        main = (None, {"fields": ["partner", "name", "scopes", "allowed_ips", "active"]})
        if obj is None:
            return [main]
        credentials = [
            "client_id",
            "secret",
            "secret_rotated_at",
            "live_tokens",
            "created",
            "updated",
        ]
        return [main, ("Credentials", {"fields": credentials})]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiClient | None = None):
        if obj is None:
            return []
        return ["client_id", "secret", "secret_rotated_at", "live_tokens", "created", "updated"]

    # -- columns -----------------------------------------------------------------------------
    @admin.display(description="secret")
    def secret(self, obj: ApiClient) -> str:
        return obj.secret_hint or "••••"

    @admin.display(description="allowed IPs")
    def ip_networks(self, obj: ApiClient) -> str:
        return ", ".join(obj.allowed_ips) or "any"

    def get_queryset(self, request: HttpRequest):
        # One query for the list, live token counts included.
        live = Q(accesstoken__expires__gt=timezone.now())
        return (
            super()
            .get_queryset(request)
            .annotate(live_token_count=Count("accesstoken", filter=live))
        )

    @admin.display(description="live tokens", ordering="live_token_count")
    def live_tokens(self, obj: ApiClient) -> int:
        return obj.live_token_count

    # -- create: generated id and secret ------------------------------------------------------
    def save_model(self, request: HttpRequest, obj: ApiClient, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)  # inactive: tokens revoked on save
            return
        obj.client_type = ApiClient.CLIENT_CONFIDENTIAL
        obj.authorization_grant_type = ApiClient.GRANT_CLIENT_CREDENTIALS
        secret = obj.set_new_secret()
        super().save_model(request, obj, form, change)
        stash_secret(request, obj, secret)

    def response_add(self, request: HttpRequest, obj: ApiClient, post_url_continue=None):
        # Always to the client's page: that is where the new secret is shown, once.
        self.message_user(request, f"API client “{obj}” created.", messages.SUCCESS)
        return HttpResponseRedirect(self._change_url(obj))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        extra_context = dict(extra_context or {})
        if request.method == "GET":
            extra_context["new_secret"] = pop_secret(request, object_id)
        response = super().change_view(request, object_id, form_url, extra_context)
        if extra_context.get("new_secret"):
            response["Cache-Control"] = "no-store"  # the Back button must not bring it back
        return response

    # -- rotate ------------------------------------------------------------------------------
    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/rotate-secret/",
                wrap(self.rotate_secret_view),
                name="authorizations_apiclient_rotate_secret",
            ),
            *super().get_urls(),
        ]

    def rotate_secret_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        client = get_object_or_404(ApiClient, pk=object_id)
        if not self.has_change_permission(request, client):
            raise PermissionDenied
        if request.method == "POST":
            secret = client.rotate_secret()
            self.log_change(request, client, "Rotated the client secret.")
            stash_secret(request, client, secret)
            self.message_user(
                request,
                "New secret issued: the old one no longer works and its tokens were revoked.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(self._change_url(client))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": client,
            "title": "Rotate the client secret?",
        }
        return TemplateResponse(
            request, "admin/authorizations/apiclient/rotate_secret.html", context
        )

    # -- revoke ------------------------------------------------------------------------------
    @admin.action(
        description="Revoke selected clients (deactivate, delete their tokens)",
        permissions=["change"],
    )
    def revoke_clients(self, request: HttpRequest, queryset) -> None:
        count = 0
        for client in queryset:
            client.active = False
            client.save()  # ApiClient.save() revokes the tokens of an inactive client
            self.log_change(request, client, "Revoked (deactivated) the client.")
            count += 1
        self.message_user(request, f"Revoked {count} client(s).", messages.SUCCESS)

    def _change_url(self, obj: ApiClient) -> str:
        return reverse("admin:authorizations_apiclient_change", args=[obj.pk])


@admin.register(AccessToken)
class AccessTokenAdmin(DotAccessTokenAdmin):
    """Who holds a live token, until when, with what scope. Read-only; revoke to end one."""

    list_display = ["pk", "application", "partner", "scope", "expires", "created", "is_live"]
    list_select_related = ["application__partner"]
    list_filter = ["application__partner", "application"]
    search_fields = ["application__client_id", "application__name", "application__partner__slug"]
    raw_id_fields: list = []
    exclude = ["token_checksum"]  # a digest of the token: no use to a person

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict:
        # DOT's "revoke tokens" action declares no permission; revoking is a deletion.
        actions = super().get_actions(request)
        if not self.has_delete_permission(request):
            actions.pop("revoke_tokens", None)
        return actions

    @admin.display(description="partner")
    def partner(self, obj) -> str:
        app = obj.application
        return str(app.partner) if app is not None and app.partner else "—"

    @admin.display(description="live", boolean=True)
    def is_live(self, obj) -> bool:
        return not obj.is_expired()
