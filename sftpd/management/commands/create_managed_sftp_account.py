"""Create a managed SFTP account for a partner.

    python manage.py create_managed_sftp_account PARTNER_SLUG USERNAME \\
        [--password-stdin] [--public-key-file FILE] [--allowed-ips CIDR,...]

Validation is `Authorization.full_clean()`, the same rules as the admin and the API; each
problem is printed as ``field: message`` and the command exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.management.base import BaseCommand, CommandError

from authorizations.models import Authorization, Method, Partner


class Command(BaseCommand):
    help = "Create a managed SFTP account (login on our SFTP server) for a partner."
    stealth_options = ("stdin",)  # call_command(..., stdin=io.StringIO("pw\n")) in tests

    def add_arguments(self, parser) -> None:
        parser.add_argument("partner", help="Slug of the partner.")
        parser.add_argument("username", help="Login name (3-32 of a-z A-Z 0-9 _ -).")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from the first line of standard input "
            "(never from the command line, where other users could see it).",
        )
        parser.add_argument(
            "--public-key-file",
            type=Path,
            help="File of OpenSSH public keys, one per line (e.g. id_ed25519.pub).",
        )
        parser.add_argument(
            "--allowed-ips",
            default="",
            help="Comma-separated addresses or CIDR networks allowed to connect; "
            "empty: any address.",
        )

    def handle(self, *args, **options) -> None:
        partner = Partner.objects.filter(slug=options["partner"]).first()
        if partner is None:
            raise CommandError(f"No partner with slug {options['partner']!r}.")
        account = Authorization(
            method=Method.MANAGED_SFTP,
            partner=partner,
            label=f"Managed SFTP {options['username']}",
            username=options["username"],
        )
        if options["password_stdin"]:
            account.set_account_password(self._read_password(options))
        if options["public_key_file"] is not None:
            account.public_keys = self._read_keys(options["public_key_file"])
        account.allowed_ips = [c.strip() for c in options["allowed_ips"].split(",") if c.strip()]
        try:
            account.full_clean()
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                name = "account" if field == NON_FIELD_ERRORS else field
                for message in messages:
                    self.stderr.write(f"{name}: {message}")
            raise CommandError("The account was not created.", returncode=1) from None
        account.save()
        for warning in account.validation_warnings:
            self.stderr.write(f"warning: {warning}")
        self.stdout.write(
            f"Created managed SFTP account {account.username!r} (id {account.pk}) "
            f"for partner {partner.slug!r}."
        )

    @staticmethod
    def _read_password(options) -> str:
        stream = options.get("stdin") or sys.stdin
        line = stream.readline()
        if not line:
            raise CommandError("--password-stdin: standard input is empty.")
        return line.rstrip("\r\n")

    @staticmethod
    def _read_keys(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
