"""The ingress's hand-built Celery message matches what ``send_task`` would send."""

from __future__ import annotations

import base64
import json

from celery import Celery

from dispatcher.api.enqueue import TaskMessages
from dispatcher.turns import RUN_TURN_TASK

JOB = {"turn_id": "t-123", "tier": "fast", "params": {"messages": []}}


def test_message_has_celery_protocol_2_headers_and_body() -> None:
    # Given Celery's own protocol-2 message for the same send_task call
    app = Celery("ingress-test", broker="memory://", set_as_current=False)
    celery_msg = app.amqp.as_task_v2(
        "t-123", RUN_TURN_TASK, args=[JOB], kwargs={}, ignore_result=True,
        argsrepr="[turn t-123]", kwargsrepr="{}",
    )
    # When the ingress builds its message
    ours = json.loads(TaskMessages().build(RUN_TURN_TASK, [JOB], task_id="t-123",
                                           queue="turns.fast", argsrepr="[turn t-123]"))
    # Then the headers are Celery's (origin is the producer's own)
    theirs = dict(celery_msg.headers)
    for headers in (theirs, ours["headers"]):
        headers.pop("origin")
    assert ours["headers"] == json.loads(json.dumps(theirs))
    # and the body decodes to Celery's (args, kwargs, embed)
    body = json.loads(base64.b64decode(ours["body"]))
    assert body == json.loads(json.dumps(list(celery_msg.body)))
    # and the envelope is the Redis transport's
    props = ours["properties"]
    assert props["delivery_info"] == {"exchange": "", "routing_key": "turns.fast"}
    assert props["body_encoding"] == "base64" and props["priority"] == 0
    assert props["correlation_id"] == "t-123"
    assert ours["content-type"] == "application/json"


def test_delivery_tags_are_unique() -> None:
    messages = TaskMessages()
    tags = {json.loads(messages.build(RUN_TURN_TASK, [JOB], task_id="t", queue="q",
                                      argsrepr=""))["properties"]["delivery_tag"]
            for _ in range(100)}
    assert len(tags) == 100
