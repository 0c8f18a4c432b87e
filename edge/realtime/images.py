"""Photos users send: stored in bucket `images` and recorded as `user.image`, whether a
xiaozhi device's camera posted it (edge/xiaozhi/vision.py) or a `/ws` client sent it.

On `/ws` the photo then opens a turn: the `[vision]` model describes it, and the session
gets a `user.text` (source `image`) holding the question and that description, which the
dialogue answers like any typed turn (its LLM need not see images)."""

from __future__ import annotations

import base64
import binascii

import msgspec

from bus.blobs import put_image
from bus.client import Bus
from domain import vision
from edge.errors import ApiError, domain_refusals
from edge.realtime.session import SessionLink, check_readable
from schemas import UserImage, new_id
from settings.config import VisionSettings


class UserImageMessage(msgspec.Struct):
    """`{"type":"user.image","image":<base64>,"text":<question>}` on `/ws`."""

    image: str
    text: str = ""


async def record(bus: Bus, session_id: str, data: bytes, image: str, question: str,
                 source: str) -> UserImage:
    """Store a checked photo (`image`: its format) and append its `user.image`."""
    event_id = new_id()
    ref = await put_image(bus, f"{session_id}/{event_id}", data, image)
    event = UserImage(id=event_id, session_id=session_id, image=ref, mime=vision.FORMATS[image],
                      size=len(data), question=question, source=source)
    check_readable(event)
    await bus.publish(event)
    return event


def decoded(message: UserImageMessage, settings: VisionSettings) -> bytes:
    # base64 grows by 4/3: a string longer than that of the largest photo is refused unread.
    if len(message.image) > (settings.max_image_bytes + 2) // 3 * 4 + 4:
        raise ApiError(413, "image_too_large", f"the image exceeds {settings.max_image_bytes} bytes",
                       {"limit": settings.max_image_bytes, "at": "$.image"})
    try:
        return base64.b64decode(message.image, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "bad_message", "image must be base64", {"at": "$.image"}) from None


async def ws_image(link: SessionLink, message: UserImageMessage, settings: VisionSettings) -> None:
    """A `/ws` photo: checked, recorded, described, then answered as a turn. Raises
    ApiError for a photo refused (and for a vision model that failed)."""
    with domain_refusals():
        vision.check_configured(settings)
        data = decoded(message, settings)
        image = vision.check_image(data, settings)
        question = vision.check_question(message.text)
        await record(link.bus, link.session_id, data, image, question, "ws")
        description = await vision.describe(settings, data, image, question)
    await link.text(vision.turn_text(question, description), source="image")
