#!/usr/bin/env python
"""Run every benchmark under bench/ and print one table (``make bench``).

    .venv/bin/python bench/run_all.py [--only NAME ...] [--quick] [--timeout SECONDS]

Each ``bench/*.py`` (except this file and names starting with ``_``) runs as a subprocess,
one after the other, with a timeout. Its output goes to stderr as it comes (prefixed with
its name) and to ``var/bench/<name>.log``; its last line is a JSON object (``"bench"``,
figures, ``"goals"``, ``"checks"``, ``"pass"``). The benchmarks' JSON layouts differ
(``token_api`` has ``ours``/``stock``; the others have ``metrics``): `ADAPTERS` turns each
into table rows, and any check an adapter does not show gets a row of its own, so no
failed check is ever hidden.

The table (Markdown, on stdout) has: benchmark, metric, product, baseline, ratio
(product / baseline), goal, result (``pass``, ``FAIL``, or empty for figures without a
goal). Exit status: 1 if a benchmark did not run to its JSON line (crash, non-zero exit,
timeout); a missed goal does not change it but is listed below the table.

``--quick`` passes smaller sizes (`QUICK_ARGS`) for a smoke run of a few minutes; its
figures are not comparable with the goals, which are set for the full sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
ORDER = ["token_api", "imports", "exports", "sftpd"]  # others follow, alphabetically
DEFAULT_TIMEOUT = 3600.0  # seconds per benchmark
QUICK_ARGS: dict[str, list[str]] = {
    "token_api": ["--seconds", "2", "--threads", "4"],
    # Own databases, so the full runs' 1M-row data stays in place.
    "imports": ["--rows", "20000", "--big-rows", "80000", "--db", "lyticsops_bench_imports_quick"],
    "exports": ["--rows", "20000", "--repeat", "1", "--db", "lyticsops_bench_exports_quick"],
    "sftpd": ["--size-mb", "20", "--repeat", "1", "--clients", "10", "--client-mb", "1"],
}


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    bench: str
    metric: str
    product: Any = None
    baseline: Any = None
    ratio: Any = None
    goal: str = ""
    ok: bool | None = None  # None: a figure without a goal
    error: str = ""  # the benchmark did not run

    @property
    def result(self) -> str:
        if self.error:
            return "ERROR"
        return "" if self.ok is None else ("pass" if self.ok else "FAIL")


@dataclass
class Outcome:
    name: str
    returncode: int | None = None
    seconds: float = 0.0
    data: dict[str, Any] | None = None
    error: str = ""
    log: list[str] = field(default_factory=list)


def _ratio(product: Any, baseline: Any) -> float | None:
    if isinstance(product, int | float) and isinstance(baseline, int | float) and baseline:
        return product / baseline
    return None


def token_api_rows(d: dict[str, Any]) -> tuple[list[Row], set[str]]:
    ours, stock, goals, checks = d["ours"], d["stock"], d["goals"], d["checks"]
    name = "token_api"

    def phase(key: str, label: str, check: str) -> Row:
        p, b = ours[key]["per_s"], stock[key]["per_s"]
        return Row(name, label, p, b, _ratio(p, b), f">= {goals[check]}/s", checks[check])

    p99_p = max(ours["tokens"]["p99_ms"], ours["me"]["p99_ms"])
    p99_b = max(stock["tokens"]["p99_ms"], stock["me"]["p99_ms"])
    errors_p = ours["tokens"]["errors"] + ours["me"]["errors"]
    errors_b = stock["tokens"]["errors"] + stock["me"]["errors"]
    rows = [
        phase("tokens", "client-credentials tokens/s (vs DOT stock)", "tokens_per_s"),
        phase("me", "GET /api/v1/me req/s (vs DOT stock)", "me_per_s"),
        Row(
            name,
            "p99 latency ms, worse of the two",
            p99_p,
            p99_b,
            _ratio(p99_p, p99_b),
            f"< {goals['p99_ms']} ms",
            checks["p99_ms"],
        ),
        Row(name, "failed requests", errors_p, errors_b, None, "0", checks["no_errors"]),
    ]
    return rows, {"tokens_per_s", "me_per_s", "p99_ms", "no_errors"}


def _ratio_goal(goals: dict[str, Any]) -> str:
    return f"ratio <= {goals['ratio_max']}"


def imports_rows(d: dict[str, Any]) -> tuple[list[Row], set[str]]:
    m, goals, checks = d["metrics"], d["goals"], d["checks"]
    name, rows = "imports", d["rows"]
    peak = max(m["peak_rss_mb"], m.get("big_peak_rss_mb", 0))
    out = [
        Row(
            name,
            f"import {rows:,} rows, s",
            m["product_seconds"],
            m["baseline_seconds"],
            m["ratio"],
            _ratio_goal(goals),
            checks["ratio"],
        ),
        Row(
            name,
            "rows/s",
            m["product_rows_per_second"],
            m["baseline_rows_per_second"],
            _ratio(m["product_rows_per_second"], m["baseline_rows_per_second"]),
        ),
        Row(name, "peak RSS MB", peak, None, None, f"< {goals['peak_rss_mb_max']}", checks["rss"]),
    ]
    if "big_peak_rss_mb" in m:
        out.append(
            Row(
                name,
                f"peak RSS MB, {m['big_rows']:,} vs {rows:,} rows",
                f"{m['big_peak_rss_mb']:.0f} vs {m['peak_rss_mb']:.0f}",
                None,
                None,
                "<= +10 %",
                checks["rss_flat"],
            )
        )
    out.append(
        Row(
            name, "all rows imported, same as baseline", None, None, None, "yes", checks["complete"]
        )
    )
    return out, {"ratio", "rss", "complete"} | ({"rss_flat"} if "big_peak_rss_mb" in m else set())


def exports_rows(d: dict[str, Any]) -> tuple[list[Row], set[str]]:
    m, goals, checks = d["metrics"], d["goals"], d["checks"]
    name, rows = "exports", d["rows"]
    return [
        Row(
            name,
            f"export {rows:,} rows, s (best of {d['runs']})",
            m["product_export_seconds"],
            m["baseline_seconds"],
            m["ratio"],
            _ratio_goal(goals),
            checks["ratio"],
        ),
        Row(
            name,
            "export incl. Python start-up, s",
            m["product_process_seconds"],
            m["baseline_seconds"],
            m["process_ratio"],
        ),
        Row(
            name,
            "rows/s",
            m["product_rows_per_second"],
            m["baseline_rows_per_second"],
            _ratio(m["product_rows_per_second"], m["baseline_rows_per_second"]),
        ),
        Row(
            name,
            "peak RSS MB",
            m["peak_rss_mb"],
            None,
            None,
            f"< {goals['peak_rss_mb_max']}",
            checks["rss"],
        ),
        Row(
            name,
            "peak RSS MB, all vs 10 % audience",
            f"{m['peak_rss_mb']:.0f} vs {m['peak_rss_mb_tenth']:.0f}",
            None,
            None,
            "<= +10 %",
            checks["rss_flat"],
        ),
        Row(name, "all rows exported, decrypt", None, None, None, "yes", checks["complete"]),
    ], {"ratio", "rss", "rss_flat", "complete"}


def sftpd_rows(d: dict[str, Any]) -> tuple[list[Row], set[str]]:
    m, goals, checks, config = d["metrics"], d["goals"], d["checks"], d["config"]
    name, size = "sftpd", config["size_mb"]
    goal = f"ratio >= {goals['throughput_ratio_min']}"
    clients = m["concurrent_clients"]
    rows = []
    for direction in ("put", "get"):
        rows.append(
            Row(
                name,
                f"sftp {direction} {size} MB, transfer MB/s (vs OpenSSH sshd)",
                m[f"product_{direction}_mb_s"],
                m[f"baseline_{direction}_mb_s"],
                m[f"{direction}_ratio"],
                goal,
                checks[f"{direction}_ratio"],
            )
        )
    for direction in ("put", "get"):
        key = f"{direction}_mb_s_whole_command"
        if f"product_{key}" in m:
            rows.append(
                Row(
                    name,
                    f"sftp {direction}, MB/s whole command incl. login",
                    m[f"product_{key}"],
                    m[f"baseline_{key}"],
                    m[f"{direction}_ratio_whole_command"],
                )
            )
    rows.append(
        Row(
            name,
            f"{clients} clients x {config['client_mb']} MB up+down: sessions ok",
            f"{m['concurrent_ok']}/{clients}",
            f"{m['baseline_concurrent_ok']}/{clients}" if "baseline_concurrent_ok" in m else None,
            None,
            f"{goals['sessions_ok']}/{clients}",
            checks["sessions"],
        )
    )
    if "baseline_concurrent_seconds" in m:
        rows.append(
            Row(
                name,
                f"{clients} clients: wall time s",
                m["concurrent_seconds"],
                m["baseline_concurrent_seconds"],
                m["concurrent_ratio"],
            )
        )
    rows += [
        Row(
            name,
            "files corrupted (SHA-256)",
            m["concurrent_corrupted"],
            m.get("baseline_concurrent_corrupted"),
            None,
            str(goals["corrupted"]),
            checks["no_corruption"],
        ),
        Row(name, "runsftpd peak RSS MB", m["peak_rss_mb"]),
    ]
    return rows, {"put_ratio", "get_ratio", "sessions", "no_corruption"}


ADAPTERS: dict[str, Callable[[dict[str, Any]], tuple[list[Row], set[str]]]] = {
    "token_api": token_api_rows,
    "imports": imports_rows,
    "exports": exports_rows,
    "sftpd": sftpd_rows,
}


def rows_for(outcome: Outcome) -> list[Row]:
    """Table rows of one benchmark: its adapter's, plus a row per check not shown."""
    if outcome.data is None:
        return [Row(outcome.name, "did not run", error=outcome.error or "no result")]
    data = outcome.data
    checks: dict[str, Any] = data.get("checks") or {}
    rows: list[Row] = []
    shown: set[str] = set()
    adapter = ADAPTERS.get(data.get("bench", outcome.name))
    if adapter is not None:
        try:
            rows, shown = adapter(data)
        except (KeyError, TypeError, ValueError) as exc:
            rows = [Row(outcome.name, f"(table adapter failed: {exc!r}; checks below)")]
            shown = set()
    for check, ok in checks.items():
        if check not in shown:
            rows.append(Row(outcome.name, f"check {check}", ok=bool(ok)))
    if not checks and "pass" in data:
        rows.append(Row(outcome.name, "pass", ok=bool(data["pass"])))
    return rows


