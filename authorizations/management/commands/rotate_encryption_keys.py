"""Re-encrypt every stored secret under the newest FIELD_ENCRYPTION_KEYS key.

Put the new key first in FIELD_ENCRYPTION_KEYS, keep the old ones after it, run this
command, then drop the old keys. Tokens are rotated without the plaintext leaving
cryptography's MultiFernet.rotate().
"""

from __future__ import annotations

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from authorizations import crypto
from authorizations.fields import Ciphertext, EncryptedTextField


def encrypted_fields() -> list[tuple[type, list[str]]]:
    found = []
    for model in apps.get_models():
        names = [
            f.attname for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)
        ]
        if names:
            found.append((model, names))
    return found


class Command(BaseCommand):
    help = "Re-encrypt every secret under the first key of FIELD_ENCRYPTION_KEYS."

    def handle(self, *args, **options) -> None:
        rotated, failures = 0, []
        for model, names in encrypted_fields():
            for pk in model._base_manager.values_list("pk", flat=True).iterator():
                try:
                    rotated += self._rotate_row(model, pk, names)
                except crypto.DecryptionError as exc:
                    failures.append(str(exc))
        self.stdout.write(f"Re-encrypted {rotated} value(s) under the newest key.")
        if failures:
            raise CommandError(
                f"{len(failures)} value(s) could not be decrypted and were left as they are:\n"
                + "\n".join(failures)
            )

    @staticmethod
    def _rotate_row(model: type, pk: object, names: list[str]) -> int:
        with transaction.atomic():
            # The raw tokens, as stored (from_db_value wraps them, nothing is decrypted).
            row = model._base_manager.select_for_update().filter(pk=pk).values(*names).first()
            if row is None:
                return 0
            label = f"{model.__name__} #{pk}"
            updates = {
                name: crypto.rotate(token, where=f"{label} .{name}")
                for name, token in row.items()
                if token
            }
            if updates:
                # QuerySet.update would encrypt again; write the tokens as they are.
                model._base_manager.filter(pk=pk).update(
                    **{name: Ciphertext(value) for name, value in updates.items()}
                )
            return len(updates)
