"""``scripts/bench``: wrk's report is read right, a missing wrk is a clear error, and a quick run
prints the whole table (issue 6). No timing is asserted: numbers vary by machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench_lib import report
from scripts.bench_lib.results import Measurement, Row
from scripts.bench_lib.wrk import WrkFailed, parse

ROOT = Path(__file__).resolve().parents[2]

CLEAN_REPORT = """Running 1s test @ http://127.0.0.1:18931/bare
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   214.17us  423.83us   4.74ms   95.46%
    Req/Sec    14.46k     1.32k   16.72k    63.64%
  Latency Distribution
     50%  129.00us
     75%  132.00us
     90%  177.00us
     99%    2.70ms
  15788 requests in 1.10s, 2.05MB read
Requests/sec:  14360.85
Transfer/sec:      1.86MB
"""

FAILING_REPORT = """Running 10s test @ http://127.0.0.1:8080/webrtc/token
  2 threads and 50 connections
  Latency Distribution
     50%    1.20s
     75%    1.50s
     90%    1.90s
     99%    2.00s
  1000 requests in 10.00s, 1.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 12
Requests/sec:    100.00
"""


def test_parse_reads_rate_percentiles_and_count_in_seconds() -> None:
    result = parse(CLEAN_REPORT)
    assert result.rate == pytest.approx(14360.85)
    assert result.p50 == pytest.approx(129e-6)
    assert result.p99 == pytest.approx(2.70e-3)
    assert (result.count, result.errors) == (15788, 0)


def _row(key: str, rate: float) -> Row:
    return Row(key, key, "wrk", Measurement(rate, 0.001, 0.002, int(rate), 0), 1.0, 1.0)


def test_passes_report_the_median_row_and_the_median_of_each_passs_ratio() -> None:
    passes = [
        [_row("a", 100), _row("c", 70)],  # c/a 0.70
        [_row("a", 80), _row("c", 40)],  # c/a 0.50
        [_row("a", 120), _row("c", 72)],  # c/a 0.60
    ]
    assert [r.result.rate for r in report.median_rows(passes)] == [100, 70]
    medians, per_pass = report.median_ratios(passes)
    c_over_a = next(i for i, r in enumerate(medians) if r.name == "c/a")
    assert medians[c_over_a].value == pytest.approx(0.60)
    assert medians[c_over_a].verdict() == "meets"
    assert per_pass[c_over_a] == pytest.approx([0.70, 0.50, 0.60])
    line = next(x for x in report.ratio_lines(medians, per_pass) if x.startswith("c/a"))
    assert line.endswith("passes: 0.70 0.50 0.60")


def test_parse_counts_non_2xx_answers_and_every_socket_error() -> None:
    result = parse(FAILING_REPORT)
    assert result.errors == 12 + 1 + 2 + 3 + 4
    assert result.p99 == pytest.approx(2.0)


def test_parse_refuses_a_report_without_numbers() -> None:
    with pytest.raises(WrkFailed):
        parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_missing_wrk_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty PATH: no wrk, no redis-server
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench_lib", "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "wrk is not installed" in done.stderr
    assert "apt-get install wrk" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (scripts/test installs it)")
def test_quick_run_prints_every_row_ratio_and_memory_figure() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "CPUs (nproc)" in out
    assert "wrk -t2 -c50 -d1s --latency" in out
    for key in ("a", "b1", "b2", "c", "c0", "d", "e0", "e1", "e2"):
        row = re.search(
            rf"^{key}\s+.+\s(wrk|ws)\s+([\d,]+)\s+([\d.]+ms)\s+([\d.]+ms)\s+([\d,]+)\s+(\d+)\s+[\d.]+\s+([\d,]+us)\s+(\d+)%$",
            out,
            re.M,
        )
        assert row is not None, f"row {key} missing:\n{out}"
        assert int(row[2].replace(",", "")) > 0, row[0]
        assert row[6] == "0", f"row {key} had errors:\n{out}"
    for ratio in ("c/b1", "c/a", "c/c0", "d/b1", "e2/e1", "e1/e0", "p99 c/a"):
        assert re.search(rf"^{re.escape(ratio)}\s+.+\d+\.\d\dx", out, re.M), f"ratio {ratio} missing:\n{out}"
    assert re.search(r"^e2/e1\s+.+\d\.\d\dx\s+target ≥ 1\.0 ", out, re.M), out
    floor = r"above the WebSocket floor \(e0 [\d,]+us\): e1-e0 -?[\d,]+us, e2-e0 -?[\d,]+us$"
    assert re.search(floor, out, re.M), out
    for outstanding in ("1,000", "5,000"):
        assert re.search(
            rf"^\s+{outstanding}\s+[\d,]+ B \(n=\d+\)\s+[\d,]+ B  target ≤ 250 B (meets|MISSES)$", out, re.M
        ), out


def test_capacity_refuses_a_socket_count_out_of_bounds() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench_capacity"), "--sockets", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "--sockets must be between 1 and 50,000" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (scripts/test installs it)")
def test_quick_capacity_run_prints_rss_per_socket_and_both_rate_ratios() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench_capacity"), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^idle chat sockets: 1,000 opened in [\d.]+s \(1,000 open after 1 s", out, re.M), out
    assert re.search(r"^server CPU while they idle: \d+% of a core", out, re.M), out
    assert re.search(r"[\d.]+ KB per socket  target ≤ 100 KB (meets|MISSES)$", out, re.M), out
    for what in ("mint", "consume"):
        line = rf"^{what}\s+without\s+[\d,]+/s  with\s+[\d,]+/s  \d\.\d\dx  target ≥ 0\.8"
        assert re.search(line, out, re.M), out
