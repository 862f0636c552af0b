"""Create the demo admin user and a little demo data (development only, idempotent)."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from authorizations.models import Authorization, Method, Partner
from lyticsops.envkeys import dev_secret

DEMO_ACCOUNT = "acme_drop"
DEMO_ACCOUNT_PASSWORD = "Demo-Drop-2026!"  # noqa: S105  (a demo value, printed on purpose)


class Command(BaseCommand):
    help = "Create a demo admin user and demo partner data (refused when DEBUG is off)."

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("seed_demo is for development: it refuses to run with DEBUG off.")
        username, password = self._admin_user()
        partner = self._partner()
        self._authorizations(partner)
        self._extra(partner)
        port = os.environ.get("PORT", "8000")
        self.stdout.write(
            self.style.SUCCESS(
                f"\nAdmin:    http://127.0.0.1:{port}/admin/\n"
                f"Username: {username}\nPassword: {password}\n"
                f"Demo managed SFTP login: sftp -P {settings.MANAGED_SFTP_PORT} "
                f"{DEMO_ACCOUNT}@127.0.0.1 (password {DEMO_ACCOUNT_PASSWORD})\n"
            )
        )

    def _admin_user(self) -> tuple[str, str]:
        username = "admin"
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or dev_secret(
            settings.VAR_DIR, "demo-admin-password", nbytes=12
        )
        user, _ = get_user_model().objects.get_or_create(
            username=username, defaults={"email": "admin@example.com"}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        return username, password

    def _partner(self) -> Partner:
        partner, _ = Partner.objects.get_or_create(slug="acme", defaults={"name": "Acme Retail"})
        return partner

    def _authorizations(self, partner: Partner) -> None:
        account = Authorization.objects.filter(
            method=Method.MANAGED_SFTP, username=DEMO_ACCOUNT
        ).first()
        if account is None:
            account = Authorization(
                partner=partner,
                label="Acme drop box (managed)",
                method=Method.MANAGED_SFTP,
                username=DEMO_ACCOUNT,
                allowed_ips=["127.0.0.0/8"],
            )
            account.set_account_password(DEMO_ACCOUNT_PASSWORD)
            account.full_clean()
            account.save()
        if not Authorization.objects.filter(partner=partner, method=Method.SFTP_CLIENT).exists():
            client = Authorization(
                partner=partner,
                label="Acme SFTP (demo: our managed server)",
                description="Points at the local managed SFTP server so Test connection works.",
                method=Method.SFTP_CLIENT,
                host=settings.MANAGED_SFTP_HOST,
                port=settings.MANAGED_SFTP_PORT,
                username=DEMO_ACCOUNT,
                password=DEMO_ACCOUNT_PASSWORD,
                folder="inbound",
            )
            client.full_clean()
            client.save()

    def _extra(self, partner: Partner) -> None:
        """Hook for later features (jobs, audiences) to add their demo objects."""
