"""Partners, their SFTP/PGP authorizations, managed SFTP accounts and API clients."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from oauth2_provider.models import AbstractApplication

from authorizations import validation
from authorizations.fields import EncryptedTextField
from lyticsops.netutil import parse_cidrs


class Partner(models.Model):
    """An organisation we exchange data with; everything else belongs to one."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    active = models.BooleanField(default=True)
    pgp_public_key = models.TextField(
        blank=True,
        verbose_name="PGP public key",
        help_text="The partner's PGP public key (ASCII-armoured). Generated SSH keys for "
        "managed SFTP accounts are delivered encrypted to it.",
    )
    pgp_fingerprint = models.CharField(
        max_length=64, blank=True, editable=False, verbose_name="PGP fingerprint"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.pgp_fingerprint = ""
        if self.pgp_public_key.strip():
            from transfers import pgp

            try:
                info = pgp.inspect_public_key(self.pgp_public_key)
            except pgp.PgpError as exc:
                code = getattr(exc, "code", "pgp")
                if code == "private_given":
                    self.pgp_public_key = ""  # never keep a pasted private key
                error = ValidationError(str(exc), code=code)
                raise ValidationError({"pgp_public_key": error}) from exc
            self.pgp_fingerprint = info.fingerprint


class Method(models.TextChoices):
    SFTP_CLIENT = "sftp_client", "Client SFTP server"
    SFTP_CLIENT_PGP_PRIVATE = (
        "sftp_client_pgp_private",
        "Client SFTP server with PGP private key",
    )
    SFTP_CLIENT_PGP_PUBLIC = "sftp_client_pgp_public", "Client SFTP server with PGP public key"
    MANAGED_SFTP = "managed_sftp", "Managed SFTP server account"
    MANAGED_SFTP_PGP_PRIVATE = (
        "managed_sftp_pgp_private",
        "Managed SFTP server with PGP private key",
    )
    MANAGED_SFTP_PGP_PUBLIC = "managed_sftp_pgp_public", "Managed SFTP server with PGP public key"


CLIENT_METHODS = {
    Method.SFTP_CLIENT,
    Method.SFTP_CLIENT_PGP_PRIVATE,
    Method.SFTP_CLIENT_PGP_PUBLIC,
}
MANAGED_USE_METHODS = {Method.MANAGED_SFTP_PGP_PRIVATE, Method.MANAGED_SFTP_PGP_PUBLIC}
PGP_PRIVATE_METHODS = {Method.SFTP_CLIENT_PGP_PRIVATE, Method.MANAGED_SFTP_PGP_PRIVATE}
PGP_PUBLIC_METHODS = {Method.SFTP_CLIENT_PGP_PUBLIC, Method.MANAGED_SFTP_PGP_PUBLIC}
# Methods that connect out over SFTP with stored credentials (test connection, jobs).
CONNECTING_METHODS = CLIENT_METHODS | MANAGED_USE_METHODS

_CONNECTION = ["host", "port", "username", "password", "private_key", "passphrase"]
_MANAGED_LOGIN = ["managed_account", "password", "private_key", "passphrase"]
# The fields of each method, in the order the source documents list them.
METHOD_FIELDS: dict[str, list[str]] = {
    Method.SFTP_CLIENT: [*_CONNECTION, "folder"],
    Method.SFTP_CLIENT_PGP_PRIVATE: [*_CONNECTION, "pgp_private_key", "pgp_passphrase", "folder"],
    Method.SFTP_CLIENT_PGP_PUBLIC: [*_CONNECTION, "pgp_public_key", "folder"],
    Method.MANAGED_SFTP: ["username", "password", "public_keys", "allowed_ips"],
    Method.MANAGED_SFTP_PGP_PRIVATE: [
        *_MANAGED_LOGIN,
        "pgp_private_key",
        "pgp_passphrase",
        "folder",
    ],
    Method.MANAGED_SFTP_PGP_PUBLIC: [*_MANAGED_LOGIN, "pgp_public_key", "folder"],
}
SECRET_FIELDS = ("password", "private_key", "passphrase", "pgp_private_key", "pgp_passphrase")


class Authorization(models.Model):
    """How to reach a partner's files: one record per method (see `METHOD_FIELDS`)."""

    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="authorizations")
    label = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    method = models.CharField(max_length=32, choices=Method.choices)

    # Connection to a client SFTP server.
    host = models.CharField(
        max_length=255, blank=True, help_text="Host name or IP address of the SFTP server."
    )
    port = models.PositiveIntegerField(default=22, help_text="Usually 22.")
    username = models.CharField(max_length=64, blank=True)
    password = EncryptedTextField(
        blank=True,
        help_text="Leave empty to use only the private key. With both, the key is tried first.",
    )
    private_key = EncryptedTextField(
        blank=True,
        verbose_name="private key",
        help_text="SSH private key in OpenSSH format (BEGIN OPENSSH PRIVATE KEY) or PEM.",
    )
    passphrase = EncryptedTextField(blank=True, help_text="Passphrase of the private key, if any.")
    folder = models.CharField(
        max_length=1024,
        blank=True,
        help_text="Folder relative to the login directory; empty means the login directory.",
    )
    pgp_private_key = EncryptedTextField(
        blank=True,
        verbose_name="PGP private key",
        help_text="ASCII-armoured PGP private key used to decrypt the files we import.",
    )
    pgp_passphrase = EncryptedTextField(blank=True, verbose_name="PGP private key passphrase")
    pgp_public_key = models.TextField(
        blank=True,
        verbose_name="PGP public key",
        help_text="ASCII-armoured PGP public key used to encrypt the files we export.",
    )

    # Use of a managed SFTP account (methods 5 and 6).
    managed_account = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="used_by",
        limit_choices_to={"method": Method.MANAGED_SFTP},
        help_text="The managed SFTP account to log in as.",
    )

    # A managed SFTP account (method 4).
    password_hash = models.CharField(max_length=256, blank=True, editable=False)
    public_keys = models.TextField(
        blank=True,
        verbose_name="public keys",
        help_text="SSH public keys in OpenSSH format, one per line (ssh-ed25519 AAAA... comment).",
    )
    allowed_ips = models.JSONField(
        default=list,
        blank=True,
        verbose_name="allowed IPs",
        help_text="Addresses or CIDR networks allowed to connect; empty allows any address.",
    )
    active = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    max_sessions = models.PositiveIntegerField(
        default=5, help_text="Concurrent SFTP sessions allowed for a managed account."
    )
    quota_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="Storage quota of a managed account; empty: no quota."
    )

    # Computed by the system, shown read-only.
    host_key_fingerprint = models.CharField(max_length=128, blank=True, editable=False)
    host_key_type = models.CharField(max_length=64, blank=True, editable=False)
    host_key_pinned_at = models.DateTimeField(null=True, blank=True, editable=False)
    private_key_fingerprint = models.CharField(max_length=128, blank=True, editable=False)
    pgp_fingerprint = models.CharField(
        max_length=64, blank=True, editable=False, verbose_name="PGP fingerprint"
    )
    pgp_user_id = models.CharField(
        max_length=512, blank=True, editable=False, verbose_name="PGP user id"
    )
    pgp_algorithm = models.CharField(
        max_length=64, blank=True, editable=False, verbose_name="PGP algorithm"
    )
    pgp_expires_at = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name="PGP key expires"
    )
    last_tested_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_test_ok = models.BooleanField(null=True, editable=False)
    last_test_message = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["partner__name", "label"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(port__gte=1, port__lte=65535),
                name="authorization_port_1_to_65535",
            ),
            models.CheckConstraint(
                condition=models.Q(method__in=Method.values), name="authorization_method_known"
            ),
            models.UniqueConstraint(
                Lower("username"),
                condition=models.Q(method=Method.MANAGED_SFTP),
                name="managed_sftp_username_unique_ci",
                violation_error_message="This managed SFTP username is already taken.",
            ),
            models.CheckConstraint(
                condition=models.Q(managed_account__isnull=True)
                | models.Q(method__in=sorted(m.value for m in MANAGED_USE_METHODS)),
                name="authorization_managed_account_only_for_managed_use",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.get_method_display()})"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._new_account_password: str | None = None
        self.validation_warnings: list[str] = []

    # -- behaviour --------------------------------------------------------------------
    @property
    def is_managed_account(self) -> bool:
        return self.method == Method.MANAGED_SFTP

    @property
    def connects_out(self) -> bool:
        return self.method in CONNECTING_METHODS

    def set_account_password(self, raw: str | None) -> None:
        """Set a managed account's password; validated and hashed by `clean()`."""
        self._new_account_password = raw or None

    def check_account_password(self, raw: str) -> bool:
        return bool(self.password_hash) and check_password(raw, self.password_hash)

    def effective_host(self) -> str:
        return settings.MANAGED_SFTP_HOST if self.method in MANAGED_USE_METHODS else self.host

    def effective_port(self) -> int:
        return settings.MANAGED_SFTP_PORT if self.method in MANAGED_USE_METHODS else self.port

    def effective_username(self) -> str:
        if self.method in MANAGED_USE_METHODS and self.managed_account_id:
            return self.managed_account.username
        return self.username

    # -- validation ---------------------------------------------------------------------
    def clean(self) -> None:
        """Check the fields of this method; report every problem at once, on its field."""
        errors: dict[str, list[ValidationError]] = {}
        self.validation_warnings = []

        def check(field: str, func, *args):
            try:
                return func(*args)
            except ValidationError as exc:
                errors.setdefault(field, []).extend(exc.error_list)
                return None

        if self.method not in METHOD_FIELDS:
            raise ValidationError({"method": "Choose a method."})
        self._clear_fields_of_other_methods()
        if self.method in CLIENT_METHODS:
            self._clean_client_connection(check)
        elif self.method == Method.MANAGED_SFTP:
            self._clean_managed_account(check)
        else:
            self._clean_managed_use(check)
        if self.method in CONNECTING_METHODS:
            self.folder = check("folder", validation.validate_folder, self.folder) or ""
        if self.method in PGP_PRIVATE_METHODS:
            check("pgp_private_key", self._clean_pgp_private_key)
        if self.method in PGP_PUBLIC_METHODS:
            check("pgp_public_key", self._clean_pgp_public_key)
        if errors:
            raise ValidationError(errors)

    def _clear_fields_of_other_methods(self) -> None:
        """Blank what the method does not use, so no stale secret outlives a change."""
        used = set(METHOD_FIELDS[self.method])
        for name in (*SECRET_FIELDS, "host", "username", "folder", "pgp_public_key", "public_keys"):
            if name not in used and getattr(self, name):
                setattr(self, name, "")
        if "managed_account" not in used:
            self.managed_account = None
        if self.method != Method.MANAGED_SFTP:
            self.password_hash = ""
            self.allowed_ips = []
        if self.method not in CONNECTING_METHODS:
            self.host_key_fingerprint = self.host_key_type = ""
            self.host_key_pinned_at = None

    def _clean_client_connection(self, check) -> None:
        if not self.host.strip():
            check("host", _required, "Enter the host name or IP address of the SFTP server.")
        else:
            self.host = check("host", validation.validate_host, self.host) or self.host
        check("port", validation.validate_port, self.port)
        self.username = self.username.strip()
        if not self.username:
            check("username", _required, "Enter the username for the SFTP server.")
        self._clean_login_secrets(check)

    def _clean_login_secrets(self, check) -> None:
        if not self.password and not self.private_key:
            check("password", _required, "Give a password or a private key (or both).")
        self.private_key_fingerprint = ""
        if self.private_key:
            loaded = check("private_key", _load_private_key, self.private_key, self.passphrase)
            if loaded is not None:
                self.private_key_fingerprint = loaded.fingerprint
                self.validation_warnings.extend(loaded.warnings)
        elif self.passphrase:
            self.validation_warnings.append(
                "A passphrase was given without a private key; it is ignored."
            )
            self.passphrase = ""

    def _clean_managed_account(self, check) -> None:
        self.username = self.username.strip()
        if check("username", validation.validate_managed_username, self.username):
            check("username", self._check_username_kept)
            check("username", self._check_username_free)
        if self._new_account_password is not None:
            if check("password", validation.validate_managed_password, self._new_account_password):
                self.password_hash = make_password(self._new_account_password)
        keys = check("public_keys", _parse_public_keys, self.public_keys)
        if keys:
            self.public_keys = "\n".join(key.line for key in keys)
        # A typed password that was refused has its own error; this one is for none at all.
        typed = self._new_account_password is not None
        if not self.password_hash and not self.public_keys.strip() and not typed:
            check("password", _required, "Give a password or a public key (or both).")
        cidrs = check("allowed_ips", parse_cidrs, self.allowed_ips)
        if cidrs is not None:
            self.allowed_ips = cidrs

    def _check_username_kept(self) -> None:
        # The account's files live under its username on the managed server: a rename
        # would strand them and let another account take the old name and its files.
        if self.pk is None:
            return
        stored = Authorization.objects.filter(pk=self.pk).values_list("username", flat=True)
        if stored and stored[0] and stored[0] != self.username:
            raise ValidationError(
                "A managed account cannot be renamed: create a new account instead.",
                code="username_fixed",
            )

    def _check_username_free(self) -> None:
        # The constraint managed_sftp_username_unique_ci enforces this in the database;
        # checking here puts the message beside the field instead of at the top of the form.
        taken = Authorization.objects.filter(
            method=Method.MANAGED_SFTP, username__iexact=self.username
        ).exclude(pk=self.pk)
        if taken.exists():
            raise ValidationError("This username is already taken.", code="username_taken")

    def _clean_managed_use(self, check) -> None:
        if self.managed_account_id is None:
            check("managed_account", _required, "Choose the managed SFTP account to log in as.")
            return
        account = self.managed_account
        if self.partner_id and account.partner_id != self.partner_id:
            check("managed_account", _invalid, "This managed account belongs to another partner.")
            return
        self.username, self.host, self.port = account.username, "", 22
        self._clean_login_secrets(check)
        # Catch a typo now rather than at the first scheduled run.
        if self.password and not account.check_account_password(self.password):
            check("password", _invalid, "This is not the managed account's password.")
        if self.private_key_fingerprint:
            from transfers import sshkeys

            installed = {key.fingerprint for key in sshkeys.parse_public_keys(account.public_keys)}
            if self.private_key_fingerprint not in installed:
                check(
                    "private_key",
                    _invalid,
                    "The public half of this key is not installed on the managed account.",
                )

    def _clean_pgp_private_key(self) -> None:
        from transfers import pgp

        if not self.pgp_private_key.strip():
            raise ValidationError("Paste the PGP private key (ASCII-armoured).", code="missing")
        try:
            info = pgp.inspect_private_key(self.pgp_private_key, self.pgp_passphrase or None)
        except pgp.PgpError as exc:
            raise ValidationError(str(exc), code=getattr(exc, "code", "pgp")) from exc
        self._store_pgp_info(info)

    def _clean_pgp_public_key(self) -> None:
        from transfers import pgp

        if not self.pgp_public_key.strip():
            raise ValidationError("Paste the PGP public key (ASCII-armoured).", code="missing")
        try:
            info = pgp.inspect_public_key(self.pgp_public_key)
        except pgp.PgpKeyError as exc:
            if exc.code == "private_given":
                self.pgp_public_key = ""  # never keep a pasted private key, even unsaved
            raise ValidationError(str(exc), code=exc.code) from exc
        except pgp.PgpError as exc:
            raise ValidationError(str(exc), code="pgp") from exc
        self.pgp_public_key = self.pgp_public_key.strip() + "\n"
        self._store_pgp_info(info)

    def _store_pgp_info(self, info) -> None:
        self.pgp_fingerprint = info.fingerprint
        self.pgp_user_id = (info.user_ids[0] if info.user_ids else "")[:512]
        self.pgp_algorithm = info.algorithm[:64]
        self.pgp_expires_at = info.expires


