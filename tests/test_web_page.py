"""The web page at `/`, driven in a real headless Chromium (Playwright, Debian's
/usr/bin/chromium: nothing is downloaded) whose fake microphone plays a spoken question:
sign up, add an assistant, call it over WebRTC, see the transcript and the answer, hear
it, chat by text in the call, hang up. The stack is real: NATS, the ASR, dialogue and TTS
actors, the echo LLM, the edge."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright, expect

from bus.server import EmbeddedServer
from schemas import new_id
from tests.api_harness import Api, api_config, serve_api
from tests.conftest import wait_for
from tests.fixtures.audio import has_key_words, pcm, resample

pytestmark = pytest.mark.stack("asr", "dialogue", "tts", loopback_ice=True)

CHROMIUM = os.environ.get("VAGENT_CHROMIUM", "/usr/bin/chromium")
QUESTION = "weather_paris"
# Where the screenshot of the call is also kept, outside pytest's rotating tmp dirs.
SCREENSHOT = Path(tempfile.gettempdir()) / "vagent-web-page.png"
CHROME_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # offer 127.0.0.1 candidates too: the edge gathers on loopback only here (`loopback_ice`)
    "--allow-loopback-in-peer-connection",
]


def fake_mic(path: Path) -> Path:
    """The question as Chromium's fake microphone wants it: 16-bit PCM WAV, 48 kHz mono,
    followed by enough silence that it is asked once per call (the file loops)."""
    speech = resample(pcm(QUESTION), 48000)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(bytes(48000 * 2 // 2) + speech + bytes(48000 * 2 * 60))
    return path


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")

    wav = fake_mic(tmp_path_factory.mktemp("mic") / "question.wav")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=[*CHROME_ARGS, f"--use-file-for-fake-audio-capture={wav}"])
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Any, stack: Api) -> AsyncIterator[Any]:
    context = await browser.new_context(base_url=stack.edge.url, viewport={"width": 420, "height": 860})
    await context.grant_permissions(["microphone"], origin=stack.edge.url)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.problems = problems
    try:
        yield page
    finally:
        await context.close()


@pytest.fixture(scope="module")
async def short_lived(module_nats: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
                      ) -> AsyncIterator[Api]:
    """An edge whose access tokens live 2 s."""
    async with serve_api(module_nats.url, tmp_path_factory.mktemp("short"),
                         api_config(access_ttl=2.0)) as api:
        yield api


async def access_expired(page: Any, api: Api, timeout: float = 10) -> None:
    """Until the edge refuses the page's access token as expired (not a guess at how long
    that takes: its exp is rounded up to a second)."""
    token = await page.evaluate("sessionStorage.getItem('vagent.access')")
    assert token
    async with asyncio.timeout(timeout):
        while True:
            r = await api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            if r.status_code == 401 and r.json()["error"]["code"] == "token_expired":
                return
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.1)


async def sign_up(page: Any, email: str, password: str = "correct horse 9") -> None:
    await page.goto("/")
    await page.wait_for_selector("body[data-state='signed-out']")
    await page.get_by_role("button", name="Create an account").click()
    await page.get_by_label("Your name").fill("Ada")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_selector("body[data-state='idle']")


async def test_the_page_is_served_beside_the_api(api: Api) -> None:
    r = await api.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in r.text
    for asset, kind in (("/static/app.js", "javascript"), ("/static/app.css", "text/css")):
        r = await api.client.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
    # Nothing else is shadowed: unknown API paths keep the API's error shape.
    r = await api.client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await api.client.get("/static/nothing.js")).status_code == 404
    assert (await api.client.get("/healthz")).status_code == 200


@pytest.mark.slow
async def test_sign_in_errors_show_the_api_message(page: Any, stack: Api) -> None:
    await page.goto("/")
    await page.get_by_label("Email").fill(f"nobody{new_id().lower()}@example.com")
    await page.get_by_label("Password").fill("wrong password 1")
    await page.get_by_role("button", name="Sign in").click()
    alert = page.locator("#auth-error")
    await alert.wait_for()
    assert "password" in (await alert.inner_text()).lower()
    assert await page.evaluate("document.body.dataset.state") == "signed-out"
    # A weak password while signing up: the API's own message.
    await page.get_by_role("button", name="Create an account").click()
    await page.get_by_label("Password").fill("short")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("#auth-error")).to_contain_text("10")
    assert await page.evaluate("document.body.dataset.state") == "signed-out"
    assert not [p for p in page.problems if "page error" in p]


@pytest.mark.slow
async def test_an_expired_access_token_is_refreshed_on_the_fly(browser: Any, short_lived: Api) -> None:
    context = await browser.new_context(base_url=short_lived.edge.url)
    try:
        page = await context.new_page()
        refreshes: list[int] = []
        page.on("response", lambda r: refreshes.append(r.status) if r.url.endswith("/auth/refresh") else None)
        await sign_up(page, f"short{new_id().lower()}@example.com")
        await access_expired(page, short_lived)
        await page.get_by_role("button", name="Add assistant").click()
        await page.get_by_label("Name", exact=True).fill("Later")
        await page.get_by_role("button", name="Create", exact=True).click()
        await expect(page.locator("#assistant-list li")).to_have_count(2)
        assert refreshes == [200]
        assert await page.evaluate("document.body.dataset.state") == "idle"
        # A reload keeps the sign-in (this tab's sessionStorage) and refreshes again when due.
        await access_expired(page, short_lived)
        await page.reload()
        await expect(page.locator("#assistant-list li")).to_have_count(2)
        async with asyncio.timeout(5):
            while len(refreshes) < 2:
                await asyncio.sleep(0.05)
        assert refreshes == [200, 200]
    finally:
        await context.close()


@pytest.mark.slow
async def test_sign_up_add_an_assistant_call_and_chat(page: Any, stack: Api, tmp_path: Path) -> None:
    email = f"web{new_id().lower()}@example.com"
    await sign_up(page, email)
    assert await page.locator("#who").inner_text() == "Ada"
    # Registration made a default assistant.
    await page.wait_for_selector("#assistant-list li")
    assert await page.locator("#assistant-list li").count() == 1

    await page.get_by_role("button", name="Add assistant").click()
    await page.get_by_label("Name", exact=True).fill("Paris guide")
    await page.get_by_label("Persona").fill("You are a cheerful guide to Paris.")
    await page.get_by_label("Voice").fill("en_US-joe-medium")
    await page.get_by_role("button", name="Create", exact=True).click()
    await expect(page.locator("#assistant-list li")).to_have_count(2)
    guide = page.get_by_role("radio", name="Paris guide")
    assert await guide.is_checked()
    guide_id = await guide.get_attribute("value")

    # Call: the fake microphone asks the question.
    await page.get_by_role("button", name="Call Paris guide").click()
    await page.wait_for_selector("body[data-state='in-call']", timeout=30_000)
    assert await page.get_by_role("button", name="Hang up").is_visible()
    transcript = page.locator("#log li.user[data-role='transcript']:not(.partial)")
    await transcript.first.wait_for(timeout=60_000)
    heard = await transcript.first.inner_text()
    assert has_key_words(QUESTION, heard), heard
    answer = page.locator("#log li.assistant:not(.streaming)", has_text="You said:")
    await answer.first.wait_for(timeout=30_000)
    said = await answer.first.inner_text()
    assert "You said:" in said and has_key_words(QUESTION, said), said

    # The answer is heard: speech (not comfort noise) arrives on the call's inbound track.
    stats: dict[str, Any] = {}
    async with asyncio.timeout(30):
        while not stats or stats["totalAudioEnergy"] < 1e-4:
            await asyncio.sleep(0.5)
            stats = await page.evaluate("window.vagent.audioStats()")
    assert stats["bytesReceived"] > 0 and stats["packetsReceived"] > 0, stats
    assert stats["micPeak"] > 0, stats  # the page's microphone meter saw the question
    print(f"\nreceived audio: {stats}")

    # Typed chat in the call, over the data channel.
    await page.get_by_label("Message").fill("and tomorrow?")
    await page.get_by_role("button", name="Send").click()
    await page.locator("#log li.user[data-role='typed']", has_text="and tomorrow?").wait_for()
    await page.locator("#log li.assistant:not(.streaming)",
                       has_text="You said: and tomorrow?.").wait_for(timeout=30_000)

    shot = tmp_path / "web_page.png"
    await page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, SCREENSHOT)
    print(f"\nscreenshot of the call: {SCREENSHOT} (and {shot})")

    session_id = await page.evaluate("window.vagent.sessionId")
    assert session_id
    await page.get_by_role("button", name="Hang up").click()
    await page.wait_for_selector("body[data-state='idle']")
    assert await page.locator("#status").inner_text() == "Call ended."
    assert await page.get_by_role("button", name="Call Paris guide").is_enabled()
    assert await page.get_by_label("Message").is_disabled()
    assert not [p for p in page.problems if "page error" in p], page.problems
    # The hangup reached the server: the session's log records why it ended.
    events = await wait_for(stack.services.bus, session_id,
                            lambda es: any(e.type == "session.ended" for e in es), timeout=10)
    ended = [e for e in events if e.type == "session.ended"]
    assert ended[0].reason == "hangup"  # type: ignore[attr-defined]
    started = next(e for e in events if e.type == "session.started")
    assert started.assistant_id == guide_id and started.transport == "webrtc"  # type: ignore[attr-defined]
