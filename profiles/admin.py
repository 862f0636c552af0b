"""Admin for the profile store and audiences.

Profiles are written by imports: staff can find one by identity and read its attributes,
not edit them. Audiences are edited here: the conditions are JSON, checked on save with
the errors on the field; the page shows how many profiles match now and, as the
conditions are edited, how many would match (a small read-only preview endpoint).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from profiles.filters import conditions_to_q, validate_conditions
from profiles.models import Audience, Profile


def pretty_json(value: Any) -> str:
    """JSON for people: indented, unicode as is, in a <pre>."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return format_html('<pre class="json">{}</pre>', text)


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["identity", "attribute_count", "updated_at", "created_at"]
    search_fields = ["identity"]
    date_hierarchy = "updated_at"
    show_full_result_count = False  # COUNT(*) of a large store on every search: skip it
    fields = [
        "identity",
        "attributes_display",
        "attribute_times_display",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields

    def get_search_results(self, request, queryset, search_term):
        # An exact identity (an email, an id) is the common search: use the unique index
        # first, and fall back to Django's substring search only when it finds nothing.
        term = search_term.strip()
        if term and queryset.filter(identity=term).exists():
            return queryset.filter(identity=term), False
        return super().get_search_results(request, queryset, search_term)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # profiles come from imports

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="attributes")
    def attribute_count(self, obj: Profile) -> int:
        return len(obj.attributes or {})

    @admin.display(description="attributes")
    def attributes_display(self, obj: Profile) -> str:
        return pretty_json(obj.attributes)

    @admin.display(description="attribute times (from the imports' timestamp field)")
    def attribute_times_display(self, obj: Profile) -> str:
        return pretty_json(obj.attribute_times) if obj.attribute_times else "—"


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows the value indented."""

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)


class AudienceForm(forms.ModelForm):
    conditions = PrettyJSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 12, "cols": 80, "class": "vLargeTextField"}),
        help_text=Audience._meta.get_field("conditions").help_text,
    )

    class Meta:
        model = Audience
        fields = ["name", "slug", "description", "conditions", "partners"]

    def clean_conditions(self) -> list[dict[str, Any]]:
        value = self.cleaned_data.get("conditions")
        return [] if value in (None, "") else value


@admin.register(Audience)
class AudienceAdmin(admin.ModelAdmin):
    form = AudienceForm
    list_display = ["name", "slug", "condition_summary", "updated_at"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["partners"]
    list_filter = ["partners"]
    readonly_fields = ["member_count", "preview_count"]
    change_form_template = "admin/profiles/audience/change_form.html"
    fieldsets = [
        (None, {"fields": ["name", "slug", "description"]}),
        ("Who is in it", {"fields": ["conditions", "preview_count", "member_count"]}),
    ]

    @admin.display(description="conditions")
    def condition_summary(self, obj: Audience) -> str:
        if not obj.conditions:
            return "everyone"
        return " AND ".join(
            f"{c.get('field')} {c.get('op')} {json.dumps(c.get('value'), ensure_ascii=False)}"
            for c in obj.conditions
        )

    @admin.display(description="members now (saved conditions)")
    def member_count(self, obj: Audience) -> str:
        if obj.pk is None:
            return "—"
        return f"{obj.profiles().count():,} profile(s)"

    @admin.display(description="preview (conditions as edited)")
    def preview_count(self, obj: Audience) -> str:
        # Filled in by the page's script from the preview endpoint (see the template).
        return mark_safe('<span id="audience-preview">…</span>')  # a constant

    def get_urls(self):
        return [
            path(
                "preview-count/",
                self.admin_site.admin_view(self.preview_count_view),
                name="profiles_audience_preview_count",
            ),
            *super().get_urls(),
        ]

    def preview_count_view(self, request: HttpRequest) -> JsonResponse:
        """``?conditions=<JSON>`` → ``{"count": n}`` or ``{"errors": [...]}`` (read-only)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            raw = json.loads(request.GET.get("conditions") or "[]")
            conditions = validate_conditions(raw)
        except json.JSONDecodeError as exc:
            return JsonResponse({"errors": [f"Not valid JSON: {exc.msg} (line {exc.lineno})."]})
        except ValidationError as exc:
            return JsonResponse({"errors": exc.messages})
        count = Profile.objects.filter(conditions_to_q(conditions)).count()
        return JsonResponse({"count": count})