def _required(message: str) -> None:
    # Not code="required": ModelForm would replace our message with its generic one.
    raise ValidationError(message, code="missing")


def _invalid(message: str) -> None:
    raise ValidationError(message, code="mismatch")


def _load_private_key(text: str, passphrase: str | None):
    from transfers import sshkeys

    try:
        return sshkeys.load_private_key(text, passphrase or None)
    except sshkeys.SshKeyError as exc:
        raise ValidationError(str(exc), code=exc.code) from exc


def _parse_public_keys(text: str):
    if not text.strip():
        return []
    from transfers import sshkeys

    try:
        return sshkeys.parse_public_keys(text)
    except sshkeys.SshKeyError as exc:
        raise ValidationError(str(exc), code=exc.code) from exc


class ApiClient(AbstractApplication):
    """An OAuth 2.0 client-credentials client that belongs to one partner.

    Swapped in for django-oauth-toolkit's Application (OAUTH2_PROVIDER_APPLICATION_MODEL);
    it must be created in this app's first migration, before oauth2_provider's.
    """

    partner = models.ForeignKey(
        Partner, on_delete=models.PROTECT, related_name="api_clients", null=True
    )
    allowed_ips = models.JSONField(
        default=list,
        blank=True,
        verbose_name="allowed IPs",
        help_text="Addresses or CIDR networks allowed to use this client; empty allows any.",
    )
    scopes = models.CharField(
        max_length=500, blank=True, help_text="Space-separated scopes this client may request."
    )
    active = models.BooleanField(
        default=True,
        help_text="Unticking revokes the client: its live tokens stop working at once.",
    )
    # The secret is stored hashed (api.hashers); this is all that can be shown again.
    secret_hint = models.CharField(max_length=16, blank=True, editable=False)
    secret_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta(AbstractApplication.Meta):
        swappable = "OAUTH2_PROVIDER_APPLICATION_MODEL"
        verbose_name = "API client"

    # -- API client behaviour (see api/ for the token endpoint and the REST API) ------------
    SECRET_HINT_LENGTH = 4

    @property
    def scope_list(self) -> list[str]:
        """The scopes this client may request that the server still knows, in order."""
        from oauth2_provider.settings import oauth2_settings

        known = oauth2_settings.SCOPES
        return [scope for scope in dict.fromkeys(self.scopes.split()) if scope in known]

    def clean(self) -> None:
        from oauth2_provider.settings import oauth2_settings

        errors: dict[str, list[str]] = {}
        try:
            super().clean()
        except ValidationError as exc:
            errors.update(exc.message_dict)
        if self.partner_id is None:
            errors.setdefault("partner", []).append("Choose the partner this client acts for.")
        requested = list(dict.fromkeys(self.scopes.split()))
        unknown = [s for s in requested if s not in oauth2_settings.SCOPES]
        if unknown:
            errors.setdefault("scopes", []).append("Unknown scope(s): " + ", ".join(unknown))
        self.scopes = " ".join(requested)
        try:
            self.allowed_ips = parse_cidrs(self.allowed_ips)
        except ValidationError as exc:
            errors.setdefault("allowed_ips", []).extend(exc.messages)
        if errors:
            raise ValidationError(errors)

    def set_new_secret(self) -> str:
        """Give the client a fresh random secret and return it: the only time it is readable.

        The field holds the plaintext until the next save, which hashes it (ClientSecretField).
        """
        from django.utils import timezone
        from oauth2_provider.generators import generate_client_secret

        secret = generate_client_secret()
        self.client_secret = secret
        self.hash_client_secret = True
        self.secret_hint = secret[: self.SECRET_HINT_LENGTH] + "…"
        self.secret_rotated_at = timezone.now()
        return secret

    def rotate_secret(self) -> str:
        """Replace the secret (the old one stops working) and revoke the tokens it obtained."""
        secret = self.set_new_secret()
        self.save()
        self.revoke_tokens()
        return secret

    def revoke_tokens(self) -> int:
        """Delete every token issued to this client; returns how many access tokens went."""
        from oauth2_provider.models import get_access_token_model, get_refresh_token_model

        get_refresh_token_model().objects.filter(application=self).delete()
        deleted, _ = get_access_token_model().objects.filter(application=self).delete()
        return deleted

    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        if not self.active:
            # Revoking a client revokes its tokens too; the API also checks `active` on
            # every request, so even a token that slips through stops working at once.
            self.revoke_tokens()
