"""The profile store that imports fill and exports read, and audiences over it."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from profiles.filters import validate_conditions


class Profile(models.Model):
    """One person or entity, keyed by an identity value (an email, a user id...).

    ``attribute_times`` maps an attribute to the timestamp (ISO 8601, UTC) of the record
    that last set it, when the import named a timestamp field; it is what keeps an older
    file from overwriting a newer value when files arrive out of order.
    """

    identity = models.CharField(max_length=255, unique=True)
    attributes = models.JSONField(default=dict)
    attribute_times = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["identity"]

    def __str__(self) -> str:
        return self.identity


class Audience(models.Model):
    """A named filter over profile attributes: conditions joined by AND; none = everyone."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    conditions = models.JSONField(
        default=list,
        blank=True,
        help_text='A list of conditions joined by AND, e.g. [{"field": "country", "op": "eq", '
        '"value": "FR"}]. Operators: eq, ne, in, contains, exists, gt, gte, lt, lte.',
    )
    partners = models.ManyToManyField(
        "authorizations.Partner",
        blank=True,
        related_name="audiences",
        verbose_name="shared with",
        help_text="Partners that may export this audience through the API. Staff can export "
        "any audience; a partner sees only the audiences shared with it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        try:
            self.conditions = validate_conditions(self.conditions)
        except ValidationError as exc:
            raise ValidationError({"conditions": exc.messages}) from exc

    def profiles(self) -> models.QuerySet[Profile]:
        from profiles.filters import conditions_to_q

        return Profile.objects.filter(conditions_to_q(self.conditions))
