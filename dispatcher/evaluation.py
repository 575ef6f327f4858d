"""Routing quality on a labelled dataset: confusion matrix, under/over-routing, cost.

A dataset is JSON lines with ``text``, optional ``messages``, ``state``, ``session``
(``{"tier", "turns_ago"}``), ``id`` and, for evaluation, ``expected_tier``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from dispatcher.domain import Decision, SessionSnapshot, Tier, Usage
from dispatcher.policy.models import Policy
from dispatcher.routing import Router
from dispatcher.routing.text import estimate_tokens

# Typical answer lengths per tier, used only to price the routed mix against the baseline
# (the router does not know how long an answer will be; a ledger does, afterwards).
ASSUMED_OUTPUT_TOKENS = {"fast": 30, "standard": 120, "reasoning": 400, "long_context": 300}
COMPLEX = {Tier.REASONING.value}
SIMPLE = {Tier.FAST.value, Tier.STANDARD.value}


class DatasetError(ValueError):
    """Raised when a dataset line is not a JSON object with a text."""


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    text: str
    messages: list[dict[str, Any]]
    state: dict[str, Any]
    session: SessionSnapshot | None
    expected_tier: str | None


def parse_example(line: str, lineno: int) -> Example:
    """One dataset line; raise :class:`DatasetError` naming the line and the problem."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"line {lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"line {lineno}: expected a JSON object")
    text = obj.get("text")
    if not isinstance(text, str):
        raise DatasetError(f"line {lineno}: 'text' must be a string")
    messages = obj.get("messages") or []
    state = obj.get("state") or {}
    if not isinstance(messages, list) or not isinstance(state, dict):
        raise DatasetError(f"line {lineno}: 'messages' must be a list and 'state' an object")
    sess = obj.get("session")
    snapshot = None
    if isinstance(sess, dict) and sess.get("tier"):
        snapshot = SessionSnapshot(tier=str(sess["tier"]), turns_ago=int(sess.get("turns_ago", 1)))
    expected = obj.get("expected_tier")
    return Example(
        id=str(obj.get("id", lineno)),
        text=text,
        messages=messages,
        state=state,
        session=snapshot,
        expected_tier=str(expected) if expected is not None else None,
    )


def read_examples(path: Path) -> Iterator[Example]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield parse_example(line, lineno)


def route_example(router: Router, ex: Example) -> Decision:
    return router.route(ex.text, ex.messages, ex.state, ex.session)


@dataclass
class Report:
    tiers: list[str]
    matrix: dict[str, dict[str, int]]  # expected -> routed -> count
    total: int = 0
    correct: int = 0
    under: int = 0
    over: int = 0
    routed_cost: Decimal = Decimal(0)
    baseline_cost: Decimal = Decimal(0)
    mistakes: list[tuple[Example, Decision]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def rate(self, expected: set[str], routed: set[str]) -> float:
        """Share of turns expected in ``expected`` that were routed to ``routed``."""
        n = sum(sum(self.matrix[e].values()) for e in expected if e in self.matrix)
        hit = sum(
            self.matrix[e][r]
            for e in expected
            if e in self.matrix
            for r in routed
            if r in self.matrix[e]
        )
        return hit / n if n else 0.0

    def as_dict(self) -> dict[str, Any]:
        savings = self.baseline_cost - self.routed_cost
        return {
            "turns": self.total,
            "accuracy": round(self.accuracy, 4),
            "under_routed": round(self.under / self.total, 4) if self.total else 0.0,
            "over_routed": round(self.over / self.total, 4) if self.total else 0.0,
            "complex_to_fast": round(self.rate(COMPLEX, {"fast"}), 4),
            "complex_to_reasoning": round(self.rate(COMPLEX, {"reasoning"}), 4),
            "simple_to_reasoning_or_long": round(
                self.rate(SIMPLE, {"reasoning", "long_context"}), 4
            ),
            "confusion": self.matrix,
            "routed_cost_usd": str(self.routed_cost),
            "baseline_cost_usd": str(self.baseline_cost),
            "savings_usd": str(savings),
            "savings_pct": round(float(savings / self.baseline_cost * 100), 2)
            if self.baseline_cost
            else 0.0,
        }


def evaluate(policy: Policy, examples: list[Example], router: Router | None = None) -> Report:
    router = router or Router(policy)
    tiers = list(policy.tiers)
    rank = {t: i for i, t in enumerate(tiers)}
    report = Report(tiers=tiers, matrix={t: dict.fromkeys(tiers, 0) for t in tiers})
    for ex in examples:
        if ex.expected_tier is None:
            raise DatasetError(f"example {ex.id}: no expected_tier")
        if ex.expected_tier not in rank:
            raise DatasetError(f"example {ex.id}: unknown expected_tier {ex.expected_tier!r}")
        d = route_example(router, ex)
        report.total += 1
        report.matrix[ex.expected_tier][d.tier] += 1
        if d.tier == ex.expected_tier:
            report.correct += 1
        else:
            report.mistakes.append((ex, d))
            if rank[d.tier] < rank[ex.expected_tier]:
                report.under += 1
            else:
                report.over += 1
        usage = _assumed_usage(ex, d)
        report.routed_cost += policy.models[d.model].cost(usage)
        report.baseline_cost += policy.baseline_cost(usage)
    return report


def _assumed_usage(ex: Example, d: Decision) -> Usage:
    chars = len(ex.text) + sum(len(str(m.get("content", ""))) for m in ex.messages)
    out = ASSUMED_OUTPUT_TOKENS.get(ex.expected_tier or d.tier, 120)
    return Usage(input_tokens=estimate_tokens(chars), output_tokens=out)


def plot_report(report: Report, path: Path) -> None:
    """Confusion matrix and the cost of the routed mix against the all-baseline cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = report.tiers
    grid = [[report.matrix[e][r] for r in tiers] for e in tiers]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    im = ax1.imshow(grid, cmap="Blues")
    ax1.set_xticks(range(len(tiers)), tiers, rotation=30)
    ax1.set_yticks(range(len(tiers)), tiers)
    ax1.set_xlabel("routed tier")
    ax1.set_ylabel("expected tier")
    ax1.set_title(f"Routing confusion (accuracy {report.accuracy:.1%}, n={report.total})")
    peak = max(max(row) for row in grid) or 1
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax1.text(
                j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black"
            )
    fig.colorbar(im, ax=ax1, fraction=0.046)
    costs = [float(report.routed_cost), float(report.baseline_cost)]
    bars = ax2.bar(["routed mix", "all baseline"], costs, color=["tab:green", "tab:gray"])
    ax2.bar_label(bars, labels=[f"${c:.4f}" for c in costs])
    ax2.set_ylabel("USD (assumed answer lengths)")
    ax2.set_title("Cost of the routed mix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def decision_json(ex_id: str | None, d: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {} if ex_id is None else {"id": ex_id}
    out.update(
        tier=d.tier,
        model=d.model,
        chain=list(d.chain),
        rule=d.rule,
        confidence=d.confidence,
        features=d.features,
    )
    return out


def parse_state_pairs(pairs: list[str]) -> dict[str, str]:
    """``["last_bot_act=ask_yes_no", ...]`` -> dict; raise ValueError naming a bad pair."""
    state: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--state {pair!r}: expected key=value")
        state[key.strip()] = value.strip()
    return state
