"""A model field whose value is encrypted in the database and decrypted only when read.

The column holds a Fernet token. Loading a row does not decrypt anything: the token is
wrapped in `Ciphertext` and decrypted on first attribute access, so the error of a value
no key opens can name the record and field (`Authorization #12 .password`), and list pages
that never touch a secret never decrypt one. Saving an untouched value writes the same
token back, so an unreadable secret does not make an unrelated edit fail.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from authorizations import crypto


class Ciphertext(str):
    """A token as stored; a distinct type so it is never mistaken for the plaintext."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<Ciphertext>"


class _DecryptingDescriptor:
    def __init__(self, field: EncryptedTextField) -> None:
        self.field = field

    def __get__(self, instance: models.Model | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        if self.field.attname not in instance.__dict__:  # deferred: load it like Django does
            instance.refresh_from_db(fields=[self.field.attname])
        value = instance.__dict__.get(self.field.attname)
        if isinstance(value, Ciphertext):
            where = f"{type(instance).__name__} #{instance.pk} .{self.field.name}"
            plaintext = crypto.decrypt(value, where=where)
            instance.__dict__[self.field.attname] = plaintext
            # Remember the token so that saving the unchanged value keeps it as it is.
            instance.__dict__.setdefault("_ciphertext_cache", {})[self.field.attname] = (
                plaintext,
                value,
            )
            value = plaintext
        return value

    def __set__(self, instance: models.Model, value: Any) -> None:
        instance.__dict__[self.field.attname] = value


class EncryptedTextField(models.TextField):
    """Text encrypted at rest. Empty string and NULL are stored as they are."""

    def contribute_to_class(self, cls: type[models.Model], name: str, **kwargs: Any) -> None:
        super().contribute_to_class(cls, name, **kwargs)
        setattr(cls, self.attname, _DecryptingDescriptor(self))

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        if not value:
            return value
        return Ciphertext(value)

    def get_prep_value(self, value: Any) -> Any:
        if value is None or value == "":
            return value
        if isinstance(value, Ciphertext):
            return str(value)
        return crypto.encrypt(str(value))

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        # Reuse the stored token when the plaintext was read but not changed, so that a
        # save does not rewrite (and re-randomise) every secret column.
        raw = model_instance.__dict__.get(self.attname)
        cached = model_instance.__dict__.get("_ciphertext_cache", {}).get(self.attname)
        if cached and cached[0] == raw and cached[1]:
            return cached[1]
        return raw

    def value_to_string(self, obj: models.Model) -> str:
        # Serialisation (dumpdata) must never write plaintext.
        raw = obj.__dict__.get(self.attname)
        return str(raw) if isinstance(raw, Ciphertext) else ""
