"""bench/run_all.py: parsing each benchmark's final JSON line and printing the one table.

No real benchmark runs here: the samples are final lines of real (``--quick``) runs, and
the end-to-end case runs tiny stand-in scripts.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SAMPLES = {
    "token_api": {
        "bench": "token_api",
        "config": {"seconds": 2.0, "threads": 4, "gunicorn_workers": 2, "cpus": 2},
        "ours": {
            "hasher": "client_secret_hmac",
            "tokens": {"requests": 807, "per_s": 403.5, "p50_ms": 8.81, "p99_ms": 27.24,
                       "mean_ms": 9.9, "errors": 0, "statuses": {"200": 807}},
            "me": {"requests": 1576, "per_s": 788.0, "p50_ms": 3.84, "p99_ms": 32.33,
                   "mean_ms": 5.07, "errors": 0, "statuses": {"200": 1576}},
        },
        "stock": {
            "hasher": "pbkdf2_sha256",
            "tokens": {"requests": 9, "per_s": 4.5, "p50_ms": 718.48, "p99_ms": 1129.23,
                       "mean_ms": 781.6, "errors": 0, "statuses": {"200": 9}},
            "me": {"requests": 895, "per_s": 447.5, "p50_ms": 8.28, "p99_ms": 17.49,
                   "mean_ms": 8.94, "errors": 0, "statuses": {"200": 895}},
        },
        "goals": {"tokens_per_s": 300, "me_per_s": 500, "p99_ms": 100},
        "checks": {"tokens_per_s": True, "me_per_s": True, "p99_ms": True, "no_errors": True},
        "pass": True,
    },
    "imports": {
        "bench": "imports",
        "rows": 20000,
        "metrics": {
            "product_seconds": 0.35, "baseline_seconds": 0.38,
            "baseline_steps": {"sftp get": 0.197, "gpg -d": 0.008, "psql copy+upsert": 0.175},
            "ratio": 0.922, "product_rows_per_second": 57156, "baseline_rows_per_second": 52683,
            "peak_rss_mb": 124.4, "python_rss_mb": 124.4, "big_rows": 80000,
            "big_product_seconds": 0.869, "big_peak_rss_mb": 132.7,
        },
        "goals": {"ratio_max": 1.5, "peak_rss_mb_max": 300},
        "checks": {"ratio": True, "rss": True, "rss_flat": True, "complete": True},
        "pass": True,
    },
    "exports": {
        "bench": "exports",
        "rows": 20000,
        "runs": 1,
        "metrics": {
            "product_export_seconds": 0.325, "product_process_seconds": 1.959,
            "baseline_seconds": 0.4, "ratio": 0.811, "process_ratio": 4.895,
            "product_rows_per_second": 61632, "baseline_rows_per_second": 49983,
            "product_bytes": 160506, "baseline_bytes": 159635, "peak_rss_mb": 115.8,
            "peak_rss_mb_tenth": 115.8, "all_export_seconds": [0.325],
            "all_baseline_seconds": [0.4],
        },
        "goals": {"ratio_max": 1.5, "peak_rss_mb_max": 300},
        "checks": {"ratio": True, "rss": True, "rss_flat": True, "complete": True},
        "pass": True,
    },
    "sftpd": {
        "bench": "sftpd",
        "config": {"size_mb": 20, "repeat": 1, "clients": 10, "client_mb": 1, "cpus": 2,
                   "database": "sqlite (temporary file)"},
        "metrics": {
            "product_put_mb_s": 286.8, "baseline_put_mb_s": 141.3, "put_ratio": 2.03,
            "product_get_mb_s": 190.6, "baseline_get_mb_s": 187.0, "get_ratio": 1.02,
            "product_put_mb_s_whole_command": 122.0, "baseline_put_mb_s_whole_command": 58.0,
            "put_ratio_whole_command": 2.105, "product_get_mb_s_whole_command": 100.4,
            "baseline_get_mb_s_whole_command": 64.4, "get_ratio_whole_command": 1.559,
            "product_login_seconds": 0.094, "baseline_login_seconds": 0.204,
            "concurrent_clients": 10, "concurrent_ok": 10, "concurrent_failed": 0,
            "concurrent_corrupted": 0, "concurrent_temp_leftovers": 0,
            "concurrent_seconds": 0.414, "concurrent_errors": [], "peak_rss_mb": 119.2,
            "ru_maxrss_mb": 119.2, "server_log_errors": 0, "baseline_concurrent_ok": 10,
            "baseline_concurrent_failed": 0, "baseline_concurrent_corrupted": 0,
            "baseline_concurrent_seconds": 0.808, "concurrent_ratio": 0.512,
        },
        "goals": {"throughput_ratio_min": 0.5, "sessions_ok": 10, "corrupted": 0},
        "checks": {"put_ratio": True, "get_ratio": True, "sessions": True,
                   "no_corruption": True},
        "pass": True,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", ROOT / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def outcome(run_all, name: str, data: dict | None, error: str = ""):
    return run_all.Outcome(name, returncode=0 if data else 1, data=data, error=error)


def test_every_benchmark_has_an_adapter_and_quick_args(run_all):
    names = run_all.discover()
    assert names[:4] == ["token_api", "imports", "exports", "sftpd"]
    assert set(run_all.ADAPTERS) == set(SAMPLES) == set(run_all.QUICK_ARGS)


def test_final_json_is_the_last_json_line_naming_a_benchmark(run_all):
    lines = [
        "profiles: 20000 already there",
        json.dumps(SAMPLES["imports"] | {"rows": 1}),
        "{not json",
        json.dumps(SAMPLES["imports"]),
        '{"progress": 3}',
        "",
    ]
    assert run_all.final_json(lines) == SAMPLES["imports"]
    assert run_all.final_json(["no json at all"]) is None


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_becomes_rows_with_every_check(run_all, name):
    rows = run_all.rows_for(outcome(run_all, name, SAMPLES[name]))
    assert rows and all(row.bench == name for row in rows)
    graded = [row for row in rows if row.ok is not None]
    assert len(graded) == len(SAMPLES[name]["checks"])  # each check once, none hidden
    assert all(row.result == "pass" for row in graded)
    assert not any(row.metric.startswith("(table adapter failed") for row in rows)
    for row in rows:
        if row.ratio is not None:
            assert isinstance(row.ratio, float)


def test_table_has_one_aligned_markdown_row_per_metric(run_all):
    rows = [r for name in SAMPLES for r in run_all.rows_for(outcome(run_all, name, SAMPLES[name]))]
    text = run_all.table(rows)
    lines = text.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == [
        "benchmark", "metric", "product", "baseline", "ratio", "goal", "result"
    ]  # fmt: skip
    assert set(lines[1]) <= {"|", "-", ":"}
    assert len(lines) == 2 + len(rows)
    assert len({len(line) for line in lines}) == 1  # aligned
    assert len({line.count("|") for line in lines}) == 1
    joined = "\n".join(lines)
    for expected in ("403.5", "4.50", "89.67", "0.92", "ratio <= 1.5", "10/10", "2.03", "pass"):
        assert expected in joined
    summary, status = run_all.summary([outcome(run_all, n, SAMPLES[n]) for n in SAMPLES], rows)
    assert status == 0 and "all goals met" in summary


def test_missed_goal_is_listed_but_does_not_fail_the_run(run_all):
    data = copy.deepcopy(SAMPLES["sftpd"])
    data["metrics"] |= {"put_ratio": 0.41, "concurrent_ok": 9, "concurrent_failed": 1}
    data["checks"] |= {"put_ratio": False, "sessions": False}
    data["pass"] = False
    rows = run_all.rows_for(outcome(run_all, "sftpd", data))
    failed = [row.metric for row in rows if row.result == "FAIL"]
    assert failed == [
        "sftp put 20 MB, transfer MB/s (vs OpenSSH sshd)",
        "10 clients x 1 MB up+down: sessions ok",
    ]
    assert "FAIL" in run_all.table(rows) and "9/10" in run_all.table(rows)
    summary, status = run_all.summary([outcome(run_all, "sftpd", data)], rows)
    assert status == 0
    assert "GOALS MISSED (2)" in summary


def test_unknown_checks_and_changed_formats_still_show(run_all):
    data = copy.deepcopy(SAMPLES["exports"])
    data["checks"]["new_check"] = False
    rows = run_all.rows_for(outcome(run_all, "exports", data))
    assert [r.result for r in rows if r.metric == "check new_check"] == ["FAIL"]

    del data["metrics"]["ratio"]  # a format the adapter does not know
    rows = run_all.rows_for(outcome(run_all, "exports", data))
    assert rows[0].metric.startswith("(table adapter failed")
    assert {r.metric for r in rows[1:]} == {f"check {c}" for c in data["checks"]}

    other = {"bench": "newbench", "checks": {"fast": True}, "pass": True}
    assert [
        (r.metric, r.result) for r in run_all.rows_for(outcome(run_all, "newbench", other))
    ] == [("check fast", "pass")]


def test_a_benchmark_that_did_not_run_fails_the_run(run_all):
    broken = outcome(run_all, "imports", None, "exit status 1: psql: connection refused")
    rows = run_all.rows_for(broken)
    assert [r.result for r in rows] == ["ERROR"]
    assert "connection refused" in run_all.table(rows)
    summary, status = run_all.summary([broken], rows)
    assert status == 1 and "FAILED TO RUN (1)" in summary


def test_main_runs_scripts_and_prints_the_table(run_all, tmp_path, capsys):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    sample = json.dumps(SAMPLES["sftpd"])
    scripts = {
        "sftpd": f"import sys\nprint('warming up')\nprint(sys.argv[1:])\nprint({sample!r})\n",
        "imports": "import sys\nprint('crashing')\nsys.exit(3)\n",
        "exports": "import time\nprint('stuck', flush=True)\ntime.sleep(60)\n",
        "_helper": "raise SystemExit('never run')\n",
    }
    for name, body in scripts.items():
        (bench_dir / f"{name}.py").write_text(textwrap.dedent(body))
    (bench_dir / "run_all.py").write_text("raise SystemExit('never run')\n")
    out_json = tmp_path / "all.json"
    status = run_all.main(
        [
            "--bench-dir", str(bench_dir), "--log-dir", str(tmp_path / "logs"),
            "--timeout", "3", "--quick", "--json", str(out_json),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    assert "| sftpd " in out and "2.03" in out
    assert "exit status 3: crashing" in out
    assert "timed out after 3 s" in out
    assert "FAILED TO RUN (2)" in out
    assert "--size-mb" in (tmp_path / "logs" / "sftpd.log").read_text()  # quick args passed
    assert json.loads(out_json.read_text())["sftpd"] == SAMPLES["sftpd"]

    status = run_all.main(
        ["--bench-dir", str(bench_dir), "--log-dir", str(tmp_path / "logs"), "--only", "sftpd"]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "all goals met" in out and "imports" not in out
