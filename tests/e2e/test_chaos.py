"""The chaos run's short version (issue 13 item 4): ``scripts/chaos --short`` as a user runs it.

Two real nodes on one real redis-server (Redis SIGSTOPped, SIGKILLed and restarted empty, a node
SIGKILLed and restarted) and on a Sentinel group (a forced failover), under racing mints and
consumes. The script exits 1 when an invariant breaks; this test also reads its figures, so a
run where the faults did not bite, or nothing was consumed, fails too.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_the_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    figures_path = tmp_path / "chaos.json"
    run = subprocess.run(
        [str(ROOT / "scripts" / "chaos"), "--short", "--deadline", "200", "--json", str(figures_path)],
        capture_output=True,
        text=True,
        timeout=230,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    runs = {entry["label"].split()[0]: entry for entry in json.loads(figures_path.read_text())}
    assert set(runs) == {"redis", "sentinel"}, report
    for entry in runs.values():
        assert entry["broken"] == [], report
        assert entry["double_spent"] == 0 and entry["accepted_after_consumed"] == 0, report
        assert entry["server_errors"] == 0 and entry["hung"] == 0, report
        assert entry["minted"] > 50 and entry["tokens_consumed"] > 50, report
        # Every token was raced (three at once) and presented again: most answers are refusals.
        assert entry["consumes_refused"].get("token_spent", 0) >= entry["tokens_consumed"], report
        for fault in entry["faults"]:
            assert fault["recovered_after_restore"] is not None, report
    faults = {f["name"].split(",")[0]: f for f in runs["redis"]["faults"]}
    # The faults bit: a restarted Redis and a killed node each refused some requests.
    assert faults["redis SIGKILL"]["failures"] > 0 and faults["node chaos-b SIGKILL"]["failures"] > 0, report
    assert runs["redis"]["agents_reregistered"] >= 1, report  # the killed node's agent moved
    assert "| **double-spent** (must be 0) | 0 | 0 |" in run.stdout, report
