"""Serializers of the partner API.

Authorizations are validated by the model (`Authorization.full_clean()`), the same code
path as the admin: the serializer only converts types, applies the changes to an instance
and maps the model's per-field errors to DRF's 400 field errors. Secrets are write-only:
no response ever contains one, and a blank secret on update keeps the stored value
(``null`` removes it).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from rest_framework import serializers

from api.exceptions import validation_error
from authorizations.models import CLIENT_METHODS, SECRET_FIELDS, Authorization, Method
from lyticsops.netutil import non_public_addresses

READ_ONLY = [
    "id",
    "active",
    "expires_at",
    "max_sessions",
    "quota_bytes",
    "host_key_fingerprint",
    "host_key_type",
    "host_key_pinned_at",
    "private_key_fingerprint",
    "pgp_fingerprint",
    "pgp_user_id",
    "pgp_algorithm",
    "pgp_expires_at",
    "last_tested_at",
    "last_test_ok",
    "last_test_message",
    "created_at",
    "updated_at",
]
SECRET_SET_FIELDS = [f"{name}_set" for name in SECRET_FIELDS]


def secret_field(help_text: str) -> serializers.CharField:
    return serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        allow_null=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text=help_text + " Write-only. On update: blank keeps the stored value, "
        "null removes it.",
    )


class AuthorizationSerializer(serializers.ModelSerializer):
    password = secret_field(
        "SFTP password; for a managed_sftp account, the account's password (stored hashed)."
    )
    private_key = secret_field("SSH private key (OpenSSH or PEM).")
    passphrase = secret_field("Passphrase of the private key.")
    pgp_private_key = secret_field("ASCII-armoured PGP private key.")
    pgp_passphrase = secret_field("Passphrase of the PGP private key.")
    allowed_ips = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="managed_sftp: addresses or CIDR networks allowed to connect; [] allows any.",
    )
    managed_account = serializers.PrimaryKeyRelatedField(
        queryset=Authorization.objects.none(),
        required=False,
        allow_null=True,
        help_text="managed_sftp_pgp_*: id of one of your managed_sftp authorizations.",
    )
    password_set = serializers.SerializerMethodField()
    private_key_set = serializers.SerializerMethodField()
    passphrase_set = serializers.SerializerMethodField()
    pgp_private_key_set = serializers.SerializerMethodField()
    pgp_passphrase_set = serializers.SerializerMethodField()
    warnings = serializers.SerializerMethodField(
        help_text="Non-fatal notes about the values just written (create/update only)."
    )

    class Meta:
        model = Authorization
        fields = [
            "id",
            "label",
            "description",
            "method",
            "host",
            "port",
            "username",
            "password",
            "private_key",
            "passphrase",
            "folder",
            "pgp_private_key",
            "pgp_passphrase",
            "pgp_public_key",
            "public_keys",
            "allowed_ips",
            "managed_account",
            *[name for name in READ_ONLY if name != "id"],
            *SECRET_SET_FIELDS,
            "warnings",
        ]
        read_only_fields = READ_ONLY
        validators: list = []  # the model validates (constraints included) in full_clean()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        partner = self.context.get("partner")
        if partner is not None:
            self.fields["managed_account"].queryset = Authorization.objects.filter(
                partner=partner, method=Method.MANAGED_SFTP
            )

    # -- output ---------------------------------------------------------------------------
    @staticmethod
    def _stored(obj: Authorization, name: str) -> bool:
        # The raw column: knowing that a secret is set must not decrypt it.
        return bool(obj.__dict__.get(name))

    def get_password_set(self, obj: Authorization) -> bool:
        if obj.method == Method.MANAGED_SFTP:
            return bool(obj.password_hash)
        return self._stored(obj, "password")

    def get_private_key_set(self, obj: Authorization) -> bool:
        return self._stored(obj, "private_key")

    def get_passphrase_set(self, obj: Authorization) -> bool:
        return self._stored(obj, "passphrase")

    def get_pgp_private_key_set(self, obj: Authorization) -> bool:
        return self._stored(obj, "pgp_private_key")

    def get_pgp_passphrase_set(self, obj: Authorization) -> bool:
        return self._stored(obj, "pgp_passphrase")

    def get_warnings(self, obj: Authorization) -> list[str]:
        return list(getattr(obj, "validation_warnings", []))

    # -- input: one validation path with the admin ----------------------------------------
    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance = self.instance or Authorization(partner=self.context["partner"])
        method = attrs.get("method", instance.method)
        if self.instance is not None and method != self.instance.method:
            raise serializers.ValidationError(
                {"method": ["The method cannot be changed; create a new authorization."]}
            )
        instance.method = method
        self._apply_secrets(instance, attrs)
        for name, value in attrs.items():
            if name not in SECRET_FIELDS:
                setattr(instance, name, value)
        try:
            instance.full_clean()
            self._refuse_internal_host(instance)
        except DjangoValidationError as exc:
            raise validation_error(exc) from None
        self._prepared = instance
        return attrs

    @staticmethod
    def _refuse_internal_host(instance: Authorization) -> None:
        """Partners may not point our workers at our own network.

        Otherwise a partner could use import runs (and their error messages) to probe
        internal addresses, or our managed SFTP server from the workers' address. Staff
        can still set such a host in the admin. A name that does not resolve here cannot
        be judged now; sftp.connect refuses nothing, so DNS rebinding stays possible.
        """
        if settings.API_ALLOW_INTERNAL_HOSTS or instance.method not in CLIENT_METHODS:
            return
        internal = non_public_addresses(instance.host, instance.port)
        if internal:
            raise DjangoValidationError(
                {
                    "host": DjangoValidationError(
                        "This host is not a public address; ask us to set up internal hosts.",
                        code="internal_host",
                    )
                }
            )

    @staticmethod
    def _apply_secrets(instance: Authorization, attrs: dict[str, Any]) -> None:
        managed = instance.method == Method.MANAGED_SFTP
        for name in SECRET_FIELDS:
            if name not in attrs:
                continue
            value = attrs[name]
            if managed and name == "password":
                # A managed account keeps only a hash, set through the model (as the admin).
                if value is None:
                    raise serializers.ValidationError(
                        {"password": ["A managed account's password can be replaced, not removed."]}
                    )
                instance.set_account_password(value or None)
            elif value is None:
                setattr(instance, name, "")
            elif value != "":
                setattr(instance, name, value)

    def create(self, validated_data: dict[str, Any]) -> Authorization:
        return self._save()

    def update(self, instance: Authorization, validated_data: dict[str, Any]) -> Authorization:
        return self._save()

    def _save(self) -> Authorization:
        instance = self._prepared
        try:
            with transaction.atomic():
                instance.save()
        except IntegrityError as exc:  # lost a race with the same unique value
            raise serializers.ValidationError(
                {"non_field_errors": ["This conflicts with another authorization."]}
            ) from exc
        return instance


class PartnerSummarySerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()


class ClientSummarySerializer(serializers.Serializer):
    client_id = serializers.CharField()
    name = serializers.CharField()
    allowed_scopes = serializers.ListField(child=serializers.CharField())


class MeSerializer(serializers.Serializer):
    partner = PartnerSummarySerializer()
    client = ClientSummarySerializer()
    scopes = serializers.ListField(
        child=serializers.CharField(), help_text="The scopes of this token."
    )
    expires_at = serializers.DateTimeField(help_text="When this token stops working.")
    expires_in = serializers.IntegerField(help_text="Seconds left.")
