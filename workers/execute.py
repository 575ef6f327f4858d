"""One turn, start to finish: claim, walk the chain, stream, end with one terminal event.

:func:`execute` runs on the process's event loop (:mod:`workers.resources`):

1. **claim** the turn by id (:mod:`workers.claim`): a turn already finished, or running
   elsewhere, is left alone; one whose previous owner died after streaming ends with an
   ``error`` ``worker_lost`` instead of a second stream;
2. skip a turn already **cancelled** (``cancelled``) or past its **deadline**
   (``deadline_exceeded``);
3. **walk the chain** (:mod:`workers.chain`): failover before the first token is invisible;
   a refusal (``content_filtered``) or a bad request (``bad_request``) is returned; a failure
   after the first token ends the turn (``provider_failed_mid_stream``); every model down
   gives ``no_provider_available``, or the tier's last-resort text;
4. **stream** tokens, sentences and tool calls (:mod:`workers.publish`);
5. always exactly **one terminal event** (``done`` or ``error``), then one **ledger** event.

A cancel (the turn's task cancelled by the cancel listener) closes the provider stream at
once, publishes ``error`` ``cancelled`` and records the usage so far (estimated: the
provider reports usage only at the end of a stream).
"""

from __future__ import annotations

import asyncio
import logging
import time

from dispatcher.domain import ZERO, Usage
from dispatcher.errors import ContentFiltered
from dispatcher.policy.models import TierSpec
from dispatcher.providers import ChatRequest, Finish, StreamEvent, TextDelta, ToolCallDelta
from dispatcher.streaming import state_key
from dispatcher.turns import TurnJob
from workers.chain import Attempt, ChainWalk, WalkResult
from workers.claim import LEASE_S, Claim, claim
from workers.ledger import (
    LEDGER_STREAM,
    encode_ledger,
    ledger_event,
    money,
    status_of,
    usage_dict,
)
from workers.publish import Publisher
from workers.resources import Resources
from workers.sentences import SentenceSplitter

log = logging.getLogger(__name__)

#: How often a delivery of a turn another worker holds checks whether it is over.
BUSY_POLL_S = 0.5
#: Characters per token, to estimate the input of a call cut before its usage arrived.
CHARS_PER_TOKEN = 4


class Terminal:
    """The terminal event to publish: ``done`` or ``error`` with its code and message."""

    __slots__ = ("code", "kind", "message")

    def __init__(self, kind: str, code: str | None = None, message: str = "") -> None:
        self.kind, self.code, self.message = kind, code, message


def _error(code: str, message: str) -> Terminal:
    return Terminal("error", code, message)


async def execute(job: TurnJob, res: Resources) -> None:
    """Run one turn (see the module docstring). Provider errors become events, not raises."""
    await _Turn(job, res).run()


