#!/usr/bin/env python
"""Import benchmark: the product against a shell baseline, in the same run.

    .venv/bin/python bench/imports.py [--rows 1000000] [--big-rows 4000000] [--repeat 1]

1. Makes a CSV of ``--rows`` rows and six columns (~65 MB for 1,000,000 rows) and encrypts
   it with ``gpg`` to a freshly generated key (gpg's defaults, so compressed too).
2. Serves it from a real OpenSSH sshd on a free loopback port (own config and host key, see
   tests/support/sshd.py).
3. Creates (once) and migrates the PostgreSQL database ``--db`` on ``--pg``.
4. Times (a) the product: `transfers.imports.run_import` in a fresh Python process, with
   an authorization holding the SSH key and the PGP private key, importing into an empty
   ``profiles_profile`` (SFTP download, gpg decryption, CSV parsing and upsert, one
   transaction, ledger row); its peak RSS is read with ``wait4``; and (b) the shell
   baseline, each step after the other::

       sftp -b <(get members.csv.gpg) ...  ;  gpg -d -o members.csv members.csv.gpg
       psql: \\copy staging from members.csv ; INSERT ... SELECT DISTINCT ON ...
             ON CONFLICT (identity) DO UPDATE  into a table LIKE profiles_profile

   ``IMPORT_STABILITY_SECONDS`` is 0 for the product: that setting is a fixed pause (two
   listings some seconds apart), not throughput.
5. Checks both tables hold the same profiles, then imports a ``--big-rows`` file to show
   that peak RSS does not grow with the file.
6. Prints both timings, the ratio, rows/s and peak RSS, then one JSON line with metrics,
   goals and pass/fail.

Goal: product <= 1.5 x baseline; peak RSS < 300 MB and independent of the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import migrated_database, psql  # noqa: E402  (needs ROOT on the path)

GOAL_RATIO = 1.5
GOAL_RSS_MB = 300
HEADER = ["email", "first_name", "last_name", "city", "country", "signup_date"]
CITIES = ["Paris", "Lyon", "Marseille", "Toulouse", "Nice", "Nantes", "Strasbourg", "Lille"]
PATTERN = "members-*.csv.gpg"

BASELINE_SQL = """
\\set ON_ERROR_STOP 1
BEGIN;
CREATE TEMP TABLE staging (email text, first_name text, last_name text, city text,
                           country text, signup_date text) ON COMMIT DROP;
\\copy staging FROM '{csv}' WITH (FORMAT csv, HEADER true)
INSERT INTO bench_profiles AS p (identity, attributes, attribute_times, created_at, updated_at)
SELECT DISTINCT ON (email) email,
       jsonb_build_object('first_name', first_name, 'last_name', last_name, 'city', city,
                          'country', country, 'signup_date', signup_date),
       '{{}}'::jsonb, now(), now()
FROM staging
ON CONFLICT (identity) DO UPDATE
    SET attributes = p.attributes || EXCLUDED.attributes, updated_at = EXCLUDED.updated_at;
COMMIT;
"""


# --------------------------------------------------------------------------- inputs


def make_csv(path: Path, rows: int) -> int:
    with path.open("w", buffering=1 << 20) as out:
        out.write(",".join(HEADER) + "\n")
        for i in range(rows):
            out.write(
                f"user{i:08d}@example.com,First{i % 9973},Last{i % 7919},{CITIES[i % 8]},"
                f"FR,2024-{1 + i % 12:02d}-{1 + i % 28:02d}\n"
            )
    return path.stat().st_size


def encrypt(keys: Any, fingerprint: str, plain: Path, target: Path) -> None:
    args = ["--trust-model", "always", "--recipient", fingerprint, "-o", str(target)]
    keys.run_bytes(*args, "--encrypt", str(plain))


# --------------------------------------------------------------------------- database


def prepare_database(server_url: str, name: str) -> str:
    url = migrated_database(server_url, name)
    psql(
        url, "-c", "create table if not exists bench_profiles (like profiles_profile including all)"
    )
    return url


def make_job(server: Any, ssh_key: Any, pgp_key: Any) -> int:
    from authorizations.models import Authorization, Method, Partner
    from transfers.models import ImportJob

    partner, _ = Partner.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    authz = Authorization.objects.create(
        partner=partner,
        label="bench import",
        method=Method.SFTP_CLIENT_PGP_PRIVATE,
        host=server.host,
        port=server.port,
        username=server.user,
        private_key=ssh_key.private,
        pgp_private_key=pgp_key.secret,
    )
    job = ImportJob.objects.create(
        partner=partner, authorization=authz, name="bench", pattern=PATTERN, identity_field="email"
    )
    return job.pk


def reset_tables(url: str) -> None:
    psql(url, "-c", "truncate profiles_profile, transfers_importedfile, bench_profiles")
    psql(url, "-c", "vacuum analyze profiles_profile")


# --------------------------------------------------------------------------- (a) product


def run_product(job_id: int) -> dict[str, Any]:
    """run_import in a fresh process; its peak RSS from wait4 (gpg is a separate process)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--product-run", str(job_id)],
        stdout=subprocess.PIPE,
        env={**os.environ, "IMPORT_STABILITY_SECONDS": "0", "LOG_LEVEL": "WARNING"},
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"product run failed ({proc.returncode})")
    result = json.loads(output.decode().strip().splitlines()[-1])
    result["process_seconds"] = time.monotonic() - started
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # kB on Linux
    return result


