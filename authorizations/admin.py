"""Admin for partners and authorizations.

Adding an authorization is two steps, like Django's own "add user": pick the method, then
fill in only that method's fields. Secrets are write-only (see forms.py).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from authorizations import services
from authorizations.forms import PartnerForm, form_for_method
from authorizations.models import (
    METHOD_FIELDS,
    PGP_PRIVATE_METHODS,
    PGP_PUBLIC_METHODS,
    SECRET_FIELDS,
    Authorization,
    Method,
    Partner,
)

METHOD_HELP = {
    Method.SFTP_CLIENT: "Import from or export to an SFTP server the partner runs.",
    Method.SFTP_CLIENT_PGP_PRIVATE: "As above, and decrypt imported files with a PGP private key.",
    Method.SFTP_CLIENT_PGP_PUBLIC: "As above, and encrypt exported files to a PGP public key.",
    Method.MANAGED_SFTP: "Create an account on our own managed SFTP server for the partner.",
    Method.MANAGED_SFTP_PGP_PRIVATE: "Use a managed SFTP account, decrypting imported files.",
    Method.MANAGED_SFTP_PGP_PUBLIC: "Use a managed SFTP account, encrypting exported files.",
}
COMPUTED = {
    "connection": [
        "host_key_fingerprint",
        "host_key_type",
        "host_key_pinned_at",
        "private_key_fingerprint",
        "last_test",
    ],
    "pgp": ["pgp_fingerprint", "pgp_user_id", "pgp_algorithm", "pgp_expires_at"],
}


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    form = PartnerForm
    list_display = ["name", "slug", "active", "authorization_count", "created_at"]
    list_filter = ["active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["pgp_fingerprint", "created_at", "updated_at"]

    @admin.display(description="authorizations")
    def authorization_count(self, obj: Partner) -> int:
        return obj.authorizations.count()


@admin.register(Authorization)
class AuthorizationAdmin(admin.ModelAdmin):
    list_display = [
        "label",
        "partner",
        "method",
        "endpoint",
        "credentials",
        "pinned_key",
        "last_test_status",
        "updated_at",
    ]
    list_filter = ["partner", "method", "last_test_ok", "active"]
    # Never a secret column: search must not become an oracle for stored secrets.
    search_fields = ["label", "description", "host", "username", "partner__name"]
    list_select_related = ["partner", "managed_account"]
    actions = ["test_connection_action"]
    change_form_template = "admin/authorizations/authorization/change_form.html"

    # -- method-dependent form ----------------------------------------------------------
    def _method(self, request: HttpRequest, obj: Authorization | None) -> str | None:
        if obj is not None:
            return obj.method
        method = request.GET.get("method") or request.POST.get("method")
        return method if method in METHOD_FIELDS else None

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context=None):
        if self._method(request, None) is None:
            return self._choose_method(request)
        method = self._method(request, None)
        extra_context = {**(extra_context or {}), "method_label": Method(method).label}
        return super().add_view(request, form_url, extra_context)

    def _choose_method(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        query = request.GET.copy()
        choices = []
        for method in Method:
            query["method"] = method.value
            choices.append((method.label, METHOD_HELP[method], f"?{query.urlencode()}"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Add authorization: choose a method",
            "choices": choices,
        }
        return TemplateResponse(
            request, "admin/authorizations/authorization/choose_method.html", context
        )

    def get_form(self, request: HttpRequest, obj: Authorization | None = None, change=False, **kw):
        method = self._method(request, obj)
        form = form_for_method(method)
        kw["form"] = form
        # The method's own fields; not flatten_fieldsets(), which would also name the
        # form-only "clear_*" checkboxes and the read-only computed columns.
        kw["fields"] = [
            f for f in form.Meta.fields if f not in self.get_readonly_fields(request, obj)
        ]
        return super().get_form(request, obj, change, **kw)

    def get_fieldsets(self, request: HttpRequest, obj: Authorization | None = None):
        method = self._method(request, obj)
        own = list(METHOD_FIELDS[method])
        pgp = [f for f in own if f.startswith("pgp_")]
        connection = [f for f in own if f not in pgp]
        if obj is not None and not self.has_change_permission(request, obj):
            # Read-only pages render values as text: show secrets masked, never as they are.
            pgp, connection = self._masked(pgp), self._masked(connection)
        else:
            pgp, connection = self._with_clear(obj, pgp), self._with_clear(obj, connection)
        general = ["partner", "label", "description"] + (["method"] if obj else [])
        sets: list[tuple[str | None, dict[str, Any]]] = [(None, {"fields": general})]
        title = "Account" if method == Method.MANAGED_SFTP else "Connection"
        sets.append((title, {"fields": connection}))
        if method == Method.MANAGED_SFTP:
            sets.append(
                ("Limits", {"fields": ["active", "expires_at", "max_sessions", "quota_bytes"]})
            )
        if pgp:
            sets.append(("PGP", {"fields": pgp}))
        if obj is not None and method != Method.MANAGED_SFTP:
            computed = COMPUTED["connection"]
            if method in PGP_PRIVATE_METHODS | PGP_PUBLIC_METHODS:
                computed = computed + COMPUTED["pgp"]
            sets.append(("Computed by the system", {"fields": computed}))
        if obj is not None and method == Method.MANAGED_SFTP:
            sets.append(
                (
                    "Computed by the system",
                    {"fields": ["password_set", "server_address", "created_at"]},
                )
            )
        return sets

    @staticmethod
    def _with_clear(obj: Authorization | None, names: list[str]) -> list[str]:
        """Put each "remove the stored value" checkbox (see AuthorizationForm) after its field."""
        out = []
        for name in names:
            out.append(name)
            if obj is not None and name in SECRET_FIELDS and getattr(obj, name, ""):
                out.append(f"clear_{name}")
        return out

    @staticmethod
    def _masked(names: list[str]) -> list[str]:
        return [f"{name}_masked" if name in SECRET_FIELDS else name for name in names]

    def get_readonly_fields(self, request: HttpRequest, obj: Authorization | None = None):
        computed = [
            *(f"{name}_masked" for name in SECRET_FIELDS),
            *COMPUTED["connection"],
            *COMPUTED["pgp"],
            "password_set",
            "server_address",
            "created_at",
        ]
        return (["method"] if obj else []) + computed

    def save_model(self, request: HttpRequest, obj: Authorization, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        for warning in obj.validation_warnings:
            messages.warning(request, warning)

    # -- computed columns ------------------------------------------------------------
    @admin.display(description="endpoint")
    def endpoint(self, obj: Authorization) -> str:
        if obj.is_managed_account:
            return f"managed: {obj.username}"
        return f"{obj.effective_username()}@{obj.effective_host()}:{obj.effective_port()}"

    @admin.display(description="credentials")
    def credentials(self, obj: Authorization) -> str:
        # Presence only, read from the raw column: listing never decrypts a secret.
        raw = obj.__dict__
        parts = []
        if raw.get("password") or obj.password_hash:
            parts.append("password ••••")
        if raw.get("private_key"):
            parts.append("key ••••")
        if obj.public_keys:
            parts.append(f"{len(obj.public_keys.splitlines())} public key(s)")
        return ", ".join(parts) or "—"

    def _mask(self, obj: Authorization, name: str) -> str:
        # The raw column (a token or ""): whether a value is set, without decrypting it.
        return "•••••• (stored)" if obj.__dict__.get(name) else "—"

    @admin.display(description="password")
    def password_masked(self, obj: Authorization) -> str:
        if obj.is_managed_account:
            return self.password_set(obj)
        return self._mask(obj, "password")

    @admin.display(description="private key")
    def private_key_masked(self, obj: Authorization) -> str:
        return self._mask(obj, "private_key")

    @admin.display(description="passphrase")
    def passphrase_masked(self, obj: Authorization) -> str:
        return self._mask(obj, "passphrase")

    @admin.display(description="PGP private key")
    def pgp_private_key_masked(self, obj: Authorization) -> str:
        return self._mask(obj, "pgp_private_key")

    @admin.display(description="PGP private key passphrase")
    def pgp_passphrase_masked(self, obj: Authorization) -> str:
        return self._mask(obj, "pgp_passphrase")

    @admin.display(description="host key")
    def pinned_key(self, obj: Authorization) -> str:
        return obj.host_key_fingerprint[:20] + "…" if obj.host_key_fingerprint else "—"

    @admin.display(description="last test", boolean=True)
    def last_test_status(self, obj: Authorization) -> bool | None:
        return obj.last_test_ok

    @admin.display(description="last test")
    def last_test(self, obj: Authorization) -> str:
        if obj.last_tested_at is None:
            return "never"
        status = "OK" if obj.last_test_ok else "FAILED"
        return f"{status} at {obj.last_tested_at:%Y-%m-%d %H:%M:%S} UTC — {obj.last_test_message}"

    @admin.display(description="password set")
    def password_set(self, obj: Authorization) -> str:
        return "yes (stored as a hash)" if obj.password_hash else "no"

    @admin.display(description="server")
    def server_address(self, obj: Authorization) -> str:
        from django.conf import settings

        from sftpd.hostkey import host_key_fingerprint

        fingerprint = host_key_fingerprint() or "not known yet (start runsftpd once)"
        return (
            f"sftp -P {settings.MANAGED_SFTP_PORT} {obj.username}@{settings.MANAGED_SFTP_HOST}"
            f" — host key {fingerprint}"
        )

    # -- test connection / host key pin ------------------------------------------------
    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/test-connection/",
                wrap(self.test_connection_view),
                name="authorizations_authorization_test_connection",
            ),
            path(
                "<path:object_id>/clear-host-key/",
                wrap(self.clear_host_key_view),
                name="authorizations_authorization_clear_host_key",
            ),
            path(
                "<path:object_id>/generate-ssh-key/",
                wrap(self.generate_ssh_key_view),
                name="authorizations_authorization_generate_ssh_key",
            ),
            *super().get_urls(),
        ]

    def _object_for_post(self, request: HttpRequest, object_id: str) -> Authorization:
        if request.method != "POST":
            raise PermissionDenied("Use the button on the authorization page.")
        obj = get_object_or_404(Authorization, pk=object_id)
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def _change_url(self, obj: Authorization) -> str:
        return reverse("admin:authorizations_authorization_change", args=[obj.pk])

    def test_connection_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._object_for_post(request, object_id)
        self._report_test(request, obj)
        return HttpResponseRedirect(self._change_url(obj))

    def clear_host_key_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._object_for_post(request, object_id)
        services.clear_host_key_pin(obj)
        messages.warning(
            request,
            "Host key pin cleared. The next successful connection pins the key the server "
            "offers then: check its fingerprint with the partner.",
        )
        return HttpResponseRedirect(self._change_url(obj))

    def generate_ssh_key_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Generate a key pair for a managed account; the response is the only copy.

        The public half is installed on the account; the private half is encrypted to the
        partner's PGP public key and sent back as this one download. Nothing else keeps it.
        """
        from sftpd.onboarding import OnboardingError, generate_account_keypair

        obj = self._object_for_post(request, object_id)
        kind = request.POST.get("kind", "ed25519")
        if kind not in ("ed25519", "rsa4096") or not obj.is_managed_account:
            raise PermissionDenied("Choose Ed25519 or RSA 4096 for a managed account.")
        try:
            armored = generate_account_keypair(obj, kind)
        except OnboardingError as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(self._change_url(obj))
        response = HttpResponse(armored, content_type="application/pgp-encrypted")
        filename = f"{obj.username}-ssh-{kind}-key.asc"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "no-store"
        return response

    # Connecting pins host keys and records results: a change, not a view.
    @admin.action(description="Test connection", permissions=["change"])
    def test_connection_action(self, request: HttpRequest, queryset) -> None:
        for obj in queryset.select_related("partner", "managed_account"):
            self._report_test(request, obj)

    def _report_test(self, request: HttpRequest, obj: Authorization) -> None:
        if not obj.connects_out:
            messages.info(request, f"{obj.label}: a managed account has nothing to connect to.")
            return
        report = services.run_connection_test(obj)
        level = messages.SUCCESS if report.ok else messages.ERROR
        messages.add_message(request, level, format_html("{}: {}", obj.label, report.message))


# The API client admin lives in its own module (one-time secret display, rotation).
from authorizations import admin_apiclients  # noqa: E402, F401