# --------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def table(rows: Iterable[Row]) -> str:
    header = ["benchmark", "metric", "product", "baseline", "ratio", "goal", "result"]
    body = []
    for row in rows:
        if row.error:
            body.append([row.bench, row.metric, "—", "—", "—", row.error, row.result])
            continue
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}"
        goal = row.goal or "—"
        product, baseline = fmt(row.product), fmt(row.baseline)
        body.append([row.bench, row.metric, product, baseline, ratio, goal, row.result])
    cells = [[c.replace("|", "\\|") for c in line] for line in [header, *body]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    numeric = {2, 3, 4}

    def render(line: list[str]) -> str:
        parts = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([render(cells[0]), rule, *(render(line) for line in cells[1:])])


def summary(outcomes: list[Outcome], rows: list[Row]) -> tuple[str, int]:
    """Text under the table, and the exit status (1 if a benchmark did not run)."""
    lines = []
    broken = [o for o in outcomes if o.data is None]
    missed = [r for r in rows if r.ok is False]
    ran = ", ".join(f"{o.name} {o.seconds:.0f} s" for o in outcomes)
    lines.append(f"ran: {ran}")
    if missed:
        lines.append(f"GOALS MISSED ({len(missed)}):")
        lines += [f"  - {r.bench}: {r.metric} (goal {r.goal or 'pass'})" for r in missed]
    else:
        lines.append("all goals met" if not broken else "all goals met by the benchmarks that ran")
    if broken:
        lines.append(f"FAILED TO RUN ({len(broken)}):")
        lines += [f"  - {o.name}: {o.error}" for o in broken]
    return "\n".join(lines), 1 if broken else 0


# --------------------------------------------------------------------------- running


def discover(bench_dir: Path = BENCH_DIR) -> list[str]:
    names = sorted(
        p.stem
        for p in bench_dir.glob("*.py")
        if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    known = [n for n in ORDER if n in names]
    return known + [n for n in names if n not in known]


def final_json(lines: list[str]) -> dict[str, Any] | None:
    """The last line of the output that is a JSON object naming its benchmark."""
    for line in reversed(lines):
        text = line.strip()
        if not text.startswith("{"):
            continue
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, dict) and "bench" in data:
            return data
    return None


def run_one(
    name: str, args: list[str], timeout: float, bench_dir: Path, log_dir: Path | None
) -> Outcome:
    outcome = Outcome(name)
    command = [sys.executable, str(bench_dir / f"{name}.py"), *args]
    print(f"== {name}: {' '.join(command[1:])} (timeout {timeout:.0f} s)", file=sys.stderr)
    log = (log_dir / f"{name}.log").open("w") if log_dir else None
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: a timeout stops all of it
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            outcome.log.append(line.rstrip("\n"))
            if log:
                log.write(line)
                log.flush()
            sys.stderr.write(f"[{name}] {line}")
            sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        outcome.returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        outcome.error = f"timed out after {timeout:.0f} s"
        _stop_group(proc)
    reader.join(timeout=30)
    outcome.seconds = time.monotonic() - started
    if log:
        log.close()
    if not outcome.error:
        outcome.data = final_json(outcome.log)
        if outcome.returncode != 0:
            tail = next((x for x in reversed(outcome.log) if x.strip()), "")
            outcome.error = f"exit status {outcome.returncode}: {tail[-200:]}"
            outcome.data = None
        elif outcome.data is None:
            outcome.error = "no final JSON line in its output"
    return outcome


def _stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C first (the benchmarks clean up in `finally`), then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark (repeat, or comma-separate, for several)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per benchmark")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--json", type=Path, help="also write every final JSON line here")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    available = discover(args.bench_dir)
    names = available
    if args.only:
        wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in available]
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)}; have {', '.join(available)}")
        names = [n for n in available if n in wanted]
    args.log_dir.mkdir(parents=True, exist_ok=True)

    outcomes = []
    for name in names:
        extra = QUICK_ARGS.get(name, []) if args.quick else []
        outcomes.append(run_one(name, extra, args.timeout, args.bench_dir, args.log_dir))
    rows = [row for outcome in outcomes for row in rows_for(outcome)]
    if args.json:
        args.json.write_text(
            json.dumps({o.name: o.data for o in outcomes}, indent=2, sort_keys=True) + "\n"
        )
    text, status = summary(outcomes, rows)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    mode = " (--quick: sizes reduced, not comparable with the goals)" if args.quick else ""
    print()
    print(f"benchmarks{mode}; cpus {os.cpu_count()}, load average now {load}")
    print()
    print(table(rows))
    print()
    print(text)
    print(f"full output: {args.log_dir}/<name>.log")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
