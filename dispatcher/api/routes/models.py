"""``GET /v1/models``: ``auto``, the tiers and the models of the policy, OpenAI's list shape."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from dispatcher.api.deps import RuntimeDep, Tenant

router = APIRouter()


@router.get("/v1/models")
async def list_models(rt: RuntimeDep, tenant: Tenant) -> Response:
    routing = rt.policies.current
    policy = routing.policy
    created = int(routing.loaded_at)
    data: list[dict[str, Any]] = [{
        "id": "auto", "object": "model", "created": created, "owned_by": "dispatcher",
        "dispatcher": {"kind": "router", "policy_version": policy.version},
    }]
    for name, spec in policy.tiers.items():
        data.append({
            "id": name, "object": "model", "created": created, "owned_by": "dispatcher",
            "dispatcher": {"kind": "tier", "chain": list(spec.models),
                           "queue": policy.queue(name)},
        })
    for mid, model in policy.models.items():
        data.append({
            "id": mid, "object": "model", "created": created, "owned_by": model.provider,
            "dispatcher": {"kind": "model", "context_window": model.context_window,
                           "tier": routing.model_tier.get(mid)},
        })
    return Response(orjson.dumps({"object": "list", "data": data}),
                    media_type="application/json")
