"""``manage.py create_partner NAME [--slug SLUG]``: prints the partner as JSON."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from authorizations.models import Partner


class Command(BaseCommand):
    help = "Create a partner. The slug defaults to the slugified name."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("--slug", help="URL-safe identifier; default: slugify(NAME).")

    def handle(self, *args, name: str, slug: str | None, **options) -> None:
        slug = slug or slugify(name)
        if not slug:
            raise CommandError("Cannot make a slug from that name: pass --slug.")
        if Partner.objects.filter(slug=slug).exists():
            raise CommandError(f"A partner with the slug '{slug}' already exists.")
        partner = Partner(name=name.strip(), slug=slug)
        try:
            partner.full_clean()
        except ValidationError as exc:
            raise CommandError(_describe(exc)) from exc
        partner.save()
        self.stdout.write(json.dumps({"id": partner.pk, "name": partner.name, "slug": slug}))


def _describe(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{f}: {' '.join(m)}" for f, m in exc.message_dict.items())
    return " ".join(exc.messages)
