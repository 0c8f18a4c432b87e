"""/api/v1/devices: activation codes for devices, binding and unbinding for their owners."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from edge.api.endpoint import Call, Endpoint, json_response
from edge.api.models import Activation, ActivationRequest, BoundDevice, Device, DeviceBind, DevicePage
from edge.api.pages import PAGE_PARAMS, iso, page
from edge.errors import not_found


def device_body(row: dict[str, Any]) -> Device:
    return Device(device_id=row["device_id"], assistant_id=row["assistant_id"], name=row["name"],
                  bound_at=iso(row["bound_ts"]))


async def request_activation(call: Call) -> Response:
    body: ActivationRequest = call.body
    return json_response(await call.services.devices.activation(body.device_id, body.client_id))


async def bind_device(call: Call) -> Response:
    body: DeviceBind = call.body
    user = await call.services.accounts.require(call.user_id)
    assistant_id = body.assistant_id or user.default_assistant_id
    if assistant_id is None:
        raise not_found("assistant", "default")
    await call.services.assistants.owned(call.user_id, assistant_id)
    binding, token = await call.services.devices.bind(user, body.code, assistant_id, body.name)
    rows = await call.services.query("device", device_id=binding.device_id, user_id=call.user_id)
    return json_response(BoundDevice(device=device_body(rows[0]), token=token), 201,
                         {"Location": f"/api/v1/devices/{binding.device_id}"})


async def list_devices(call: Call) -> Response:
    items, cursor = await page(call, "devices", "device_id", device_body, user_id=call.user_id)
    return json_response(DevicePage(items=items, next_cursor=cursor))


async def get_device(call: Call) -> Response:
    device_id = call.params["device_id"].lower()
    rows = await call.services.query("device", device_id=device_id, user_id=call.user_id)
    if not rows:
        raise not_found("device", device_id)
    return json_response(device_body(rows[0]))


async def unbind_device(call: Call) -> Response:
    await call.services.devices.unbind(call.user_id, call.params["device_id"])
    return Response(status_code=204)


ENDPOINTS = (
    Endpoint("POST", "/api/v1/devices/activation", request_activation,
             "A device asks for an activation code (and, once bound, collects its token)", "devices",
             body=ActivationRequest, answer=Activation, auth=False, rate_limited=True,
             errors=(409, 422, 429)),
    Endpoint("POST", "/api/v1/devices", bind_device, "Bind the device showing a code to your assistant",
             "devices", status=201, body=DeviceBind, answer=BoundDevice, errors=(404, 409, 422)),
    Endpoint("GET", "/api/v1/devices", list_devices, "Your devices, a page at a time", "devices",
             answer=DevicePage, query=PAGE_PARAMS),
    Endpoint("GET", "/api/v1/devices/{device_id}", get_device, "One of your devices", "devices",
             answer=Device, errors=(404,)),
    Endpoint("DELETE", "/api/v1/devices/{device_id}", unbind_device,
             "Unbind a device (its token stops working)", "devices", status=204, errors=(404, 409)),
)
