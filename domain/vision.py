"""Describing a photo: the checks every photo passes (size, and a JPEG, PNG or WebP by its
first bytes, whatever the client claims) and the call to `[vision]`, an OpenAI-compatible
model that accepts images, which gets the photo inline as a data URL."""

from __future__ import annotations

import base64
import logging

import openai
from openai import AsyncOpenAI

from domain.errors import Invalid, TooLarge, Unavailable, Unsupported
from settings.config import VisionSettings, secret

log = logging.getLogger("vagent.vision")
DEFAULT_QUESTION = "Describe this photo briefly."
MAX_QUESTION_CHARS = 1000
# The formats every vision API takes, by their magic bytes.
FORMATS: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def turn_text(question: str, description: str) -> str:
    """The `user.text` a photo's turn is made of: the question and what the photo shows, for
    a dialogue whose LLM need not see images."""
    return (f"{question or 'What do you see in this photo?'}\n\n(The user sent a photo. "
            f"A vision model describes it: {description})")


def image_format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check_image(data: bytes, settings: VisionSettings) -> str:
    """The photo's format; TooLarge (`image_too_large`) or Unsupported (`not_an_image`)."""
    limit = settings.max_image_bytes
    if len(data) > limit:
        raise TooLarge("image_too_large", f"the image exceeds {limit} bytes", {"limit": limit})
    found = image_format(data)
    if found is None:
        raise Unsupported("not_an_image", "send a JPEG, PNG or WebP image")
    return found


def check_question(question: str) -> str:
    if len(question) > MAX_QUESTION_CHARS:
        raise Invalid("question_too_long", f"the question exceeds {MAX_QUESTION_CHARS} characters",
                      {"limit": MAX_QUESTION_CHARS})
    return question.strip()


def configured(settings: VisionSettings) -> bool:
    return bool(settings.base_url and settings.model)


def check_configured(settings: VisionSettings) -> None:
    if not configured(settings):
        raise Unavailable("vision_not_configured",
                          "no vision model is configured: set [vision] base_url and model")


async def describe(settings: VisionSettings, data: bytes, image: str, question: str) -> str:
    """The model's answer to `question` about the photo (`image`: its format)."""
    check_configured(settings)
    url = f"data:{FORMATS[image]};base64,{base64.b64encode(data).decode()}"
    client = AsyncOpenAI(base_url=settings.base_url, api_key=secret(settings.api_key_env) or "no-key",
                         timeout=settings.timeout, max_retries=0)
    try:
        answer = await client.chat.completions.create(
            model=settings.model, max_tokens=settings.max_tokens,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": question or DEFAULT_QUESTION},
                {"type": "image_url", "image_url": {"url": url}}]}])
    except openai.APIError as exc:
        log.warning("vision model failed", extra={"model": settings.model, "error": str(exc)})
        raise Unavailable("vision_failed", f"the vision model failed: {exc}") from None
    finally:
        await client.close()
    text = (answer.choices[0].message.content or "").strip() if answer.choices else ""
    if not text:
        raise Unavailable("vision_failed", "the vision model gave no answer")
    return text
