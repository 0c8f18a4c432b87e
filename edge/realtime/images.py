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
from edge import jsonparse
from edge.errors import ApiError, domain_refusals
from edge.realtime.session import SessionLink, check_readable
from schemas import UserImage, new_id
from settings.config import Config, VisionSettings

# The JSON around a photo's base64: its type, and a question whose every character may be
# escaped as a surrogate pair (`\ud83d\udcf7`).
ENVELOPE_BYTES = 12 * vision.MAX_QUESTION_CHARS + 1024


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


def base64_chars(size: int) -> int:
    return (size + 2) // 3 * 4


def largest_frame(config: Config) -> int:
    """The largest WebSocket message the edge reads: `[edge] max_frame_bytes`, or a `/ws`
    photo of `[vision] max_image_bytes` once a vision model is configured. The server reads
    up to twice that, so a larger message still gets a reason (`frame_too_large`, or
    `image_too_large` for a photo) instead of being dropped unread."""
    image = base64_chars(config.vision.max_image_bytes) + ENVELOPE_BYTES
    return max(config.edge.max_frame_bytes, image if vision.configured(config.vision) else 0)


def may_exceed_frame(data: str | bytes, settings: VisionSettings) -> bool:
    """Whether a `/ws` message over `[edge] max_frame_bytes` is read all the same: a
    `user.image` while a vision model is configured. Its type is found without decoding the
    photo; the photo's own limit is `decoded`'s (and the server's read limit)."""
    return (isinstance(data, str) and vision.configured(settings)
            and jsonparse.message_type(data) == "user.image")


def decoded(message: UserImageMessage, settings: VisionSettings) -> bytes:
    # base64 grows by 4/3: a string longer than that of the largest photo is refused unread.
    if len(message.image) > base64_chars(settings.max_image_bytes) + 4:
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