class _Turn:
    def __init__(self, job: TurnJob, res: Resources) -> None:
        self.job = job
        self.res = res
        self.turn_id = job["turn_id"]
        self.tier: TierSpec | None = res.policy.tiers.get(job["tier"])
        self.chain = list(job.get("chain") or (self.tier.models if self.tier else []))
        self.owner = res.new_owner()
        self.started_at = time.time()
        self.first_token_at: float | None = None
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, str]] = {}
        self.finish: Finish | None = None
        self.splitter = SentenceSplitter()
        self.walk: ChainWalk | None = None
        self.pub: Publisher | None = None
        self.last_resort = False

    # -- the run --------------------------------------------------------------------------

    async def run(self) -> None:
        res, turn_id = self.res, self.turn_id
        verdict = await claim(res.claim_script, turn_id, self.owner)
        # A live owner elsewhere: wait for it to finish, or for its lease to run out (it
        # died, e.g. a prefork child whose message was requeued at once). A true duplicate
        # must not leave the turn without its terminal event.
        polls = int((LEASE_S + BUSY_POLL_S) / BUSY_POLL_S)
        while verdict.verdict == "busy" and polls > 0:
            await asyncio.sleep(BUSY_POLL_S)
            polls -= 1
            verdict = await claim(res.claim_script, turn_id, self.owner)
        if verdict.verdict in ("finished", "busy"):
            log.info("turn %s: %s elsewhere; this delivery does nothing", turn_id, verdict.verdict)
            return
        self.pub = Publisher(res.append_script, turn_id, verdict.buffered,
                             res.settings.coalesce_ms / 1000)
        if verdict.buffered == 0:
            self._route_event()  # the ingress's seq 0 is missing: keep index == seq
        task = asyncio.current_task()
        assert task is not None
        res.track(turn_id, self.owner, task)
        terminal: Terminal | None = None
        try:
            terminal = await self._body(verdict)
        except asyncio.CancelledError:
            requested = turn_id in res.cancel_requested
            task.uncancel()
            terminal = (
                _error("cancelled", "the turn was cancelled")
                if requested
                else _error("worker_lost", "the worker stopped while running the turn")
            )
        except Exception as exc:
            log.exception("turn %s: failed unexpectedly", turn_id)
            terminal = _error("internal", f"the worker failed: {type(exc).__name__}")
        finally:
            res.untrack(turn_id)
            if terminal is None:  # a BaseException is on its way out
                terminal = _error("internal", "the worker stopped while running the turn")
            await self._finish(terminal)

    async def _body(self, verdict: Claim) -> Terminal:
        job, res = self.job, self.res
        if verdict.verdict == "lost":
            return _error(
                "worker_lost",
                "the worker running this turn died after it began streaming; "
                "the answer is not streamed a second time",
            )
        if verdict.cancelled or res.heard_cancel(self.turn_id):
            return _error("cancelled", "the turn was cancelled before it started")
        remaining = job["deadline_at"] - time.time()
        if remaining <= 0:
            return _error(
                "deadline_exceeded",
                f"the turn waited {time.time() - job['received_at']:.1f}s, past its deadline",
            )
        loop = asyncio.get_running_loop()
        self.walk = ChainWalk(
            chain=self.chain,
            policy=res.policy,
            clients=res.clients,
            make_request=self._request,
            sink=self._on_event,
            first_token_deadline=loop.time() + remaining,
            hedge_ms=self.tier.hedge_ms if self.tier else None,
            turn_id=self.turn_id,
        )
        result = await self.walk.run()
        return self._verdict(result)

    def _verdict(self, result: WalkResult) -> Terminal:
        if result.kind == "won":
            winner = result.winner
            assert winner is not None
            if winner.outcome == "ok":
                return Terminal("done")
            if winner.outcome == "refused":
                return self._refusal(winner)
            return _error(
                "provider_failed_mid_stream",
                f"{winner.provider}/{winner.model} failed after streaming began "
                f"({winner.error_class})",
            )
        if result.kind == "refused":
            assert result.refusal is not None
            return self._refusal(result.refusal)
        if result.kind == "deadline":
            return _error("deadline_exceeded", "no model answered before the turn's deadline")
        if self.tier is not None and self.tier.last_resort is not None:
            self._stream_last_resort(self.tier.last_resort.text)
            return Terminal("done")
        tried = len([a for a in self._attempts() if a.outcome != "skipped"])
        return _error("no_provider_available", f"all {tried} model(s) of the chain failed")

    def _refusal(self, attempt: Attempt) -> Terminal:
        if isinstance(attempt.error, ContentFiltered):
            return _error("content_filtered", f"{attempt.provider}/{attempt.model} refused")
        return _error("bad_request", f"{attempt.provider}/{attempt.model} rejected the request")

    # -- events ---------------------------------------------------------------------------

    def _request(self, model_id: str) -> ChatRequest:
        params = self.job["params"]
        model = self.res.policy.models[model_id]
        asked = params.get("max_tokens")
        cap = self.tier.max_output_tokens if self.tier else None
        max_tokens = min(asked, cap) if asked and cap else (asked or cap)
        return ChatRequest(
            model=model.api_model or model_id,
            messages=params["messages"],
            max_tokens=max_tokens,
            temperature=params.get("temperature"),
            stop=params.get("stop"),
            tools=params.get("tools"),
            tool_choice=params.get("tool_choice"),
        )

    def _on_event(self, attempt: Attempt, event: StreamEvent) -> None:
        pub = self.pub
        assert pub is not None
        # the first token names the model that answers (after any invisible failover)
        who: dict[str, str] = {}
        if self.first_token_at is None:
            self.first_token_at = time.time()
            who = {"model": attempt.model, "provider": attempt.provider}
        if isinstance(event, TextDelta):
            self.text.append(event.text)
            # a sentence completed by this delta goes before the delta's own text
            for sentence in self.splitter.feed(event.text):
                pub.sentence(sentence)
            if event.text:
                pub.emit("token", text=event.text, **who)
        elif isinstance(event, ToolCallDelta):
            slot = self.tool_calls.setdefault(event.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] = event.id or slot["id"]
            slot["name"] = event.name or slot["name"]
            slot["arguments"] += event.arguments
            pub.emit(
                "tool_call",
                index=event.index,
                id=event.id,
                name=event.name,
                arguments=event.arguments,
                **who,
            )
        else:
            self.finish = event

    def _route_event(self) -> None:
        assert self.pub is not None
        first = self.chain[0] if self.chain else None
        model = self.res.policy.models.get(first) if first else None
        self.pub.emit(
            "route",
            turn_id=self.turn_id,
            tier=self.job["tier"],
            model=first,
            provider=model.provider if model else None,
            rule=self.job.get("rule"),
            confidence=self.job.get("confidence"),
        )

    def _stream_last_resort(self, text: str) -> None:
        assert self.pub is not None
        self.last_resort = True
        self.first_token_at = time.time()
        self.text = [text]
        self.splitter.feed(text)  # spoken as a sentence too, flushed before done
        self.pub.token(text)
        self.finish = Finish("stop", Usage())

    # -- the end --------------------------------------------------------------------------

    def _attempts(self) -> list[Attempt]:
        return self.walk.attempts if self.walk else []

    def _usage(self, terminal: Terminal) -> tuple[Usage, bool, str | None, str | None]:
        """Usage, whether it is estimated, and the model and provider it is billed to."""
        walk = self.walk
        winner = walk.winner if walk else None
        if self.last_resort:
            return Usage(), False, None, None
        if winner is None:
            return Usage(), False, None, None
        if terminal.kind == "done" and self.finish is not None:
            return self.finish.usage, False, winner.model, winner.provider
        # cut short (cancel, mid-stream failure): the provider's count never came
        chars = sum(len(str(m.get("content") or "")) for m in self.job["params"]["messages"])
        estimate = Usage(input_tokens=chars // CHARS_PER_TOKEN + 1, output_tokens=winner.events)
        return estimate, True, winner.model, winner.provider

    async def _finish(self, terminal: Terminal) -> None:
        pub, res, job = self.pub, self.res, self.job
        assert pub is not None
        usage, estimated, model_id, provider = self._usage(terminal)
        model = res.policy.models.get(model_id) if model_id else None
        cost = model.cost(usage) if model else ZERO
        baseline = res.policy.baseline_cost(usage) if model else ZERO
        attempts = [a.record() for a in self._attempts()]
        finished_at = time.time()
        received = job["received_at"]
        ttft_ms = None if self.first_token_at is None else (self.first_token_at - received) * 1000
        if terminal.kind == "done":
            last = self.splitter.flush()
            if last:
                pub.sentence(last)
            text = "".join(self.text)
            await pub.close(
                "done",
                turn_id=self.turn_id,
                usage=usage_dict(usage),
                cost_usd=money(cost),
                baseline_cost_usd=money(baseline),
                ttft_ms=_round(ttft_ms),
                total_ms=_round((finished_at - received) * 1000),
                model=model_id or ("last_resort" if self.last_resort else None),
                provider=provider,
                attempts=attempts,
                finish_reason=self.finish.reason if self.finish else None,
                text=text,
                tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)],
                last_resort=self.last_resort,
            )
        else:
            await pub.close(
                "error",
                turn_id=self.turn_id,
                code=terminal.code,
                message=terminal.message,
                attempts=attempts,
            )
        status = status_of(terminal.kind, terminal.code)
        event = ledger_event(
            job,
            terminal=terminal.kind,
            code=terminal.code,
            chain=self.chain,
            attempts=attempts,
            provider=provider,
            model=model_id,
            usage=usage,
            usage_estimated=estimated,
            cost=cost,
            baseline_cost=baseline,
            started_at=self.started_at,
            first_token_at=self.first_token_at,
            finished_at=finished_at,
            finish_reason=self.finish.reason if self.finish else None,
            answer_chars=sum(len(t) for t in self.text),
            last_resort=self.last_resort,
            worker=self.owner,
        )
        state = {"finished_at": repr(finished_at), "status": str(status)}
        # both in one write on the hot connection, right behind the terminal event
        fields = [x for kv in encode_ledger(event).items() for x in kv]
        await asyncio.gather(
            res.pipeline.call("HSET", state_key(self.turn_id),
                              *(x for kv in state.items() for x in kv)),
            res.pipeline.call("XADD", LEDGER_STREAM, "*", *fields),
        )
        log.info(
            "turn %s: %s%s on %s in %.0f ms, %d events in %d flushes, cost %s",
            self.turn_id,
            terminal.kind,
            f" ({terminal.code})" if terminal.code else "",
            model_id or "-",
            (finished_at - self.started_at) * 1000,
            pub.published,
            pub.flushes,
            money(cost),
        )


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)
