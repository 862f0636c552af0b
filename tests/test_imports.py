"""Import runs end to end: a real OpenSSH sshd, real gpg, the profile store (SQLite or PG)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from authorizations.models import Authorization, Method
from profiles.models import Profile
from tests.support.imports import *  # noqa: F403 (fixtures)
from tests.support.imports import (
    ImportEnv,
    KeySet,
    csv_bytes,
    encrypt,
    gzip_bytes,
    sftp_key,
    zip_bytes,
)
from transfers.errors import ConfigError
from transfers.imports import run_import
from transfers.models import ImportedFile, ImportJob, Run
from transfers.runs import RunRecorder
from transfers.service import final_status
from transfers.sftp import SftpError

HEADER = ["email", "name", "city"]
ROWS = [["ann@x.org", "Ann", "Paris"], ["bob@x.org", "Bob", "Lyon"]]
EXPECTED = {
    "ann@x.org": {"name": "Ann", "city": "Paris"},
    "bob@x.org": {"name": "Bob", "city": "Lyon"},
}


def members_csv() -> bytes:
    return csv_bytes(ROWS, HEADER)


def failed(run: Run) -> list[dict[str, Any]]:
    return [f for f in run.skipped_files if f["failed"]]


def assert_failed_once(run: Run, name: str, *fragments: str) -> str:
    """The run failed exactly this file, with a message containing every fragment."""
    assert run.files_failed == 1 and run.files_imported == 0, run.skipped_files
    entry = failed(run)[0]
    assert entry["name"] == name
    for fragment in fragments:
        assert fragment in entry["reason"], entry["reason"]
    assert Profile.objects.count() == 0
    assert not ImportedFile.objects.exists()
    return entry["reason"]


# --------------------------------------------------------------------------- happy paths


def test_csv_import_counts_and_ledger(import_env: ImportEnv) -> None:
    import_env.put("members-1.csv", members_csv())
    import_env.put("other.csv", members_csv())  # does not match the pattern
    run = import_env.run()
    assert import_env.profiles() == EXPECTED
    assert (run.files_seen, run.files_imported, run.files_skipped, run.files_failed) == (1, 1, 0, 0)
    assert (run.rows_read, run.rows_upserted, run.rows_rejected) == (2, 2, 0)
    assert run.bytes_transferred == len(members_csv())
    ledger = ImportedFile.objects.get()
    assert (ledger.name, ledger.size, ledger.rows_upserted, ledger.run_id) == (
        "members-1.csv",
        len(members_csv()),
        2,
        run.pk,
    )
    assert len(ledger.sha256) == 64
    assert final_status(run) == (Run.Status.SUCCEEDED, "")
    assert "imported 'members-1.csv'" in run.log
    assert run.skipped_files == [] and run.rejected_rows == []
    # The first successful connection pinned the server's host key.
    import_env.authz.refresh_from_db()
    assert import_env.authz.host_key_fingerprint == import_env.server.host_key_fingerprint


def test_json_array_and_json_lines(import_env: ImportEnv) -> None:
    records = [{"email": "ann@x.org", "age": 31, "tags": ["a", "b"]}, {"email": "bob@x.org"}]
    import_env.put("members-1.json", json.dumps(records, indent=2).encode())
    lines = "\n".join(json.dumps(r) for r in [{"email": "cid@x.org", "vip": True}]) + "\n"
    import_env.put("members-2.jsonl", lines.encode())
    run = import_env.run()
    assert run.files_imported == 2 and run.rows_upserted == 3
    assert import_env.profiles() == {
        "ann@x.org": {"age": 31, "tags": ["a", "b"]},
        "bob@x.org": {},
        "cid@x.org": {"vip": True},
    }


def test_gzip_and_zip(import_env: ImportEnv) -> None:
    import_env.put("members-1.csv.gz", gzip_bytes(members_csv()))
    import_env.put(
        "members-2.zip",
        zip_bytes({"export/members.csv": csv_bytes([["cid@x.org", "Cid", "Nice"]], HEADER)}),
    )
    run = import_env.run()
    assert run.files_imported == 2, run.skipped_files
    assert set(import_env.profiles()) == {"ann@x.org", "bob@x.org", "cid@x.org"}
    assert "unwrapping gzip" in run.log and "unwrapping zip" in run.log


def test_pgp_encrypted_files(import_env: ImportEnv, gpg_keys: KeySet) -> None:
    import_env.use_pgp(gpg_keys.protected)
    import_env.put("members-1.csv.gz.pgp", encrypt(gzip_bytes(members_csv()), gpg_keys.protected))
    armoured = encrypt(csv_bytes([["cid@x.org", "Cid", "Nice"]], HEADER), gpg_keys.protected, True)
    import_env.put("members-2.csv.asc", armoured)
    # No PGP suffix at all: recognised by its packets.
    import_env.put(
        "members-3.csv",
        encrypt(csv_bytes([["dan@x.org", "Dan", "Metz"]], HEADER), gpg_keys.protected),
    )
    run = import_env.run()
    assert run.files_imported == 3, run.skipped_files
    assert set(import_env.profiles()) == {"ann@x.org", "bob@x.org", "cid@x.org", "dan@x.org"}
    assert "unwrapping pgp + gzip" in run.log


def test_csv_options_headerless_mapping_and_delimiter(import_env: ImportEnv) -> None:
    import_env.configure(
        csv_header=False,
        csv_delimiter=";",
        identity_field="1",
        field_mapping={"1": "email", "3": "town"},
    )
    import_env.put("members-1.csv", b"ann@x.org;Ann;Paris\nbob@x.org;Bob;Lyon\n")
    run = import_env.run()
    assert run.rows_upserted == 2
    assert import_env.profiles() == {"ann@x.org": {"town": "Paris"}, "bob@x.org": {"town": "Lyon"}}


def test_field_mapping_with_header(import_env: ImportEnv) -> None:
    import_env.configure(field_mapping={"E-mail": "email", "Town": "city"})
    import_env.put(
        "members-1.csv", csv_bytes([["ann@x.org", "Ann", "Paris"]], ["E-mail", "Name", "Town"])
    )
    import_env.run()
    assert import_env.profiles() == {"ann@x.org": {"city": "Paris"}}


def test_out_of_order_files_with_timestamp_field(import_env: ImportEnv) -> None:
    import_env.configure(timestamp_field="updated")
    header = ["email", "updated", "plan", "phone"]
    # The newer data arrives first (older mtime), the older data arrives later.
    import_env.put(
        "members-new.csv",
        csv_bytes([["ann@x.org", "2024-06-01T10:00:00+02:00", "gold", ""]], header),
    )
    import_env.put(
        "members-old.csv", csv_bytes([["ann@x.org", "1700000000", "silver", "555"]], header)
    )
    run = import_env.run()
    assert run.files_imported == 2
    profile = Profile.objects.get()
    assert profile.attributes["plan"] == "gold"  # the older file did not overwrite it
    assert profile.attributes["phone"] == ""  # the newer record's (empty) value stays
    assert profile.attribute_times["plan"] == "2024-06-01T08:00:00.000000Z"
    # Without a timestamp field the later-processed file wins.
    import_env.configure(timestamp_field="")
    import_env.put("members-later.csv", csv_bytes([["ann@x.org", "x", "bronze", "1"]], header))
    import_env.run()
    assert Profile.objects.get().attributes["plan"] == "bronze"


def test_out_of_order_adds_attributes_only_the_older_record_has(import_env: ImportEnv) -> None:
    import_env.configure(timestamp_field="ts", format="jsonl")
    import_env.put("members-1.jsonl", b'{"email": "a@x", "ts": 200, "plan": "gold"}\n')
    import_env.put("members-2.jsonl", b'{"email": "a@x", "ts": 100, "plan": "old", "fax": "1"}\n')
    import_env.run()
    assert Profile.objects.get().attributes == {"ts": 200, "plan": "gold", "fax": "1"}


# --------------------------------------------------------------------------- exactly once


def test_rerun_imports_nothing_and_same_content_is_skipped_by_hash(import_env: ImportEnv) -> None:
    import_env.put("members-1.csv", members_csv())
    first = import_env.run()
    assert first.files_imported == 1
    second = import_env.run()
    assert (second.files_seen, second.files_imported, second.files_skipped) == (1, 0, 1)
    assert "already imported" in second.log
    # The same bytes under another name: parsed, then rolled back at commit (same SHA-256).
    Profile.objects.update(attributes={})
    import_env.put("members-copy.csv", members_csv())
    third = import_env.run()
    assert third.files_imported == 0 and third.files_skipped == 2
    assert "same content as 'members-1.csv'" in json.dumps(third.skipped_files)
    assert third.rows_upserted == 0
    assert all(attrs == {} for attrs in import_env.profiles().values())  # rolled back
    duplicate = ImportedFile.objects.get(name="members-copy.csv")
    assert duplicate.duplicate_of.name == "members-1.csv"
    # ... and it is not downloaded again afterwards.
    fourth = import_env.run()
    assert fourth.bytes_transferred == 0 and fourth.files_skipped == 2


def test_changed_file_is_imported_again(import_env: ImportEnv) -> None:
    import_env.put("members-1.csv", members_csv())
    import_env.run()
    import_env.put("members-1.csv", csv_bytes([["ann@x.org", "Annie", "Rome"]], HEADER))
    run = import_env.run()
    assert run.files_imported == 1
    assert import_env.profiles()["ann@x.org"] == {"name": "Annie", "city": "Rome"}
    assert ImportedFile.objects.count() == 2


def test_retry_of_the_same_run_skips_what_it_imported(import_env: ImportEnv) -> None:
    import_env.put("members-1.csv", members_csv())
    job = import_env.job
    run = Run.objects.create(kind=Run.Kind.IMPORT, partner=import_env.partner, import_job=job)
    run_import(run)
    # The orchestrator resets the counters for the next attempt (after e.g. a lost connection).
    Run.objects.filter(pk=run.pk).update(files_seen=0, files_imported=0, rows_upserted=0)
    run.refresh_from_db()
    run_import(run)
    run.refresh_from_db()
    counts = (run.files_seen, run.files_imported, run.files_skipped, run.rows_upserted)
    assert counts == (1, 0, 1, 0)
    reason = "imported by an earlier attempt of this run"
    assert run.skipped_files == [{"name": "members-1.csv", "reason": reason, "failed": False}]
    assert Profile.objects.count() == 2


# --------------------------------------------------------------------------- incomplete files


def test_temporary_suffixes_are_left_for_next_run(import_env: ImportEnv) -> None:
    for name in ("members-1.csv.part", "members-2.csv.tmp", "members-3.csv.filepart"):
        import_env.put(name, members_csv())
    import_env.put(".members-4.csv", members_csv())  # hidden: an upload in progress on our sftpd
    run = import_env.run()
    assert run.files_imported == 0 and run.files_skipped == 3 and run.files_seen == 3
    assert all("still being uploaded" in f["reason"] for f in run.skipped_files)
    assert Profile.objects.count() == 0


def test_file_still_growing_is_left_for_next_run(import_env: ImportEnv, settings: Any) -> None:
    settings.IMPORT_STABILITY_SECONDS = 1.0
    path = import_env.put("members-1.csv", members_csv())
    import_env.put("members-2.csv", csv_bytes([["cid@x.org", "Cid", "Nice"]], HEADER))

    def append_later() -> None:
        time.sleep(0.4)
        with path.open("ab") as fh:
            fh.write(b"dan@x.org,Dan,Metz\n")

    writer = threading.Thread(target=append_later)
    writer.start()
    run = import_env.run()
    writer.join()
    assert run.files_imported == 1 and run.files_skipped == 1
    assert "still being written" in run.skipped_files[0]["reason"]
    settings.IMPORT_STABILITY_SECONDS = 0
    assert import_env.run().files_imported == 1  # complete now
    assert len(import_env.profiles()) == 4


# --------------------------------------------------------------------------- after import


def test_after_import_delete(import_env: ImportEnv) -> None:
    import_env.configure(after_import=ImportJob.AfterImport.DELETE)
    import_env.put("members-1.csv", members_csv())
    import_env.put("members-bad.csv", b"name\nx\n")  # fails: stays for a person to look at
    run = import_env.run()
    assert run.files_imported == 1 and run.files_failed == 1
    assert import_env.files() == ["members-bad.csv"]


def test_after_import_move_to_archive(import_env: ImportEnv) -> None:
    import_env.configure(after_import=ImportJob.AfterImport.MOVE, archive_folder="done/")
    import_env.put("members-1.csv", members_csv())
    import_env.run()
    assert import_env.files() == ["done/members-1.csv"]
    # A second file of the same name never overwrites the archived one.
    import_env.put("members-1.csv", csv_bytes([["cid@x.org", "Cid", "Nice"]], HEADER))
    import_env.run()
    files = import_env.files()
    assert len(files) == 2 and all(
        f.startswith("done/members-1-") or f == "done/members-1.csv" for f in files
    )


def test_after_import_action_left_over_by_a_crash_is_applied_next_run(
    import_env: ImportEnv,
) -> None:
    import_env.put("members-1.csv", members_csv())
    import_env.run()  # action "leave"
    import_env.configure(after_import=ImportJob.AfterImport.DELETE)
    run = import_env.run()  # e.g. the worker died between the commit and the delete
    assert run.files_imported == 0 and import_env.files() == []
    assert "left over from an earlier run" in run.log


def test_names_with_spaces_and_unicode(import_env: ImportEnv) -> None:
    import_env.configure(after_import=ImportJob.AfterImport.MOVE, archive_folder="archivé")
    import_env.put("members 2024 Zoë 東京.csv", members_csv())
    run = import_env.run()
    assert run.files_imported == 1
    assert import_env.files() == ["archivé/members 2024 Zoë 東京.csv"]
    assert ImportedFile.objects.get().name == "members 2024 Zoë 東京.csv"


# --------------------------------------------------------------------------- bad input


def test_wrong_pgp_key(import_env: ImportEnv, gpg_keys: KeySet) -> None:
    import_env.use_pgp(gpg_keys.plain)
    import_env.put("members-1.csv.pgp", encrypt(members_csv(), gpg_keys.other))
    run = import_env.run()
    assert_failed_once(run, "members-1.csv.pgp", "different key")
    assert import_env.files() == ["members-1.csv.pgp"]  # nothing lost
    assert final_status(run)[0] == Run.Status.FAILED


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_corrupt_or_truncated_pgp(import_env: ImportEnv, gpg_keys: KeySet, damage: str) -> None:
    import_env.use_pgp(gpg_keys.plain)
    rows = [[f"user{i}@x.org", f"User {i}", "Paris"] for i in range(20000)]
    data = bytearray(encrypt(csv_bytes(rows, HEADER), gpg_keys.plain))
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF  # plaintext before this point is emitted, then MDC fails
    else:
        del data[len(data) * 2 // 3 :]
    import_env.put("members-1.csv.gpg", bytes(data))
    run = import_env.run()
    assert_failed_once(run, "members-1.csv.gpg", "PGP decryption failed")
    assert run.rows_upserted == 0


def test_gpg_suffix_but_plain_content_is_rejected(import_env: ImportEnv, gpg_keys: KeySet) -> None:
    import_env.use_pgp(gpg_keys.plain)
    import_env.put("members-1.csv.gpg", members_csv())
    reason = assert_failed_once(run := import_env.run(), "members-1.csv.gpg", "not PGP data")
    assert "plain text" in reason and "ann@x.org" not in reason  # no data in messages
    assert run.error == ""  # per-file problem: the orchestrator sets run.error


def test_pgp_file_without_a_private_key(import_env: ImportEnv, gpg_keys: KeySet) -> None:
    import_env.put("members-1.csv.pgp", encrypt(members_csv(), gpg_keys.plain))
    assert_failed_once(import_env.run(), "members-1.csv.pgp", "no PGP private key")


def test_unusable_pgp_key_fails_the_run(import_env: ImportEnv, gpg_keys: KeySet) -> None:
    import_env.use_pgp(gpg_keys.protected)
    Authorization.objects.filter(pk=import_env.authz.pk).update(pgp_passphrase="wrong")
    import_env.authz.refresh_from_db()
    import_env.put("members-1.csv.pgp", encrypt(members_csv(), gpg_keys.protected))
    run = Run.objects.create(
        kind=Run.Kind.IMPORT, partner=import_env.partner, import_job=import_env.job
    )
    with pytest.raises(ConfigError, match="PGP private key"):
        run_import(run)
    assert Profile.objects.count() == 0


def test_ragged_rows_are_rejected_with_line_numbers(import_env: ImportEnv) -> None:
    data = (
        b"email,name,city\nann@x.org,Ann,Paris\nbob@x.org,Bob\n"
        b"cid@x.org,Cid,Nice,extra\ndan@x.org,Dan,Metz\n"
    )
    import_env.put("members-1.csv", data)
    run = import_env.run()
    assert (run.files_imported, run.rows_read, run.rows_upserted, run.rows_rejected) == (1, 4, 2, 2)
    assert run.rejected_rows == [
        {"file": "members-1.csv", "line": 3, "reason": "expected 3 fields, found 2"},
        {"file": "members-1.csv", "line": 4, "reason": "expected 3 fields, found 4"},
    ]
    assert set(import_env.profiles()) == {"ann@x.org", "dan@x.org"}
    assert final_status(run)[0] == Run.Status.PARTIAL


def test_bad_row_fails_the_file_when_the_job_says_so(import_env: ImportEnv) -> None:
    import_env.configure(on_error=ImportJob.OnError.FAIL)
    import_env.put("members-1.csv", b"email,name,city\nann@x.org,Ann,Paris\nbob@x.org,Bob\n")
    import_env.put("members-2.csv", csv_bytes([["cid@x.org", "Cid", "Nice"]], HEADER))
    run = import_env.run()
    assert run.files_failed == 1 and run.files_imported == 1
    assert "Line 3: expected 3 fields" in failed(run)[0]["reason"]
    assert set(import_env.profiles()) == {"cid@x.org"}  # ann was rolled back with her file
    assert run.rows_upserted == 1


def test_no_writer_thread_outlives_its_file(import_env: ImportEnv, settings: Any) -> None:
    settings.IMPORT_BATCH_SIZE = 2
    import_env.configure(on_error=ImportJob.OnError.FAIL)
    rows = [[f"u{i}@x.org", "n", "c"] for i in range(9)]
    import_env.put("members-1.csv", csv_bytes(rows, HEADER) + b"bad,row\n")  # fails late
    import_env.put("members-2.csv", csv_bytes(rows, HEADER))
    run = import_env.run()
    assert (run.files_failed, run.files_imported) == (1, 1)
    assert not [t for t in threading.enumerate() if t.name == "profile-upsert"]


def test_bad_encoding_is_reported_per_line(import_env: ImportEnv) -> None:
    data = "email,name\nann@x.org,Zoë\nbob@x.org,Ren\xe9e\n".encode("latin-1")
    import_env.put("members-1.csv", data)
    run = import_env.run()
    assert (run.rows_read, run.rows_upserted, run.rows_rejected) == (2, 0, 2)
    assert [r["line"] for r in run.rejected_rows] == [2, 3]
    assert "not valid utf-8" in run.rejected_rows[0]["reason"]
    assert "0xeb" in run.rejected_rows[0]["reason"]
    # With the right encoding configured, the same bytes import.
    ImportedFile.objects.all().delete()
    import_env.configure(csv_encoding="latin-1")
    import_env.run()
    assert import_env.profiles() == {"ann@x.org": {"name": "Zoë"}, "bob@x.org": {"name": "Renée"}}


def test_missing_identity_column(import_env: ImportEnv) -> None:
    import_env.put("members-1.csv", b"mail,name\nann@x.org,Ann\n")
    assert_failed_once(
        import_env.run(), "members-1.csv", "identity column 'email' is not in the header"
    )


def test_many_batches_with_duplicates_across_them(import_env: ImportEnv, settings: Any) -> None:
    settings.IMPORT_BATCH_SIZE = 3
    rows = [[f"u{i % 7}@x.org", f"name{i}", f"city{i}"] for i in range(40)]
    import_env.put("members-1.csv", csv_bytes(rows, HEADER))
    run = import_env.run()
    assert (run.rows_read, run.rows_upserted) == (40, 40)
    profiles = import_env.profiles()
    assert len(profiles) == 7
    assert profiles["u4@x.org"] == {"name": "name39", "city": "city39"}  # the last row of u4


def test_duplicate_identities_last_wins(import_env: ImportEnv) -> None:
    data = b"email,name,city\nann@x.org,Ann,Paris\nann@x.org,Anne,\nbob@x.org,Bob,Lyon\n"
    import_env.put("members-1.csv", data)
    import_env.run()
    assert import_env.profiles()["ann@x.org"] == {"name": "Anne", "city": ""}


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "the file is empty"), (b"email,name,city\n", "header but no rows")],
)
def test_empty_and_header_only_files(import_env: ImportEnv, data: bytes, message: str) -> None:
    import_env.put("members-1.csv", data)
    run = import_env.run()
    assert run.files_imported == 1 and run.rows_read == 0
    assert message in run.log
    assert ImportedFile.objects.get().rows_read == 0  # recorded: not tried again


def test_json_that_is_not_objects(import_env: ImportEnv) -> None:
    import_env.put("members-1.json", b'[{"email": "ann@x.org"}, 42, "text", [1], null]')
    import_env.put("members-2.json", b'{"email": "bob@x.org"}')
    run = import_env.run()
    assert run.rows_rejected == 4 and run.files_failed == 1
    reasons = [r["reason"] for r in run.rejected_rows]
    assert reasons[0] == "expected a JSON object, found a number"
    assert "not a JSON array" in failed(run)[0]["reason"]
    assert set(import_env.profiles()) == {"ann@x.org"}


def test_malformed_json_fails_the_file_with_a_line_number(import_env: ImportEnv) -> None:
    import_env.put("members-1.json", b'[\n{"email": "ann@x.org"},\n{"email": oops}\n]')
    assert_failed_once(import_env.run(), "members-1.json", "Malformed JSON at line 3")


def test_zip_with_several_members(import_env: ImportEnv) -> None:
    import_env.put("members-1.zip", zip_bytes({"a.csv": members_csv(), "b.csv": members_csv()}))
    assert_failed_once(import_env.run(), "members-1.zip", "exactly one file", "'a.csv', 'b.csv'")


@pytest.mark.parametrize("member", ["../../etc/evil.csv", "/abs/evil.csv", "C:\\evil.csv"])
def test_zip_with_unsafe_member_name(import_env: ImportEnv, member: str) -> None:
    import_env.put("members-1.zip", zip_bytes({member: members_csv()}))
    assert_failed_once(import_env.run(), "members-1.zip", "unsafe path")


def test_decompression_bomb_stops_at_the_size_limit(import_env: ImportEnv, settings: Any) -> None:
    settings.IMPORT_MAX_DECOMPRESSED_BYTES = 2 * 1024 * 1024
    bomb = gzip.compress(b"email,name\n" + b"0" * (50 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 100 * 1024
    import_env.put("members-1.csv.gz", bomb)
    reason = assert_failed_once(import_env.run(), "members-1.csv.gz", "decompression bomb")
    assert "more than 2097152 bytes" in reason


def test_zip_larger_than_the_limit_is_not_spooled_to_disk(
    import_env: ImportEnv, settings: Any
) -> None:
    settings.IMPORT_MAX_DECOMPRESSED_BYTES = 64 * 1024
    stored = zip_bytes({"m.csv": b"email\n" + os.urandom(200 * 1024).hex().encode()})
    import_env.put("members-1.zip", stored)
    assert_failed_once(import_env.run(), "members-1.zip", "larger than the import limit")


def test_decompression_bomb_stops_at_the_ratio_limit(import_env: ImportEnv, settings: Any) -> None:
    settings.IMPORT_RATIO_CHECK_AFTER_BYTES = 1024 * 1024
    settings.IMPORT_MAX_COMPRESSION_RATIO = 100
    import_env.put("members-1.zip", zip_bytes({"m.csv": b"email\n" + b"a" * (20 * 1024 * 1024)}))
    assert_failed_once(import_env.run(), "members-1.zip", "expands more than 100 times")


def test_gz_suffix_but_not_gzip(import_env: ImportEnv) -> None:
    import_env.put("members-1.csv.gz", members_csv())
    assert_failed_once(import_env.run(), "members-1.csv.gz", "is named .gz but is not gz data")


def test_truncated_gzip(import_env: ImportEnv) -> None:
    data = gzip_bytes(csv_bytes([[f"u{i}@x", "n", "c"] for i in range(5000)], HEADER))
    import_env.put("members-1.csv.gz", data[: len(data) // 2])
    assert_failed_once(import_env.run(), "members-1.csv.gz", "Corrupt or truncated gzip")


def test_one_bad_file_does_not_stop_the_others(import_env: ImportEnv) -> None:
    import_env.put("members-1.csv", b"nope\n1\n")
    import_env.put("members-2.csv", members_csv())
    run = import_env.run()
    assert run.files_failed == 1 and run.files_imported == 1
    status, error = final_status(run)
    assert status == Run.Status.PARTIAL and "members-1.csv" in error


# --------------------------------------------------------------------------- whole-run errors


def test_host_key_mismatch_raises(import_env: ImportEnv) -> None:
    Authorization.objects.filter(pk=import_env.authz.pk).update(
        host_key_fingerprint="SHA256:" + "A" * 43
    )
    import_env.authz.refresh_from_db()
    import_env.put("members-1.csv", members_csv())
    run = Run.objects.create(
        kind=Run.Kind.IMPORT, partner=import_env.partner, import_job=import_env.job
    )
    with pytest.raises(SftpError) as caught:
        run_import(run)
    assert caught.value.kind == "host_key_mismatch" and not caught.value.retryable
    assert Profile.objects.count() == 0


def test_refused_connection_is_retryable(import_env: ImportEnv) -> None:
    import_env.server.stop()
    run = Run.objects.create(
        kind=Run.Kind.IMPORT, partner=import_env.partner, import_job=import_env.job
    )
    with pytest.raises(SftpError) as caught:
        run_import(run)
    assert caught.value.retryable
    run.refresh_from_db()
    assert "import job 'members'" in run.log  # progress was written before the error


def test_bad_configuration_raises_config_error(import_env: ImportEnv) -> None:
    import_env.configure(csv_delimiter="ab")
    run = Run.objects.create(
        kind=Run.Kind.IMPORT, partner=import_env.partner, import_job=import_env.job
    )
    with pytest.raises(ConfigError, match="delimiter"):
        run_import(run)


# --------------------------------------------------------------------------- managed account


def test_managed_account_folder_is_read_locally(
    db: Any, partner: Any, settings: Any, tmp_path: Path
) -> None:
    settings.MANAGED_SFTP_ROOT = tmp_path / "sftp"
    settings.IMPORT_STABILITY_SECONDS = 0
    inbound = tmp_path / "sftp" / "acme-data" / "inbound"
    inbound.mkdir(parents=True)
    (inbound / "members-1.csv").write_bytes(members_csv())
    (inbound / ".members-2.csv.upload").write_bytes(b"partial")  # runsftpd's temporary name
    account = Authorization.objects.create(
        partner=partner, label="Managed", method=Method.MANAGED_SFTP, username="acme-data"
    )
    job = ImportJob.objects.create(
        partner=partner,
        authorization=account,
        name="managed",
        folder="inbound",
        identity_field="email",
        after_import=ImportJob.AfterImport.MOVE,
        archive_folder="archive",
    )
    run = Run.objects.create(kind=Run.Kind.IMPORT, partner=partner, import_job=job)
    run_import(run)
    run.refresh_from_db()
    assert run.files_imported == 1 and run.files_seen == 1
    assert Profile.objects.count() == 2
    assert (inbound / "archive" / "members-1.csv").exists()


def test_managed_account_folder_cannot_escape(
    db: Any, partner: Any, settings: Any, tmp_path: Path
) -> None:
    settings.MANAGED_SFTP_ROOT = tmp_path / "sftp"
    (tmp_path / "sftp" / "acme").mkdir(parents=True)
    account = Authorization.objects.create(
        partner=partner, label="Managed", method=Method.MANAGED_SFTP, username="acme"
    )
    job = ImportJob.objects.create(
        partner=partner, authorization=account, name="x", folder="../other"
    )
    run = Run.objects.create(kind=Run.Kind.IMPORT, partner=partner, import_job=job)
    with pytest.raises(ConfigError, match="inside the account's home"):
        run_import(run)


# --------------------------------------------------------------------------- progress


def test_recorder_writes_at_most_once_per_interval(db: Any, partner: Any) -> None:
    authz = Authorization.objects.create(
        partner=partner, label="a", method=Method.MANAGED_SFTP, username="u"
    )
    job = ImportJob.objects.create(partner=partner, authorization=authz, name="j")
    run = Run.objects.create(kind=Run.Kind.IMPORT, partner=partner, import_job=job)
    now = [100.0]
    recorder = RunRecorder(run, interval=1.0, clock=lambda: now[0], max_rejected_rows=2)
    recorder.add(rows_read=5)
    recorder.tick()
    assert Run.objects.get().rows_read == 0  # too soon
    now[0] += 1.5
    recorder.tick()
    assert Run.objects.get().rows_read == 5
    for line in range(5):
        recorder.reject_row("f.csv", line, "bad")
    recorder.flush(force=True)
    stored = Run.objects.get()
    assert stored.rows_rejected == 5 and len(stored.rejected_rows) == 2


@pytest.mark.django_db(transaction=True)
def test_progress_is_visible_while_a_file_transaction_is_open(partner: Any) -> None:
    from django.db import connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer: progress is written between files there")
    authz = Authorization.objects.create(
        partner=partner, label="a", method=Method.MANAGED_SFTP, username="u"
    )
    job = ImportJob.objects.create(partner=partner, authorization=authz, name="j")
    run = Run.objects.create(kind=Run.Kind.IMPORT, partner=partner, import_job=job)
    recorder = RunRecorder(run, interval=0)
    observer = connections.create_connection("default")
    try:
        with transaction.atomic(), recorder.file_transaction():
            Profile.objects.create(identity="uncommitted")
            recorder.add(rows_read=7, bytes_transferred=1000)
            recorder.flush()
            with observer.cursor() as cursor:
                cursor.execute(
                    "SELECT rows_read, bytes_transferred FROM transfers_run WHERE id = %s", [run.pk]
                )
                assert cursor.fetchone() == (7, 1000)
                cursor.execute("SELECT count(*) FROM profiles_profile")
                assert cursor.fetchone() == (0,)
    finally:
        observer.close()
        recorder.close()


# --------------------------------------------------------------------------- crash safety

WORKER = Path(__file__).parent / "support" / "import_worker.py"


def _worker_env(database_url: str) -> dict[str, str]:
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        IMPORT_STABILITY_SECONDS="0",
        IMPORT_BATCH_SIZE="500",
        FIELD_ENCRYPTION_KEYS=",".join(settings.FIELD_ENCRYPTION_KEYS),
        SECRET_KEY=settings.SECRET_KEY,
        PYTHONUNBUFFERED="1",
    )
    return env


def _worker(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, str(WORKER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _database_url(tmp_path: Path) -> tuple[str, bool]:
    """(DATABASE_URL for the worker, whether it must migrate first)."""
    if connection.vendor == "postgresql":
        s = connection.settings_dict
        user, host, port = (
            s.get("USER") or "postgres",
            s.get("HOST") or "127.0.0.1",
            s.get("PORT") or 5432,
        )
        auth = f"{user}:{s['PASSWORD']}" if s.get("PASSWORD") else user
        return f"postgres://{auth}@{host}:{port}/{s['NAME']}", False
    return f"sqlite:///{tmp_path / 'crash.sqlite3'}", True


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> bool:
    """Read the worker's output until a line starts with ``prefix``; False on timeout/exit."""
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith(prefix):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    return found.wait(timeout)