def product_child(job_id: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lyticsops.settings")
    import resource

    import django

    django.setup()
    from transfers.imports import run_import
    from transfers.models import ImportJob, Run

    job = ImportJob.objects.get(pk=job_id)
    run = Run.objects.create(kind=Run.Kind.IMPORT, partner=job.partner, import_job=job)
    started = time.monotonic()
    run_import(run)
    seconds = time.monotonic() - started
    run.refresh_from_db()
    if run.files_imported != 1:
        print(run.log, file=sys.stderr)
    result = {
        "seconds": seconds,
        "rows": run.rows_upserted,
        "rejected": run.rows_rejected,
        "bytes": run.bytes_transferred,
        "files_imported": run.files_imported,
        "python_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))


# --------------------------------------------------------------------------- (b) baseline


def run_baseline(url: str, server: Any, ssh_key: Any, gpg_home: str, work: Path) -> dict:
    name = _remote_name(server)
    local, plain = work / "baseline.csv.gpg", work / "baseline.csv"
    batch = work / "get.batch"
    batch.write_text(f"get {name} {local}\n")
    sql = work / "baseline.sql"
    sql.write_text(BASELINE_SQL.format(csv=plain))
    steps: dict[str, float] = {}
    started = time.monotonic()
    _step(steps, "sftp get", ["sftp", "-q", "-b", str(batch), *_ssh_options(server, ssh_key)])
    gpg = ["gpg", "--homedir", gpg_home, "--batch", "--yes", "-q", "-o", str(plain)]
    _step(steps, "gpg -d", [*gpg, "-d", str(local)])
    _step(steps, "psql copy+upsert", ["psql", url, "-q", "-f", str(sql)])
    seconds = time.monotonic() - started
    for path in (local, plain):
        path.unlink()
    return {"seconds": seconds, "steps": steps}


def _step(steps: dict[str, float], label: str, argv: list[str]) -> None:
    started = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    steps[label] = time.monotonic() - started


def _ssh_options(server: Any, ssh_key: Any) -> list[str]:
    return [
        "-i", str(ssh_key.path), "-P", str(server.port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        f"{server.user}@{server.host}",
    ]  # fmt: skip


def _remote_name(server: Any) -> str:
    (path,) = server.data_dir.glob(PATTERN)
    return path.name


def same_profiles(url: str) -> tuple[int, int]:
    """(profiles in the product's table, of them identical in the baseline's)."""
    total = int(psql(url, "-c", "select count(*) from profiles_profile"))
    same = int(
        psql(
            url,
            "-c",
            "select count(*) from profiles_profile p join bench_profiles b using (identity) "
            "where p.attributes = b.attributes",
        )
    )
    return total, same


# --------------------------------------------------------------------------- main


def serve(server: Any, keys: Any, fingerprint: str, work: Path, rows: int) -> int:
    """Put an encrypted file of ``rows`` rows (and nothing else) in the sshd's folder."""
    for old in server.data_dir.glob(PATTERN):
        old.unlink()
    plain = work / "members.csv"
    size = make_csv(plain, rows)
    encrypt(keys, fingerprint, plain, server.data_dir / f"members-{rows}.csv.gpg")
    plain.unlink()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=4_000_000, help="0: skip")
    parser.add_argument("--repeat", type=int, default=1, help="best of N for both sides")
    parser.add_argument("--db", default="lyticsops_bench_imports")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--product-run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.product_run:
        product_child(args.product_run)
        return

    url = prepare_database(args.pg, args.db)
    from tests.support.gpgkeys import KeyFactory
    from tests.support.sshd import KeyMaker, Sshd

    work = Path(tempfile.mkdtemp(prefix="bench-imports-"))
    keys = KeyFactory()
    server = Sshd(_mkdir(work / "sshd"))
    try:
        server.start()
        ssh_key = KeyMaker(_mkdir(work / "keys"))("ed25519")
        server.authorize(ssh_key.public)
        pgp_key = keys.generate("Lyticsops imports <imports@example.com>")
        job_id = make_job(server, ssh_key, pgp_key)
        size = serve(server, keys, pgp_key.fingerprint, work, args.rows)
        encrypted = next(server.data_dir.glob(PATTERN)).stat().st_size
        print(f"{args.rows} rows: CSV {size / 1e6:.1f} MB, encrypted {encrypted / 1e6:.1f} MB")
        products, baselines = [], []
        for _ in range(args.repeat):
            reset_tables(url)
            baselines.append(run_baseline(url, server, ssh_key, keys.home, work))
            products.append(run_product(job_id))
        total, same = same_profiles(url)
        big = None
        if args.big_rows:
            serve(server, keys, pgp_key.fingerprint, work, args.big_rows)
            reset_tables(url)
            big = run_product(job_id)
        reset_tables(url)  # do not leave millions of rows behind
    finally:
        server.stop()
        keys.close()
        shutil.rmtree(work, ignore_errors=True)
    product = min(products, key=lambda r: r["seconds"])
    baseline = min(baselines, key=lambda r: r["seconds"])
    report(args, size, product, baseline, big, total, same)


def report(
    args: argparse.Namespace,
    size: int,
    product: dict[str, Any],
    baseline: dict[str, Any],
    big: dict[str, Any] | None,
    total: int,
    same: int,
) -> None:
    rows = args.rows
    ratio = product["seconds"] / baseline["seconds"]
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in baseline["steps"].items())
    print()
    print(f"rows                      {rows} ({size / 1e6:.1f} MB CSV, six columns)")
    print(
        f"(a) product               {product['seconds']:.2f} s  ({rows / product['seconds']:,.0f} "
        f"rows/s; whole process incl. start-up {product['process_seconds']:.2f} s)"
    )
    print(
        f"(b) sftp ; gpg ; psql     {baseline['seconds']:.2f} s  "
        f"({rows / baseline['seconds']:,.0f} rows/s; {steps})"
    )
    print(f"ratio product/baseline    {ratio:.2f}  (goal <= {GOAL_RATIO})")
    print(
        f"peak RSS product          {product['peak_rss_mb']:.0f} MB for {rows} rows"
        + (f", {big['peak_rss_mb']:.0f} MB for {args.big_rows} rows" if big else "")
        + f" (goal < {GOAL_RSS_MB} MB)"
    )
    print(f"profiles                  {total}, identical to the baseline's: {same}")
    checks = {
        "ratio": ratio <= GOAL_RATIO,
        "rss": product["peak_rss_mb"] < GOAL_RSS_MB
        and (big is None or big["peak_rss_mb"] < GOAL_RSS_MB),
        # Independent of size: 4x the rows may not cost more than 10 % more memory.
        "rss_flat": big is None or big["peak_rss_mb"] <= 1.1 * product["peak_rss_mb"],
        "complete": product["rows"] == rows == total == same
        and (big is None or big["rows"] == args.big_rows),
    }
    metrics = {
        "product_seconds": round(product["seconds"], 3),
        "baseline_seconds": round(baseline["seconds"], 3),
        "baseline_steps": {k: round(v, 3) for k, v in baseline["steps"].items()},
        "ratio": round(ratio, 3),
        "product_rows_per_second": round(rows / product["seconds"]),
        "baseline_rows_per_second": round(rows / baseline["seconds"]),
        "peak_rss_mb": round(product["peak_rss_mb"], 1),
        "python_rss_mb": round(product["python_rss_mb"], 1),
    }
    if big:
        metrics |= {
            "big_rows": args.big_rows,
            "big_product_seconds": round(big["seconds"], 3),
            "big_peak_rss_mb": round(big["peak_rss_mb"], 1),
        }
    summary = {
        "bench": "imports",
        "rows": rows,
        "metrics": metrics,
        "goals": {"ratio_max": GOAL_RATIO, "peak_rss_mb_max": GOAL_RSS_MB},
        "checks": checks,
        "pass": all(checks.values()),
    }
    print(json.dumps(summary))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    main()
