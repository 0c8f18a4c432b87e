"""The web page's Attach a photo, in a real headless Chromium without a microphone: a photo
(a JPEG the browser itself encodes, larger than one WebSocket frame) goes with the typed
question over /ws, shows as a thumbnail in the user's bubble, and is described by
`[vision]`'s model (the echo server) and answered; a phone-sized photo is scaled down
first; the server's refusals show as lines."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
from playwright.async_api import expect

from devservers.echo_llm import OpenAIServer
from schemas import new_id
from settings.config import Config, VisionSettings
from tests.api_harness import Api
from tests.test_web_page import micless_browser, new_page, sign_up

# Both the dialogue's LLM and the vision model: its port is known before the stack starts.
SERVER = OpenAIServer()
__all__ = ["micless_browser"]  # a fixture: pytest finds it imported here


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIServer]:
    SERVER.start()
    yield SERVER
    SERVER.stop()


def with_vision(config: Config) -> Config:
    config.vision = VisionSettings(base_url=SERVER.base_url, model="see-1")
    return config


pytestmark = pytest.mark.stack("dialogue", settings=with_vision)


@pytest.fixture
async def micless(micless_browser: Any, stack: Api) -> AsyncIterator[Any]:
    async with new_page(micless_browser, stack, microphone=False) as page:
        yield page


async def jpeg(page: Any, width: int, height: int) -> bytes:
    """A JPEG of noise, encoded by the browser (noise compresses badly: a large photo)."""
    url = await page.evaluate("""([w, h]) => {
        const canvas = document.createElement("canvas");
        canvas.width = w; canvas.height = h;
        const g = canvas.getContext("2d");
        const pixels = g.createImageData(w, h);
        for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = (i * 2654435761 >>> 13) & 255;
        g.putImageData(pixels, 0, 0);
        return canvas.toDataURL("image/jpeg", 0.95);
    }""", [width, height])
    return base64.b64decode(url.split(",", 1)[1])


async def attach(page: Any, photo: bytes, question: str) -> None:
    await page.get_by_label("Message").fill(question)
    async with page.expect_file_chooser() as chooser:
        await page.get_by_role("button", name="Attach a photo").click()
    await (await chooser.value).set_files(
        {"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": photo})


async def test_a_photo_is_attached_shown_described_and_answered(micless: Any, stack: Api) -> None:
    page = micless
    await sign_up(page, f"photo{new_id().lower()}@example.com")
    photo = await jpeg(page, 700, 500)
    assert len(photo) > 2 * stack.services.config.edge.max_frame_bytes  # more than one frame
    await attach(page, photo, "what is this?")

    bubble = page.locator("#log li.user[data-role='photo']")
    await expect(bubble).to_have_count(1)
    await expect(bubble.locator(".text")).to_have_text("what is this?")
    thumb = bubble.locator("img.thumb")
    await expect(thumb).to_be_visible()
    assert await thumb.evaluate("img => img.complete && img.naturalWidth") == 700
    answer = page.locator("#log li.assistant:not(.streaming)",
                          has_text="You showed a image/jpeg image and said: what is this?.")
    await answer.wait_for()
    await expect(bubble).not_to_have_class("unsent")
    await expect(page.locator("#activity")).to_have_attribute("data-activity", "idle")
    assert await page.locator("#log li.user").count() == 1  # the photo's turn is its bubble
    assert await page.get_by_label("Message").input_value() == ""
    sent = next(r for r in reversed(SERVER.requests) if r["model"] == "see-1")
    url = next(p for p in sent["messages"][-1]["content"] if p["type"] == "image_url")["image_url"]["url"]
    assert url == "data:image/jpeg;base64," + base64.b64encode(photo).decode()

    # A phone-sized photo goes as a JPEG of at most 2048 px, the most a vision model looks at.
    large = await jpeg(page, 2400, 1800)
    assert len(large) > 1_500_000
    await attach(page, large, "and this big one?")
    await page.locator("#log li.assistant:not(.streaming)", has_text="said: and this big one?.").wait_for()
    thumb = page.locator("#log li.user[data-role='photo']").last.locator("img.thumb")
    assert await thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [2048, 1536]
    sent = next(r for r in reversed(SERVER.requests) if r["model"] == "see-1")
    url = next(p for p in sent["messages"][-1]["content"] if p["type"] == "image_url")["image_url"]["url"]
    scaled = base64.b64decode(url.removeprefix("data:image/jpeg;base64,"))
    assert scaled.startswith(b"\xff\xd8\xff") and len(scaled) < len(large)

    # The server's refusals are lines in the conversation, and it goes on.
    config = stack.services.config
    saved = config.vision
    small = await jpeg(page, 40, 30)
    try:
        config.vision = msgspec.structs.replace(saved, max_image_bytes=len(small) - 1)
        await attach(page, small, "")
        refusal = page.locator("#log li[data-role='photo-error']")
        await expect(refusal).to_have_count(1)
        await expect(refusal).to_contain_text("The photo is too large: this server takes photos up to")
        config.vision = msgspec.structs.replace(saved, base_url="")
        await attach(page, small, "and this?")
        await expect(refusal).to_have_count(2)
        await expect(refusal.nth(1)).to_contain_text("This server cannot look at photos")
    finally:
        config.vision = saved
    await expect(page.locator("#log li.user.unsent[data-role='photo']")).to_have_count(2)
    await expect(page.locator("#log li.user[data-role='photo']")).to_have_count(4)
    await page.get_by_label("Message").fill("still there?")
    await page.get_by_role("button", name="Send").click()
    await page.locator("#log li.assistant:not(.streaming)", has_text="You said: still there?.").wait_for()
    assert not [p for p in page.problems if "page error" in p], page.problems
