"""Admin forms. Secrets are write-only: never rendered back, blank keeps the stored value."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.text import capfirst

from authorizations.models import METHOD_FIELDS, SECRET_FIELDS, Authorization, Method, Partner
from lyticsops.netutil import parse_cidrs

KEEP_HINT = "A value is stored. Leave blank to keep it."


class SecretTextarea(forms.Textarea):
    """A textarea that never renders a value back into the page."""

    def format_value(self, value: Any) -> None:
        return None


def _lower_first(label: str) -> str:
    """Lower-case the first letter ("Password" -> "password"), but keep "PGP private key"."""
    return label if label[:2].isupper() else label[:1].lower() + label[1:]


def secret_field(model_field, *, multiline: bool) -> forms.CharField:
    widget = (
        SecretTextarea(attrs={"rows": 6, "cols": 70, "autocomplete": "off", "spellcheck": "false"})
        if multiline
        else forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
    )
    return forms.CharField(
        required=False,
        strip=False,
        widget=widget,
        label=capfirst(model_field.verbose_name),  # not capitalize(): "PGP", not "Pgp"
        help_text=model_field.help_text,
    )


class CidrListField(forms.CharField):
    """A list of CIDRs edited as text, one per line (commas work too)."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 40})

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, list | tuple):
            return "\n".join(value)
        return value or ""

    def to_python(self, value: Any) -> list[str]:
        return parse_cidrs(super().to_python(value))


class AuthorizationForm(forms.ModelForm):
    """Shows only the fields of one method; built per method by `form_for_method`."""

    method_value: str = ""

    class Meta:
        model = Authorization
        fields = ["partner", "label", "description"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in SECRET_FIELDS:
            if name in self.fields and getattr(self.instance, name, ""):
                self._offer_keep_and_clear(name)
        if "password" in self.fields and self.method_value == Method.MANAGED_SFTP:
            self.fields["password"].help_text = (
                "8 to 32 characters with an uppercase and a lowercase letter, a number and a "
                "special character. Stored only as a hash."
            )
            if self.instance.password_hash:
                self._offer_keep_and_clear("password", clearable=False)
        if "managed_account" in self.fields:
            self.fields["managed_account"].queryset = Authorization.objects.filter(
                method=Method.MANAGED_SFTP
            ).select_related("partner")

    def _offer_keep_and_clear(self, name: str, clearable: bool = True) -> None:
        field = self.fields[name]
        field.help_text = f"{KEEP_HINT} {field.help_text}".strip()
        field.widget.attrs["placeholder"] = "•••••• (stored)"
        if clearable:
            self.fields[f"clear_{name}"] = forms.BooleanField(
                required=False, label=f"Remove the stored {_lower_first(str(field.label))}"
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in SECRET_FIELDS:
            if name not in cleaned:
                continue
            if cleaned.pop(f"clear_{name}", False):
                cleaned[name] = ""
            elif not cleaned[name]:
                del cleaned[name]  # blank: construct_instance keeps the stored value
        if self.method_value == Method.MANAGED_SFTP:
            self.instance.set_account_password(cleaned.pop("password", None))
        return cleaned

    def _post_clean(self) -> None:
        self.instance.method = self.method_value
        super()._post_clean()
        forget_pasted_private_key(self, "pgp_public_key")


def forget_pasted_private_key(form: forms.ModelForm, field: str) -> None:
    """A private key pasted where a public key belongs must not be rendered back.

    The model refuses it (code ``private_given``); the bound form would still echo the
    posted text into the re-displayed page, so drop it from the form's data.
    """
    errors = form.errors.as_data().get(field, [])
    if any(error.code == "private_given" for error in errors):
        form.data = form.data.copy()
        form.data[form.add_prefix(field)] = ""


def form_for_method(method: str) -> type[AuthorizationForm]:
    """A form class with the common fields, then the method's fields in the seed's order."""
    names = list(METHOD_FIELDS[method])
    extra = ["active", "expires_at", "max_sessions", "quota_bytes"]
    if method == Method.MANAGED_SFTP:
        names += extra
    attrs: dict[str, Any] = {"method_value": method}
    for name in SECRET_FIELDS:
        if name in names:
            model_field = Authorization._meta.get_field(name)
            attrs[name] = secret_field(model_field, multiline=name.endswith("key"))
    if "allowed_ips" in names:
        attrs["allowed_ips"] = CidrListField(
            required=False,
            label="Allowed IPs",
            help_text=Authorization._meta.get_field("allowed_ips").help_text,
        )
    if "public_keys" in names:
        attrs["public_keys"] = forms.CharField(
            required=False,
            widget=forms.Textarea(attrs={"rows": 4, "cols": 70, "spellcheck": "false"}),
            help_text=Authorization._meta.get_field("public_keys").help_text,
        )
    meta = type(
        "Meta", (), {"model": Authorization, "fields": ["partner", "label", "description", *names]}
    )
    attrs["Meta"] = meta
    return type(f"{method.title().replace('_', '')}Form", (AuthorizationForm,), attrs)


class PartnerForm(forms.ModelForm):
    class Meta:
        model = Partner
        fields = ["name", "slug", "active", "pgp_public_key"]

    def _post_clean(self) -> None:
        super()._post_clean()
        forget_pasted_private_key(self, "pgp_public_key")
