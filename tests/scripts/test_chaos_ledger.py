"""The chaos run's bookkeeping (scripts/chaos_lib/ledger.py): each invariant it checks is caught
when broken, so a clean table means something."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.chaos_lib.ledger import Attempt, Fault, Ledger, Token, is_server_error
from scripts.chaos_lib.report import Result, tables

ROOT = Path(__file__).resolve().parents[2]


def ledger_with(*outcomes: tuple[float, float, str]) -> tuple[Ledger, Token]:
    ledger = Ledger(clock=0.0)
    ledger.note_mint("ok")
    token = Token("cht_x", "agent", 0.0)
    ledger.tokens.append(token)
    for started, ended, outcome in outcomes:
        ledger.note_consume(token, Attempt("node", started, ended, outcome))
    return ledger, token


def test_a_clean_race_breaks_nothing() -> None:
    ledger, _ = ledger_with((1.0, 1.1, "ok"), (1.0, 1.1, "token_spent"), (3.0, 3.1, "token_spent"))
    assert ledger.broken() == []
    assert ledger.consumes() == {"ok": 1, "token_spent": 2}


def test_two_sessions_for_one_token_are_a_double_spend() -> None:
    ledger, _ = ledger_with((1.0, 1.1, "ok"), (1.0, 1.2, "ok"))
    assert len(ledger.double_spent()) == 1
    assert any("more than one session" in p for p in ledger.broken())


def test_an_accept_after_a_spent_answer_is_caught() -> None:
    """token_spent answered at 1.1 s, then a consume started at 2 s opened a session."""
    ledger, _ = ledger_with((1.0, 1.1, "token_spent"), (2.0, 2.1, "ok"))
    assert len(ledger.late_accepted()) == 1 and not ledger.double_spent()
    assert any("accepted after being reported consumed" in p for p in ledger.broken())


def test_an_accept_racing_a_spent_answer_is_not_late() -> None:
    """Overlapping attempts may answer in any order: only a later start counts."""
    ledger, _ = ledger_with((1.0, 1.3, "ok"), (1.0, 1.1, "token_spent"))
    assert ledger.late_accepted() == []


def test_a_store_outage_refusal_is_clean_and_other_5xx_are_not() -> None:
    assert not is_server_error("store_unavailable")
    assert is_server_error("http 500 None") and is_server_error("http 503 draining")
    assert is_server_error("close 1011 internal_error") and is_server_error("handshake 502")
    ledger, _ = ledger_with((1.0, 1.1, "store_unavailable"), (1.0, 1.2, "close 1011 internal_error"))
    ledger.note_mint("http 500 None")
    assert len(ledger.server_errors) == 2
    assert any("5xx" in p for p in ledger.broken())


def test_hangs_unknown_answers_and_unrecovered_faults_break_the_run() -> None:
    ledger, _ = ledger_with((1.0, 1.1, "ok"), (1.0, 11.0, "hung"), (1.0, 1.1, "frame chat.error"))
    ledger.faults.append(Fault("redis SIGSTOP", 0.5, restored=1.0))
    problems = ledger.broken()
    assert any("no answer within the timeout" in p for p in problems)
    assert any("unexpected answers" in p for p in problems)
    assert any("no recovery after redis SIGSTOP" in p for p in problems)


def test_a_run_that_consumed_nothing_proves_nothing() -> None:
    ledger = Ledger(clock=0.0)
    assert any("proves nothing" in p for p in ledger.broken())


def test_the_table_has_a_column_per_run_and_a_row_per_fault() -> None:
    ledger, _ = ledger_with((1.0, 1.1, "ok"), (1.0, 1.1, "token_spent"))
    ledger.faults.append(Fault("node b SIGKILL", 0.5, restored=1.5, recovered=0.25, failures=7))
    text = tables([Result("redis (2 nodes)", ledger, 10.0), Result("sentinel (2 nodes)", Ledger(0.0), 5.0)])
    assert "| | redis (2 nodes) | sentinel (2 nodes) |" in text
    assert "| **double-spent** (must be 0) | 0 | 0 |" in text
    assert "| redis (2 nodes) | node b SIGKILL | 0.5 s | 1.0 s | 0.25 s | 7 |" in text


def test_bad_options_exit_2_with_the_choices_before_anything_starts() -> None:
    """Exit 1 is kept for a broken invariant; a typo in a fault name must not read as one."""
    for args in (["--store", "nope"], ["--store", "redis,sentinel", "--sentinel-faults", "boom"]):
        run = subprocess.run(
            [sys.executable, "-m", "scripts.chaos_lib", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert run.returncode == 2 and "scripts/chaos: unknown" in run.stderr, run.stderr
