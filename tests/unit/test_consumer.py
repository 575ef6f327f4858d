"""Decoding the Celery messages the native engine takes (:func:`workers.consumer.decode_task`)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from dispatcher.api.enqueue import TaskMessages
from dispatcher.turns import RUN_TURN_TASK
from workers.consumer import BadMessage, decode_task
from workers.native import pool_argv

JOB: dict[str, Any] = {
    "turn_id": "t1",
    "tier": "fast",
    "params": {"messages": [{"role": "user", "content": "hi"}]},
    "received_at": 1.0,
    "deadline_at": 9.0,
}


def _message(job: Any = JOB, task: str = RUN_TURN_TASK) -> bytes:
    return TaskMessages().build(task, [job], task_id="t1", queue="turns.fast", argsrepr="()")


def test_decodes_the_job_of_a_protocol_2_message() -> None:
    assert decode_task(_message()) == JOB


def test_decodes_a_job_passed_as_a_keyword() -> None:
    message = orjson.loads(_message())
    body = [[], {"job": JOB}, {}]
    message["body"] = base64.b64encode(orjson.dumps(body)).decode()
    assert decode_task(orjson.dumps(message)) == JOB


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not a Celery protocol-2 message"),
        (b"{}", "not a Celery protocol-2 message"),
        (_message(task="other.task"), "'other.task' is not 'dispatcher.run_turn'"),
        (_message(job={"turn_id": "t1"}), "missing tier, params, received_at, deadline_at"),
        (_message(job={**JOB, "params": "hi"}), "params is not an object"),
        (_message(job=["a list"]), "the job is a list, not an object"),
    ],
)
def test_names_what_is_wrong_with_a_bad_message(raw: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason.replace("(", r"\(")):
        decode_task(raw)


def test_a_pool_child_runs_the_same_command_without_the_pool_option() -> None:
    argv = ["--tier", "fast", "--processes", "3", "--concurrency", "64", "--processes=2"]
    assert pool_argv(argv) == ["--tier", "fast", "--concurrency", "64"]
