"""``dispatcher demo``: a scripted voice call through the whole stack on one machine."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Step:
    bot: str  # what the bot said before this turn
    user: str  # the caller's transcript
    state: dict[str, str]


# An internet provider's support line: small talk, troubleshooting, lookups, a booking,
# arithmetic, a comparison, and a summary at the end. Transcripts as speech recognition
# gives them: lower case, no punctuation, fillers.
SCRIPT: tuple[Step, ...] = (
    Step(
        "Thanks for calling Northwind Internet. How can I help you today?",
        "hi um yeah my internet keeps dropping out since the firmware update last night "
        "and i already restarted the router twice",
        {"last_bot_act": "greeting"},
    ),
    Step(
        "Sorry about that. I can push a fix to your router remotely. Shall I do that?",
        "ok do that",
        {"last_bot_act": "ask_yes_no", "expecting": "yes_no"},
    ),
    Step(
        "Done, the router is restarting. Is your connection back?",
        "yes it's back now",
        {"last_bot_act": "ask_yes_no", "expecting": "yes_no"},
    ),
    Step(
        "Great. Anything else I can help with?",
        "uh what time does the store on main street close today",
        {"last_bot_act": "ask_open_question"},
    ),
    Step(
        "The Main Street store closes at 7 pm today.",
        "do you have parking there",
        {"last_bot_act": "provide_info"},
    ),
    Step(
        "Yes, there is free parking behind the store.",
        "i'd like to book an appointment to swap my old modem for the new one on saturday morning",
        {"last_bot_act": "provide_info"},
    ),
    Step(
        "Saturday at 10 am is free. Shall I book it?",
        "yes please",
        {"last_bot_act": "ask_yes_no", "expecting": "yes_no"},
    ),
    Step(
        "Booked for Saturday at 10 am.",
        "and how much more would i pay over a year if i go to the 500 megabit plan at 65 a "
        "month instead of 45",
        {"last_bot_act": "provide_info"},
    ),
    Step(
        "That would be 240 dollars more a year.",
        "hmm should i go with the 500 plan or stay on 300 if we mostly stream and i work from home",
        {"last_bot_act": "provide_info"},
    ),
    Step(
        "For streaming and video calls, 300 is usually plenty.",
        "hold on a sec",
        {"last_bot_act": "provide_info"},
    ),
    Step(
        "Sure, take your time.",
        "ok we'll stay on the current plan",
        {"last_bot_act": "ask_open_question"},
    ),
    Step(
        "Noted, you stay on 300 megabits.",
        "can you summarize what we did on this call",
        {"last_bot_act": "ask_open_question"},
    ),
    Step(
        "We fixed your router, booked a modem swap, and kept your plan.",
        "great thanks bye",
        {"last_bot_act": "ask_open_question"},
    ),
)


async def play(ingress_url: str, api_key: str, console: Console) -> dict[str, Any]:
    """Play SCRIPT through the ingress; print one row per turn and the totals."""
    from dispatcher.client import stream_turn

    session = f"demo-{uuid.uuid4().hex[:8]}"
    history: list[dict[str, str]] = []
    table = Table(title=f"voice call {session} through {ingress_url}")
    for col, just in (
        ("#", "right"),
        ("caller said", "left"),
        ("tier", "left"),
        ("model", "left"),
        ("rule", "left"),
        ("ttft ms", "right"),
        ("cost USD", "right"),
    ):
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    total, baseline = Decimal(0), Decimal(0)
    failures = 0
    async with httpx.AsyncClient() as client:
        for i, step in enumerate(SCRIPT, 1):
            history.append({"role": "assistant", "content": step.bot})
            body = {
                "session_id": session,
                "text": step.user,
                "messages": list(history),
                "state": step.state,
            }
            result = await stream_turn(client, ingress_url, api_key, body)
            route, term = result.route, result.terminal
            ok = term is not None and term.event == "done"
            failures += not ok
            model = (term.data.get("model") if ok and term else None) or route.get("model", "?")
            total += result.cost
            baseline += result.baseline_cost
            table.add_row(
                str(i),
                step.user if len(step.user) <= 34 else step.user[:31] + "...",
                route.get("tier", "?"),
                str(model),
                route.get("rule", "?"),
                f"{result.ttft_ms:.0f}" if result.ttft_ms is not None else "-",
                f"{result.cost:.6f}" if ok else f"[red]{term.data.get('code') if term else '?'}",
            )
            # the next step's bot line stands for the answer the caller heard
            history.append({"role": "user", "content": step.user})
    console.print(table)
    saved = baseline - total
    pct = (saved / baseline * 100) if baseline else Decimal(0)
    console.print(
        f"total ${total:.6f}  vs  all-baseline ${baseline:.6f}: saves ${saved:.6f} ({pct:.1f}%)"
    )
    return {
        "session": session,
        "turns": len(SCRIPT),
        "failures": failures,
        "cost_usd": total,
        "baseline_cost_usd": baseline,
    }


def run_demo(console: Console) -> int:
    """Start everything, play the call, show the ledger, stop everything."""
    from dispatcher.errors import DispatcherError
    from dispatcher.stack import running_stack

    try:
        with (
            console.status("starting redis, simulator, ingress, one worker per tier..."),
            running_stack() as stack,
        ):
            pass_key = _create_key(stack.redis_url)
            console.print(
                f"stack up: ingress {stack.ingress_url}, simulator {stack.sim_url}, "
                f"redis {stack.redis_url}{' (started here)' if stack.started_redis else ''}"
            )
            since = datetime.now(UTC)
            result = asyncio.run(play(stack.ingress_url, pass_key, console))
            _show_ledger(stack.database_url, since, result["turns"], console)
    except DispatcherError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted; everything started here has been stopped")
        return 130
    return 0 if result["failures"] == 0 else 1


def _create_key(redis_url: str) -> str:
    from dispatcher.auth import create_key, with_redis

    return with_redis(redis_url, lambda r: create_key(r, "demo"))


def _show_ledger(database_url: str, since: datetime, turns: int, console: Console) -> None:
    """The ledger's summary of this call, read back from its database (the writer fills it
    from the Redis stream in batches, so wait until every turn's row is there)."""
    from sqlalchemy.orm import Session

    from dispatcher.ledger import queries
    from dispatcher.ledger.cli import render_summary
    from dispatcher.ledger.db import make_engine

    engine = make_engine(database_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            with Session(engine) as session:
                summary = queries.summary(session, tenant="demo", since=since,
                                          group_by=("tier",))
            if summary.total.agg.turns >= turns or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        render_summary(summary, console)
    finally:
        engine.dispose()
