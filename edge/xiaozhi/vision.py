"""`/xiaozhi/vision/explain`: where a xiaozhi device's camera tool posts its photo.

The device learns the URL and a vision token in the MCP `initialize` this edge sends it
(`capabilities.vision {url, token}`); its camera tool then posts multipart/form-data (a
`question` field and the photo as `file`) with `Authorization: Bearer <vision token>`,
`Device-Id` and `Client-Id`. The photo is stored (bucket `images`), recorded in the
session as `user.image`, and described by `[vision]`'s model; the answer is
`{"success": true, "action": "RESPONSE", "response": "<description>"}`, which the camera
tool hands the dialogue as its result.
"""

from __future__ import annotations

import logging

import msgspec
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from domain import vision
from edge.api.endpoint import FormField, json_response, read_form
from edge.errors import ApiError
from edge.realtime import images
from edge.services import Services
from edge.xiaozhi.ota import device_ids, guarded, public_base

log = logging.getLogger("vagent.edge.xiaozhi")
PATH = "/xiaozhi/vision/explain"
FORM = (FormField("question", "what the user asked about the photo", max_length=vision.MAX_QUESTION_CHARS),
        FormField("file", "the photo: JPEG, PNG or WebP", file=True, required=True))


class Explained(msgspec.Struct):
    success: bool
    action: str
    response: str


def capability(conn: HTTPConnection, services: Services, session_id: str, device_id: str
               ) -> dict[str, str]:
    """The `vision` capability a device session is given in its MCP `initialize`."""
    token = services.tokens.vision_token(session_id, device_id, services.config.vision.token_ttl)
    return {"url": public_base(conn, services) + PATH, "token": token}


async def explain(request: Request, services: Services) -> Response:
    device, _ = device_ids(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "token_missing", "send Authorization: Bearer <vision token>")
    session_id = services.tokens.verify_vision(token.strip(), device)
    settings = services.config.vision
    vision.check_configured(settings)
    form = await read_form(request, FORM, settings.max_image_bytes)
    try:
        data = await form.files["file"].read()
    finally:
        await form.close()
    image = vision.check_image(data, settings)
    question = vision.check_question(form.fields.get("question", ""))
    await images.record(services.bus, session_id, data, image, question, "device")
    answer = await vision.describe(settings, data, image, question)
    log.info("xiaozhi photo explained", extra={"session": session_id, "device": device.lower(),
                                               "bytes": len(data)})
    return json_response(Explained(success=True, action="RESPONSE", response=answer))


explain_route = guarded(explain)
