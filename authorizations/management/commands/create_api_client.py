"""``manage.py create_api_client PARTNER_SLUG --scopes "a b" [--allowed-ips CIDR,...]``.

Prints ``{"client_id": ..., "client_secret": ...}`` once on stdout. The secret is stored
only as a hash: this is the only time it can be read.
"""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from authorizations.management.commands.create_partner import _describe
from authorizations.models import ApiClient, Partner


class Command(BaseCommand):
    help = "Create an OAuth client-credentials API client for a partner; prints id and secret."

    def add_arguments(self, parser) -> None:
        parser.add_argument("partner_slug")
        parser.add_argument(
            "--scopes", required=True, help='Space-separated scopes, e.g. "authorizations:read".'
        )
        parser.add_argument(
            "--allowed-ips", default="", help="Comma-separated CIDRs; empty allows any address."
        )
        parser.add_argument("--name", help="Default: '<partner slug> API client'.")

    def handle(
        self, *args, partner_slug: str, scopes: str, allowed_ips: str, name: str | None, **options
    ) -> None:
        partner = Partner.objects.filter(slug=partner_slug).first()
        if partner is None:
            raise CommandError(f"No partner with the slug '{partner_slug}'.")
        client = ApiClient(
            partner=partner,
            name=name or f"{partner.slug} API client",
            scopes=scopes,
            allowed_ips=allowed_ips,
            client_type=ApiClient.CLIENT_CONFIDENTIAL,
            authorization_grant_type=ApiClient.GRANT_CLIENT_CREDENTIALS,
        )
        secret = client.set_new_secret()
        try:
            client.full_clean()
        except ValidationError as exc:
            raise CommandError(_describe(exc)) from exc
        client.save()
        self.stdout.write(json.dumps({"client_id": client.client_id, "client_secret": secret}))
