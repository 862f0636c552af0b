"""profiles.store: the merge rules, on the portable path and (on PostgreSQL) the COPY path.

Both paths are compared with a pure-Python reference that applies records one at a time,
so "identical results on both databases" is checked on random histories, not just examples.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from django.db import connection

from profiles.models import Profile
from profiles.store import ProfileWriter, merge_attributes, upsert_profiles

pytestmark = pytest.mark.django_db

T1 = "2024-01-01T00:00:00.000000Z"
T2 = "2024-06-01T00:00:00.000000Z"
T3 = "2025-01-01T00:00:00.000000Z"


def methods() -> list[str]:
    return ["portable", "copy"] if connection.vendor == "postgresql" else ["portable"]


@pytest.fixture(params=["portable", "copy"])
def method(request: pytest.FixtureRequest) -> str:
    if request.param not in methods():
        pytest.skip("the COPY path needs PostgreSQL (set DATABASE_URL)")
    return request.param


def upsert(method: str, *records: tuple[str, dict[str, Any], str | None], **kw: Any) -> None:
    upsert_profiles(list(records), method=method, **kw)


def state() -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    return {p.identity: (p.attributes, p.attribute_times) for p in Profile.objects.all()}


# --------------------------------------------------------------------------- examples


def test_new_profiles_and_merge_without_time(method: str) -> None:
    upsert(method, ("a@x", {"name": "Ann", "city": "Paris"}, None))
    upsert(method, ("a@x", {"city": "Lyon", "age": "31"}, None), ("b@x", {"name": "Bob"}, None))
    assert state() == {
        "a@x": ({"name": "Ann", "city": "Lyon", "age": "31"}, {}),
        "b@x": ({"name": "Bob"}, {}),
    }


def test_older_record_never_overwrites_newer_but_adds_attributes(method: str) -> None:
    upsert(method, ("a@x", {"plan": "gold", "city": "Paris"}, T2))
    upsert(method, ("a@x", {"plan": "silver", "phone": "123"}, T1))  # an older file, late
    attributes, times = state()["a@x"]
    assert attributes == {"plan": "gold", "city": "Paris", "phone": "123"}
    assert times == {"plan": T2, "city": T2, "phone": T1}


def test_newer_record_overwrites_and_ties_go_to_the_later(method: str) -> None:
    upsert(method, ("a@x", {"plan": "gold"}, T2))
    upsert(method, ("a@x", {"plan": "platinum"}, T3))
    assert state()["a@x"] == ({"plan": "platinum"}, {"plan": T3})
    upsert(method, ("a@x", {"plan": "tie"}, T3))
    assert state()["a@x"] == ({"plan": "tie"}, {"plan": T3})


def test_untimed_write_wins_and_forgets_the_time(method: str) -> None:
    upsert(method, ("a@x", {"plan": "gold", "city": "Paris"}, T3))
    upsert(method, ("a@x", {"plan": "manual"}, None))
    assert state()["a@x"] == ({"plan": "manual", "city": "Paris"}, {"city": T3})
    upsert(method, ("a@x", {"plan": "old", "city": "Nice"}, T1))
    assert state()["a@x"] == ({"plan": "old", "city": "Paris"}, {"plan": T1, "city": T3})


def test_duplicate_identities_in_one_batch_last_wins(method: str) -> None:
    upsert(
        method,
        ("a@x", {"name": "first", "a": "1"}, None),
        ("a@x", {"name": "second", "b": "2"}, None),
        ("a@x", {"name": "last"}, None),
    )
    assert state()["a@x"] == ({"name": "last", "a": "1", "b": "2"}, {})


def test_duplicate_identities_with_times_keep_the_newest(method: str) -> None:
    upsert(
        method,
        ("a@x", {"plan": "new", "x": "1"}, T3),
        ("a@x", {"plan": "old", "y": "2"}, T1),
    )
    assert state()["a@x"] == ({"plan": "new", "x": "1", "y": "2"}, {"plan": T3, "x": T3, "y": T1})


def test_values_survive_the_round_trip(method: str) -> None:
    tricky = {
        "back\\slash": "a\\b\\\\c",
        "tab": "a\tb",
        "newline": "line1\nline2\r\n",
        "quote": 'say "hi"',
        "unicode": "Zoë 東京 🙂",
        "copy_marker": "\\.",
        "null": None,
        "number": 12.5,
        "big": 12345678901234567890,
        "bool": True,
        "nested": {"list": [1, "two", {"three": None}]},
        "empty": "",
    }
    identity = "weird\tid\\with\nstuff 🙂"
    upsert(method, (identity, dict(tricky), None))
    assert state() == {identity: (tricky, {})}


def test_created_at_kept_updated_at_moves(method: str) -> None:
    upsert(method, ("a@x", {"n": "1"}, None))
    before = Profile.objects.get()
    upsert(method, ("a@x", {"n": "2"}, None))
    after = Profile.objects.get()
    assert after.created_at == before.created_at
    assert after.updated_at >= before.updated_at
    assert after.attributes == {"n": "2"}


def test_batches_split_anywhere_give_the_same_result(method: str) -> None:
    records = [
        ("a", {"k": "1"}, T2),
        ("b", {"k": "1"}, T1),
        ("a", {"k": "2", "z": "z"}, T1),
        ("a", {"k": "3"}, T3),
        ("b", {"j": "x"}, T2),
    ]
    upsert(method, *records, batch_size=2)
    split = state()
    Profile.objects.all().delete()
    upsert(method, *records, batch_size=100)
    assert state() == split == reference(records)


def test_writer_counts_records_and_batches(method: str) -> None:
    writer = ProfileWriter(method=method, batch_size=2)
    for i in range(5):
        writer.add(f"id{i}", {"i": str(i)})
    writer.flush()
    assert writer.records == 5 and writer.batches == 3
    assert Profile.objects.count() == 5


def test_copy_path_refuses_other_databases() -> None:
    if connection.vendor == "postgresql":
        pytest.skip("only meaningful off PostgreSQL")
    with pytest.raises(ValueError, match="PostgreSQL"):
        ProfileWriter(method="copy")


# --------------------------------------------------------------------------- random histories


def reference(records: list[tuple[str, dict[str, Any], str | None]]) -> dict:
    """The rules applied one record at a time, in memory."""
    profiles: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
    for identity, attributes, time in records:
        current = profiles.setdefault(identity, ({}, {}))
        times = dict.fromkeys(attributes, time) if time else {}
        merge_attributes(current[0], current[1], attributes, times)
    return profiles


def random_history(seed: int) -> list[list[tuple[str, dict[str, Any], str | None]]]:
    """Several 'files' of records over a small pool of identities, keys and times."""
    rng = random.Random(seed)
    times = [None, T1, T2, T3, "2023-03-03T03:03:03.000003Z"]
    files = []
    for _ in range(rng.randint(2, 5)):
        timed = rng.random() < 0.6
        records = []
        for _ in range(rng.randint(1, 25)):
            keys = rng.sample(["a", "b", "c", "d", "e"], rng.randint(0, 4))
            attributes = {k: rng.choice(["x", "y", "", None, 1, "é\\"]) for k in keys}
            time = rng.choice(times[1:]) if timed else None
            records.append((f"id{rng.randint(1, 6)}", attributes, time))
        files.append(records)
    return files


@pytest.mark.parametrize("seed", range(12))
def test_random_histories_match_the_reference(method: str, seed: int) -> None:
    files = random_history(seed)
    for records in files:
        upsert(method, *records, batch_size=random.Random(seed).randint(1, 8))
    assert state() == reference([r for records in files for r in records])


# --------------------------------------------------------------------------- PostgreSQL pipeline


def test_database_error_in_the_background_writer_reaches_the_caller(method: str) -> None:
    from django.db import DataError, transaction

    if connection.vendor != "postgresql":
        pytest.skip("SQLite does not enforce the identity's length")
    too_long = "x" * 300  # the parsers refuse this; the database is the last line of defence
    with pytest.raises(DataError), transaction.atomic():
        with ProfileWriter(method=method, batch_size=2) as writer:
            writer.add("ok-1", {"a": "1"})
            writer.add("ok-2", {"a": "2"})  # batch 1 is sent
            writer.add(too_long, {"a": "3"})
    assert Profile.objects.count() == 0  # the whole transaction was rolled back


@pytest.mark.django_db(transaction=True)
def test_copy_path_works_outside_a_transaction() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the COPY path needs PostgreSQL (set DATABASE_URL)")
    assert not connection.in_atomic_block
    upsert_profiles(
        [("a@x", {"n": "1"}, None), ("b@x", {"n": "2"}, T1)], method="copy", batch_size=1
    )
    assert state() == {"a@x": ({"n": "1"}, {}), "b@x": ({"n": "2"}, {"n": T1})}
