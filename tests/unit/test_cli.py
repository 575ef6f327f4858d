"""The command line, run as a user runs it: the installed ``dispatcher`` in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.settings import DEFAULT_POLICY_PATH

DATA = Path(__file__).parents[1] / "data"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("dispatcher") or str(Path(sys.executable).parent / "dispatcher")
    return subprocess.run([exe, *args], capture_output=True, text=True, input=stdin,
                          timeout=60, check=False)


def test_route_prints_tier_and_rule() -> None:
    result = run("route", "uh yeah that works", "--state", "last_bot_act=ask_yes_no")
    assert result.returncode == 0, result.stderr
    assert "tier fast" in result.stdout
    assert "rule short-social" in result.stdout


def test_route_json() -> None:
    result = run("route", "write a python function to sort a list", "--json")
    decision = json.loads(result.stdout)
    assert decision["tier"] == "reasoning"
    assert decision["rule"] == "code"
    assert decision["model"] == "gpt-4o"
    assert {"tier", "model", "rule", "confidence"} <= decision.keys()


def test_route_after_reasoning_keeps_the_tier() -> None:
    result = run("route", "ok do that", "--after", "reasoning", "--json")
    assert json.loads(result.stdout)["rule"] == "session-follow-up"


def test_route_bad_state_pair_is_a_usage_error() -> None:
    result = run("route", "yes", "--state", "nonsense")
    assert result.returncode == 2
    assert "expected key=value" in result.stderr


def test_route_file_keeps_order_and_reports_bad_lines(tmp_path: Path) -> None:
    # Given three turns, the second one malformed
    turns = tmp_path / "turns.jsonl"
    turns.write_text(
        json.dumps({"id": "a", "text": "yes", "state": {"expecting": "yes_no"}}) + "\n"
        + "{not json\n"
        + json.dumps({"id": "c", "text": "summarize this call",
                      "messages": [{"role": "user", "content": "hi"}]}) + "\n"
    )
    # When they are routed as a batch
    result = run("route", "--file", str(turns))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # Then one line comes out per line in, in order, the bad one named
    assert [d.get("id") for d in lines] == ["a", None, "c"]
    assert lines[0]["tier"] == "fast"
    assert lines[1]["line"] == 2 and "not valid JSON" in lines[1]["error"]
    assert lines[2]["tier"] == "long_context"
    assert result.returncode == 1


def test_policy_check_good_file() -> None:
    result = run("policy", "check", str(DEFAULT_POLICY_PATH))
    assert result.returncode == 0, result.stderr
    assert "long_context" in result.stdout


def test_policy_check_bad_file_lists_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_POLICY_PATH.read_text().replace("baseline_model: gpt-4o",
                                                           "baseline_model: gpt-5x"))
    result = run("policy", "check", str(bad))
    assert result.returncode == 1
    assert f"{bad}: baseline_model: unknown model 'gpt-5x'" in result.stderr


def test_eval_prints_matrix_rates_and_cost(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    rows = [
        {"text": "yes", "expected_tier": "fast"},
        {"text": "write a python function to merge two dicts", "expected_tier": "reasoning"},
        {"text": "summarize this call", "expected_tier": "long_context"},
        {"text": "book me a table for four on friday", "expected_tier": "fast"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("eval", str(data), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["turns"] == 4
    assert summary["accuracy"] == 0.75
    assert summary["over_routed"] == 0.25  # the booking went to standard
    assert summary["confusion"]["fast"]["standard"] == 1
    assert float(summary["savings_pct"]) > 0


def test_eval_plot_writes_a_png(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "yes", "expected_tier": "fast"}) + "\n")
    png = tmp_path / "eval.png"
    result = run("eval", str(data), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_unknown_tier_in_dataset_is_named(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "x1", "text": "yes", "expected_tier": "turbo"}) + "\n")
    result = run("eval", str(data))
    assert result.returncode == 1
    assert "x1" in result.stderr and "turbo" in result.stderr


@pytest.mark.parametrize("name", ["holdout", "final", "blind", "probe"])
def test_router_meets_the_quality_bar_on_the_labelled_sets(name: str) -> None:
    result = run("eval", str(DATA / f"turns_{name}.jsonl"), "--json")
    summary = json.loads(result.stdout)
    assert summary["turns"] >= 50
    assert summary["accuracy"] >= 0.90
    assert summary["complex_to_fast"] <= 0.01
    assert summary["complex_to_reasoning"] >= 0.90
    assert summary["simple_to_reasoning_or_long"] <= 0.05


def test_bench_route_reports_percentiles() -> None:
    result = run("bench", "route", "-n", "500", "--json")
    cases = json.loads(result.stdout)["cases"]
    assert cases[0]["words"] >= 25
    assert 0 < cases[0]["p50_us"] <= cases[0]["p99_us"]
