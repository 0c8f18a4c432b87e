"""/api/v1/assistants: the caller's own assistants only."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from edge.api.endpoint import Call, Endpoint, json_response
from edge.api.models import Assistant, AssistantCreate, AssistantPage, AssistantPatch, patch_changes
from edge.api.pages import PAGE_PARAMS, iso, page
from edge.errors import not_found
from projections.assistants import settings_of


def assistant_body(row: dict[str, Any]) -> msgspec.Struct:  # an Assistant
    fields = {"assistant_id": row["assistant_id"], **settings_of(row)}
    fields["greeting"] = fields["greeting"] or None  # "" is how a cleared greeting is stored
    return Assistant(**fields, created_at=iso(row["created_ts"]), updated_at=iso(row["updated_ts"]))


async def read_assistant(call: Call, assistant_id: str) -> msgspec.Struct:  # an Assistant
    rows = await call.services.query("assistant", assistant_id=assistant_id, owner_id=call.user_id)
    if not rows:
        raise not_found("assistant", assistant_id)
    return assistant_body(rows[0])


async def list_assistants(call: Call) -> Response:
    items, cursor = await page(call, "assistants", "assistant_id", assistant_body, owner_id=call.user_id)
    return json_response(AssistantPage(items=items, next_cursor=cursor))


async def create_assistant(call: Call) -> Response:
    body: msgspec.Struct = call.body  # an AssistantCreate
    assistant_id = await call.services.assistants.create(call.user_id, msgspec.structs.asdict(body))
    return json_response(await read_assistant(call, assistant_id), 201,
                         {"Location": f"/api/v1/assistants/{assistant_id}"})


async def get_assistant(call: Call) -> Response:
    return json_response(await read_assistant(call, call.params["assistant_id"]))


async def update_assistant(call: Call) -> Response:
    body: msgspec.Struct = call.body  # an AssistantPatch
    assistant_id = call.params["assistant_id"]
    await call.services.assistants.update(call.user_id, assistant_id, patch_changes(body))
    return json_response(await read_assistant(call, assistant_id))


async def delete_assistant(call: Call) -> Response:
    me = await call.services.accounts.require(call.user_id)
    await call.services.assistants.delete(me, call.params["assistant_id"])
    return Response(status_code=204)


ENDPOINTS = (
    Endpoint("GET", "/api/v1/assistants", list_assistants, "Your assistants, a page at a time",
             "assistants", answer=AssistantPage, query=PAGE_PARAMS),
    Endpoint("POST", "/api/v1/assistants", create_assistant, "Create an assistant", "assistants",
             status=201, body=AssistantCreate, answer=Assistant, errors=(422,)),
    Endpoint("GET", "/api/v1/assistants/{assistant_id}", get_assistant, "One of your assistants",
             "assistants", answer=Assistant, errors=(404,)),
    Endpoint("PATCH", "/api/v1/assistants/{assistant_id}", update_assistant,
             "Change some of an assistant's settings", "assistants", body=AssistantPatch,
             answer=Assistant, errors=(404, 409, 422)),
    Endpoint("DELETE", "/api/v1/assistants/{assistant_id}", delete_assistant, "Delete an assistant",
             "assistants", status=204, errors=(404, 409)),
)