def _open_transactions() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_file_leaves_nothing_and_rerun_imports_once(
    sshd: Any, ssh_keypair: Any, tmp_path: Path
) -> None:
    key = sftp_key(ssh_keypair, sshd)
    (sshd.data_dir / "in").mkdir()
    rows = [[f"user{i}@x.org", f"User {i}", "Paris"] for i in range(20000)]
    (sshd.data_dir / "in" / "members.csv").write_bytes(csv_bytes(rows, HEADER))
    url, migrate = _database_url(tmp_path)
    env = _worker_env(url)
    spec = {"host": sshd.host, "port": sshd.port, "user": sshd.user, "private_key": key.private}
    spec |= {"folder": "in", "migrate": migrate}
    job_id = json.loads(_worker(env, "setup", json.dumps(spec), timeout=300))["job"]

    # 1. Run, and SIGKILL the worker after its third batch: the file's transaction is open.
    errors = tmp_path / "worker.stderr"
    with errors.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), "run", str(job_id), "--pause-after-batches", "3"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        reached = _wait_for_line(proc, "BATCH 3", timeout=120)
        assert reached, f"the worker did not reach its third batch:\n{errors.read_text()[-3000:]}"
        if connection.vendor == "postgresql":  # three batches sit in an open transaction
            assert _open_transactions() >= 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()  # never leave a paused worker behind, whatever happened above
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # 2. Nothing of the file was committed.
    state = json.loads(_worker(env, "inspect", str(job_id)))
    assert state == {"profiles": 0, "ledger": []}

    # 3. The next run imports the file, once; the one after imports nothing.
    assert "DONE" in _worker(env, "run", str(job_id))
    state = json.loads(_worker(env, "inspect", str(job_id)))
    assert state["profiles"] == 20000 and len(state["ledger"]) == 1
    assert state["ledger"][0]["rows_upserted"] == 20000
    out = _worker(env, "run", str(job_id))
    assert 'DONE {"imported": 0}' in out
    assert json.loads(_worker(env, "inspect", str(job_id)))["profiles"] == 20000
