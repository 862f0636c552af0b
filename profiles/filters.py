"""Audience conditions: validation and translation to a Django Q over JSON attributes."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Q

OPERATORS = ("eq", "ne", "in", "contains", "exists", "gt", "gte", "lt", "lte")
_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def validate_conditions(conditions: Any) -> list[dict[str, Any]]:
    """Return the normalised list, or raise ValidationError naming each bad condition."""
    if conditions in (None, ""):
        return []
    if not isinstance(conditions, list):
        raise ValidationError("Conditions must be a list of objects.")
    problems, clean = [], []
    for number, cond in enumerate(conditions, start=1):
        try:
            clean.append(_validate_one(cond))
        except ValueError as exc:
            problems.append(f"condition {number}: {exc}")
    if problems:
        raise ValidationError(problems)
    return clean


def _validate_one(cond: Any) -> dict[str, Any]:
    if not isinstance(cond, dict):
        raise ValueError('must be an object like {"field": "country", "op": "eq", "value": "FR"}')
    field, op = cond.get("field"), cond.get("op")
    if not isinstance(field, str) or not _FIELD.match(field):
        raise ValueError("'field' must be an attribute name (letters, digits, _ . -)")
    if op not in OPERATORS:
        raise ValueError(f"'op' must be one of {', '.join(OPERATORS)}")
    if op == "exists":
        value = cond.get("value", True)
        if not isinstance(value, bool):
            raise ValueError("'exists' takes true or false")
        return {"field": field, "op": op, "value": value}
    if "value" not in cond:
        raise ValueError(f"'{op}' needs a 'value'")
    value = cond["value"]
    if op == "in" and (not isinstance(value, list) or not value):
        raise ValueError("'in' needs a non-empty list of values")
    if op in ("gt", "gte", "lt", "lte") and not isinstance(value, int | float | str):
        raise ValueError(f"'{op}' compares with a number or a string")
    if op == "contains" and not isinstance(value, str):
        raise ValueError("'contains' looks for a piece of text")
    return {"field": field, "op": op, "value": value}


def conditions_to_q(conditions: list[dict[str, Any]]) -> Q:
    q = Q()
    for cond in conditions:
        q &= _condition_q(cond)
    return q


def _condition_q(cond: dict[str, Any]) -> Q:
    key = f"attributes__{cond['field']}"
    op, value = cond["op"], cond["value"]
    if op == "exists":
        has = Q(attributes__has_key=cond["field"])
        return has if value else ~has
    if op == "eq":
        return Q(**{key: value})
    if op == "ne":
        return ~Q(**{key: value}) | ~Q(attributes__has_key=cond["field"])
    if op == "in":
        return Q(**{f"{key}__in": value})
    if op == "contains":
        return Q(**{f"{key}__icontains": value})
    return Q(**{f"{key}__{op}": value})
