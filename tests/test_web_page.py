"""The web page at `/`, driven in a real headless Chromium (Playwright, Debian's
/usr/bin/chromium: nothing is downloaded). One browser's fake microphone plays a spoken
question: sign up, add an assistant, call it over WebRTC, see the transcript and the answer,
hear it, mute, chat by text in the call, hang up. Another browser has no microphone at all
(no fake devices, no permission; a headless Chromium on a machine without a sound server
lists none): it chats by text over /ws, sees the assistant think and answer, a tool step in
words, and its past conversations; it binds a xiaozhi device by the code the device was
given, and unbinds it. The stack is real: NATS, the ASR, dialogue, tools and TTS
actors, the echo LLM, the edge."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from playwright.async_api import async_playwright, expect

from bus.server import EmbeddedServer
from devservers.echo_llm import OpenAIServer
from schemas import new_id
from settings.config import Config
from tests.api_harness import Api, api_config, serve_api
from tests.conftest import wait_for
from tests.fixtures.audio import has_key_words, pcm, resample
from tests.test_xiaozhi_ota import Device


def locking(config: Config) -> Config:
    """Three failed logins lock an account for 15 minutes (the lockout message's test)."""
    return msgspec.structs.replace(config, auth=msgspec.structs.replace(
        config.auth, lockout_failures=3, lockout_seconds=900.0))


pytestmark = pytest.mark.stack("asr", "dialogue", "tools", "tts", loopback_ice=True, settings=locking)
# A loaded machine may take a while to show a state: wait for it, not for a clock.
expect.set_options(timeout=30_000)

CHROMIUM = os.environ.get("VAGENT_CHROMIUM", "/usr/bin/chromium")
QUESTION = "weather_paris"
# Where the screenshot of the call is also kept, outside pytest's rotating tmp dirs.
SCREENSHOT = Path(tempfile.gettempdir()) / "vagent-web-page.png"
TEXT_SCREENSHOT = Path(tempfile.gettempdir()) / "vagent-web-page-text.png"
BASE_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CHROME_ARGS = [
    *BASE_ARGS,
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


@pytest.fixture(scope="module")
async def micless_browser() -> AsyncIterator[Any]:
    """A Chromium with no microphone: no fake devices, no fake permission prompt."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BASE_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@contextlib.asynccontextmanager
async def new_page(browser: Any, api: Api, microphone: bool) -> AsyncIterator[Any]:
    context = await browser.new_context(base_url=api.edge.url, viewport={"width": 420, "height": 860})
    if microphone:
        await context.grant_permissions(["microphone"], origin=api.edge.url)
    page = await context.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.problems = problems
    try:
        yield page
    finally:
        await context.close()


@pytest.fixture
async def page(browser: Any, stack: Api) -> AsyncIterator[Any]:
    async with new_page(browser, stack, microphone=True) as page:
        yield page


@pytest.fixture
async def micless(micless_browser: Any, stack: Api) -> AsyncIterator[Any]:
    async with new_page(micless_browser, stack, microphone=False) as page:
        yield page


@pytest.fixture
def slow_llm(llm: OpenAIServer) -> Iterator[OpenAIServer]:
    """The echo LLM waits before its first token, so the page's thinking shows for a while."""
    llm.first_token_delay = 1.5
    try:
        yield llm
    finally:
        llm.first_token_delay = 0.0


@pytest.fixture(scope="module")
async def short_lived(module_nats: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
                      ) -> AsyncIterator[Api]:
    """An edge whose access tokens live 2 s."""
    async with serve_api(module_nats.url, tmp_path_factory.mktemp("short"),
                         api_config(access_ttl=2.0)) as api:
        yield api


@pytest.fixture(scope="module")
async def short_codes(module_nats: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
                      ) -> AsyncIterator[Api]:
    """An edge whose activation codes live 1 s (their records stay a minute longer, so a
    late owner is told the code expired)."""
    async with serve_api(module_nats.url, tmp_path_factory.mktemp("codes"),
                         api_config(code_ttl=1.0)) as api:
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
    assert '<script type="module" src="/static/app.js"' in r.text
    modules = [f"/static/{m}.js" for m in ("app", "api", "talk", "links", "media", "history", "lines",
                                           "devices", "turn", "dashboard", "charts")]
    for asset, kind in [*((m, "javascript") for m in modules), ("/static/app.css", "text/css")]:
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

    # Typed first, over /ws: then the call goes on with the same session.
    await page.get_by_label("Message").fill("hello before the call")
    await page.get_by_role("button", name="Send").click()
    await page.locator("#log li.assistant:not(.streaming)",
                       has_text="You said: hello before the call.").wait_for()
    typed_session = await page.evaluate("window.vagent.sessionId")

    # Call: the fake microphone asks the question.
    await page.get_by_role("button", name="Call Paris guide").click()
    await page.wait_for_selector("body[data-state='in-call']", timeout=30_000)
    assert await page.evaluate("window.vagent.sessionId") == typed_session
    assert await page.get_by_role("button", name="Hang up").is_visible()
    # A photo goes over /ws only: not during a call, and the button says why.
    photo = page.get_by_role("button", name="Attach a photo")
    await expect(photo).to_be_disabled()
    await expect(photo).to_have_attribute("title", re.compile("not in a call"))
    transcript = page.locator("#log li.user[data-role='transcript']:not(.partial)")
    await transcript.first.wait_for(timeout=60_000)
    heard = await transcript.first.inner_text()
    assert has_key_words(QUESTION, heard), heard
    answer = page.locator("#log li.assistant:not(.streaming)", has_text="You said:",
                          has_not_text="before the call")
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
    # The assistant's voice reaches the page's bars (an AnalyserNode on the received track).
    async with asyncio.timeout(30):
        while stats["voicePeak"] <= 0:
            await asyncio.sleep(0.25)
            stats = await page.evaluate("window.vagent.audioStats()")
    activities = await page.evaluate("window.vagent.activities")
    call = activities[max(i for i, a in enumerate(activities) if a == "connecting"):]
    # "listening" may be skipped here: the question can be heard, or the typed answer still
    # playing, when the call connects. It is shown once the call has nothing else to show.
    assert ordered(call, ["connecting", "thinking", "speaking"]), activities

    # Mute turns the microphone's track off, and on again.
    mute = page.locator("#mute-button")
    assert await page.evaluate("window.vagent.micEnabled") is True
    await mute.click()
    await expect(mute).to_have_attribute("aria-pressed", "true")
    assert await page.evaluate("window.vagent.micEnabled") is False
    await expect(mute).to_have_text("Unmute")
    await mute.click()
    await expect(mute).to_have_attribute("aria-pressed", "false")
    assert await page.evaluate("window.vagent.micEnabled") is True
    # The microphone picker lists the fake device by name once the microphone is allowed.
    await expect(page.locator("#mic-select option")).not_to_have_count(1)

    # Typed chat in the call, over the data channel.
    await page.get_by_label("Message").fill("and tomorrow?")
    await page.get_by_role("button", name="Send").click()
    await page.locator("#log li.user[data-role='typed']", has_text="and tomorrow?").wait_for()
    await page.locator("#log li.assistant:not(.streaming)",
                       has_text="You said: and tomorrow?.").wait_for(timeout=30_000)
    async with asyncio.timeout(30):
        while await page.evaluate("window.vagent.activity") != "listening":
            await asyncio.sleep(0.25)

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
    assert await page.get_by_label("Message").is_enabled()  # typing goes on without the call
    assert not [p for p in page.problems if "page error" in p], page.problems
    # The hangup reached the server: the session's log records why it ended.
    events = await wait_for(stack.services.bus, session_id,
                            lambda es: any(e.type == "session.ended" for e in es), timeout=10)
    ended = [e.reason for e in events if e.type == "session.ended"]  # type: ignore[attr-defined]
    assert ended == ["replaced", "hangup"], ended  # the typing connection, then the call
    starts = [(e.transport, e.resumed, e.assistant_id, e.echo_cancelled)  # type: ignore[attr-defined]
              for e in events if e.type == "session.started"]
    # The call's microphone cancels echo in the browser, and the page says so: not the ASR's job.
    assert starts == [("ws", False, guide_id, None), ("webrtc", True, guide_id, True)], starts


def ordered(seen: list[str], wanted: list[str]) -> bool:
    """Whether `wanted` occurs in `seen` in this order (other states may come between)."""
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


@pytest.mark.slow
async def test_without_a_microphone_text_chat_thinks_and_answers(micless: Any, stack: Api,
                                                                 slow_llm: OpenAIServer) -> None:
    page = micless
    await sign_up(page, f"typist{new_id().lower()}@example.com")
    call = page.locator("#call-button")
    await expect(call).to_be_disabled()
    await expect(call).to_contain_text("No microphone")
    await expect(page.locator("#call-hint")).to_contain_text("You can still type")
    activity = page.locator("#activity")
    await expect(activity).to_have_attribute("data-activity", "idle")
    message = page.get_by_label("Message")
    assert await message.is_enabled()

    await message.fill("hello there")
    await page.get_by_role("button", name="Send").click()
    # The typed line shows at once; the page thinks until the first words of the answer.
    await page.locator("#log li.user[data-role='typed']", has_text="hello there").wait_for()
    await page.wait_for_selector("#activity[data-activity='thinking']")
    await expect(activity).to_contain_text("Thinking")
    answer = page.locator("#log li.assistant:not(.streaming)", has_text="You said: hello there.")
    await answer.wait_for()
    await expect(activity).to_have_attribute("data-activity", "idle")
    activities = await page.evaluate("window.vagent.activities")
    assert ordered(activities, ["idle", "thinking", "speaking", "idle"]), activities
    assert await page.locator("#log li.user").count() == 1  # the server's copy is not shown twice
    session_id = await page.evaluate("window.vagent.sessionId")
    assert session_id

    # A tool step: a line in words, no internal name, no empty bubble.
    await message.fill("please use get_time")
    await page.get_by_role("button", name="Send").click()
    await page.locator("#log li.assistant:not(.streaming)", has_text="The tool said:").wait_for()
    step = page.locator("#log li[data-role='tool']")
    await expect(step).to_have_count(1)
    await expect(step).to_have_text("Checked the time")
    bubbles = await page.locator("#log li.assistant .text").all_inner_texts()
    assert bubbles and all(b.strip() for b in bubbles), bubbles
    assert "get_time" not in (await page.locator("#log").inner_text()).replace("please use get_time", "")
    assert await page.evaluate("window.vagent.sessionId") == session_id  # one conversation
    assert not [p for p in page.problems if "page error" in p], page.problems
    await page.screenshot(path=str(TEXT_SCREENSHOT), full_page=True)
    print(f"\nscreenshot of a typed conversation: {TEXT_SCREENSHOT}")

    # The server lets go of the connection: the page says so, and the next message
    # reconnects to the same session.
    await stack.services.links.close_all("server_shutdown")
    await expect(activity).to_have_attribute("data-activity", "disconnected")
    await expect(page.locator("#status")).to_contain_text("Send a message to reconnect")
    await message.fill("are you there")
    await page.get_by_role("button", name="Send").click()
    await page.locator("#log li.assistant:not(.streaming)", has_text="You said: are you there.").wait_for()
    await expect(activity).to_have_attribute("data-activity", "idle")
    assert await page.evaluate("window.vagent.sessionId") == session_id

    # The edge recorded a typed session over /ws for it, resumed once.
    events = await wait_for(stack.services.bus, session_id,
                            lambda es: sum(e.type == "assistant.message" for e in es) >= 4, timeout=30)
    starts = [(e.transport, e.resumed, e.audio_out)  # type: ignore[attr-defined]
              for e in events if e.type == "session.started"]
    assert starts == [("ws", False, None), ("ws", True, None)], starts


@pytest.mark.slow
async def test_past_conversations_show_their_transcripts(micless: Any, stack: Api) -> None:
    page = micless
    await sign_up(page, f"history{new_id().lower()}@example.com")
    await expect(page.locator("#history-empty")).to_be_visible()
    await page.get_by_label("Message").fill("remember the milk")
    await page.get_by_role("button", name="Send").click()
    answer = page.locator("#log li.assistant:not(.streaming)", has_text="You said: remember the milk.")
    await answer.wait_for()
    session_id = await page.evaluate("window.vagent.sessionId")
    token = await page.evaluate("sessionStorage.getItem('vagent.access')")

    async def in_read_model() -> bool:
        r = await stack.client.get(f"/api/v1/sessions/{session_id}/messages",
                                   headers={"Authorization": f"Bearer {token}"})
        return r.status_code == 200 and any(m["text"] == "You said: remember the milk."
                                            for m in r.json()["items"])

    async with asyncio.timeout(30):
        while not await in_read_model():
            await asyncio.sleep(0.2)
    await page.reload()  # a new visit: the conversation is in the list
    item = page.locator(f"#history-list details[data-session='{session_id}']")
    await item.wait_for()
    await expect(item.locator("summary")).to_contain_text("text")
    await item.locator("summary").click()
    transcript = item.locator("ol.past")
    await transcript.locator("li.user", has_text="remember the milk").wait_for()
    await transcript.locator("li.assistant", has_text="You said: remember the milk.").wait_for()
    assert not [p for p in page.problems if "page error" in p], page.problems


@pytest.mark.slow
async def test_a_locked_account_says_when_to_try_again(micless: Any, stack: Api) -> None:
    page = micless
    email = f"locked{new_id().lower()}@example.com"
    await stack.user(email)
    await page.goto("/")
    await page.wait_for_selector("body[data-state='signed-out']")
    error = page.locator("#auth-error")
    for _ in range(3):
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Password").fill("wrong horse 9")
        await page.get_by_role("button", name="Sign in").click()
        await expect(error).to_contain_text("password")
        await page.evaluate("document.getElementById('auth-error').hidden = true")
    await page.get_by_label("Password").fill("correct horse 9")
    await page.get_by_role("button", name="Sign in").click()
    await expect(error).to_have_text(
        "This account is locked after repeated failed logins. Try again in 15 minutes.")


@pytest.mark.slow
async def test_a_device_is_bound_by_its_code_and_unbound(micless: Any, stack: Api) -> None:
    page = micless
    await sign_up(page, f"devices{new_id().lower()}@example.com")
    await expect(page.locator("#devices-empty")).to_be_visible()
    await page.get_by_role("button", name="Add assistant").click()
    await page.get_by_label("Name", exact=True).fill("Kitchen helper")
    await page.get_by_role("button", name="Create", exact=True).click()
    await expect(page.locator("#assistant-list li")).to_have_count(2)
    kitchen_id = await page.get_by_role("radio", name="Kitchen helper").get_attribute("value")
    await page.locator("#assistant-list li").first.get_by_role("radio").check()  # the default again

    # The device checks in as the firmware does and is given a code to show.
    device = Device(stack)
    first = await device.check()
    code = first["activation"]["code"]
    assert first["websocket"]["token"] == "", first

    await page.get_by_role("button", name="Add device").click()
    form = page.locator("#device-form")
    error = page.locator("#device-error")
    talks_to = form.get_by_label("Talks to")
    await expect(talks_to.locator("option")).to_have_count(2)
    assert await talks_to.input_value() != kitchen_id  # the page's chosen assistant comes first

    # Not six digits: said before asking the server. A code no device shows: the API's
    # refusal, said with what to do.
    await form.get_by_label("Code").fill("12345")
    await form.get_by_role("button", name="Bind device").click()
    await expect(error).to_have_text("Enter the 6-digit code your device shows or says.")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    await form.get_by_label("Code").fill(wrong)
    await form.get_by_role("button", name="Bind device").click()
    await expect(error).to_have_text(
        "Unknown or expired activation code. Check the 6 digits your device shows or says.")
    assert await page.locator("#device-list li").count() == 0

    # The code as read aloud, in two halves; another assistant; a name.
    await form.get_by_label("Code").fill(f"{code[:3]} {code[3:]}")
    await talks_to.select_option(label="Kitchen helper")
    await form.get_by_label("Device name").fill("Kitchen speaker")
    await form.get_by_role("button", name="Bind device").click()
    item = page.locator("#device-list li", has_text="Kitchen speaker")
    await expect(item).to_contain_text("Talks to Kitchen helper")
    await expect(form).to_be_hidden()
    await expect(page.locator("#notice")).to_contain_text("Bound Kitchen speaker to Kitchen helper")
    await expect(page.locator("#devices-empty")).to_be_hidden()

    # The device learns it was bound, and its next check-in carries its token for that assistant.
    r = await device.activate()
    assert r.status_code == 200 and r.json()["status"] == "bound", r.text
    bound = await device.check()
    assert "activation" not in bound, bound
    grant = await stack.services.tokens.verify_device(bound["websocket"]["token"], device.device_id)
    assert grant.assistant_id == kitchen_id

    # A reload lists it from the server.
    await page.reload()
    await expect(item).to_contain_text("Talks to Kitchen helper")

    # Unbind asks first: Keep keeps it; Yes unbinds it and the device needs a new code.
    await item.get_by_role("button", name="Unbind Kitchen speaker").click()
    await expect(item).to_contain_text("Unbind Kitchen speaker?")
    await item.get_by_role("button", name="Keep").click()
    await expect(item.get_by_role("button", name="Unbind Kitchen speaker")).to_be_visible()
    await item.get_by_role("button", name="Unbind Kitchen speaker").click()
    await item.get_by_role("button", name="Yes, unbind").click()
    await expect(page.locator("#device-list li")).to_have_count(0)
    await expect(page.locator("#devices-empty")).to_be_visible()
    r = await stack.client.get("/api/v1/devices", headers={
        "Authorization": "Bearer " + await page.evaluate("sessionStorage.getItem('vagent.access')")})
    assert r.status_code == 200 and r.json()["items"] == [], r.text
    again = await device.check()
    assert "activation" in again and again["websocket"]["token"] == "", again
    assert not [p for p in page.problems if "page error" in p], page.problems


@pytest.mark.slow
async def test_an_expired_device_code_says_the_device_shows_a_new_one(micless_browser: Any,
                                                                      short_codes: Api) -> None:
    device = Device(short_codes)
    code = (await device.check())["activation"]["code"]
    async with asyncio.timeout(30):  # until the device itself is told its code expired
        while (r := await device.activate()).status_code == 202:
            await asyncio.sleep(0.2)
    assert r.status_code == 410 and r.json()["error"]["code"] == "activation_expired", r.text

    async with new_page(micless_browser, short_codes, microphone=False) as page:
        await sign_up(page, f"late{new_id().lower()}@example.com")
        await page.get_by_role("button", name="Add device").click()
        form = page.locator("#device-form")
        await form.get_by_label("Code").fill(code)
        await form.get_by_role("button", name="Bind device").click()
        await expect(page.locator("#device-error")).to_have_text(
            "This activation code expired: the device shows a new one when it asks again.")
        await expect(form.get_by_label("Code")).to_be_focused()
        assert await page.locator("#device-list li").count() == 0
        assert not [p for p in page.problems if "page error" in p], page.problems


async def test_an_assistants_language_is_shown_and_set(micless: Any, stack: Api) -> None:
    page = micless
    await sign_up(page, f"polyglot{new_id().lower()}@example.com")
    await page.get_by_role("button", name="Add assistant").click()
    await page.get_by_label("Name", exact=True).fill("Laoshi")
    chosen = page.locator("#add-form").get_by_label("Language")
    await expect(chosen).to_have_value("en")  # the API's default
    await chosen.select_option(label="中文")
    await page.get_by_role("button", name="Create").click()
    picker = page.get_by_label("Language of Laoshi")
    await expect(picker).to_have_value("zh")
    token = await page.evaluate("sessionStorage.getItem('vagent.access')")
    headers = {"Authorization": f"Bearer {token}"}

    async def languages() -> dict[str, str]:
        r = await stack.client.get("/api/v1/assistants", headers=headers)
        assert r.status_code == 200, r.text
        return {a["name"]: a["language"] for a in r.json()["items"]}

    assert (await languages())["Laoshi"] == "zh"
    # The other assistant (the account's default) shows its own.
    others = page.locator("#assistant-list select.language")
    await expect(others).to_have_count(2)
    await expect(others.first).to_have_value("en")

    await picker.select_option("auto")
    await expect(page.locator("#notice")).to_contain_text(
        "Laoshi now answers in the language it is spoken to in")
    assert (await languages())["Laoshi"] == "auto"
    await page.reload()
    await page.wait_for_selector("body[data-state='idle']")
    await expect(page.get_by_label("Language of Laoshi")).to_have_value("auto")
    assert not page.problems, page.problems


async def test_an_assistants_turn_taking_is_set_and_changed_setting_by_setting(micless: Any,
                                                                              stack: Api) -> None:
    page = micless
    await sign_up(page, f"turns{new_id().lower()}@example.com")
    await page.get_by_role("button", name="Add assistant").click()
    form = page.locator("#add-form")
    await form.get_by_label("Name", exact=True).fill("Kitchen")
    await form.get_by_text("Turn-taking").click()
    await expect(form.get_by_label("End of turn")).to_have_value("")  # the server's
    await form.get_by_label("Hold if complete (ms)").fill("250")
    await form.get_by_label("Echo from a speaker").select_option(label="Ignore (speaker)")
    await page.get_by_role("button", name="Create").click()
    await expect(page.get_by_label("Language of Kitchen")).to_be_visible()
    token = await page.evaluate("sessionStorage.getItem('vagent.access')")
    headers = {"Authorization": f"Bearer {token}"}

    async def turn() -> Any:
        r = await stack.client.get("/api/v1/assistants", headers=headers)
        assert r.status_code == 200, r.text
        return {a["name"]: a["turn"] for a in r.json()["items"]}["Kitchen"]

    assert await turn() == {"complete_hold_ms": 250, "echo": "on"}

    # In the list, each setting is saved when it changes; the others keep theirs.
    await page.get_by_label("Turn-taking of Kitchen").click()
    row = page.locator("#assistant-list li", has=page.get_by_label("Turn-taking of Kitchen"))
    await expect(row.get_by_label("Hold if complete (ms)")).to_have_value("250")
    await row.get_by_label("End of turn").select_option(label="Silence only")
    await expect(page.locator("#notice")).to_have_text(
        "Saved Kitchen's turn-taking. End of turn: Silence only.")
    assert await turn() == {"detector": "silence", "complete_hold_ms": 250, "echo": "on"}
    # Emptied, a setting is the server's again.
    hold = row.get_by_label("Hold if complete (ms)")
    await hold.fill("")
    await hold.press("Tab")
    await expect(page.locator("#notice")).to_contain_text(
        "Hold if complete (ms): server default")
    assert await turn() == {"detector": "silence", "echo": "on"}
    # A refused value says which setting and why, and the field shows the saved one again.
    wait = row.get_by_label("Wait if unfinished (ms)")
    await wait.fill("-5")
    await wait.press("Tab")
    await expect(page.locator("#notice")).to_contain_text("turn.incomplete_max_ms")
    await expect(page.locator("#notice")).to_contain_text(">= 0")
    await expect(wait).to_have_value("")
    assert await turn() == {"detector": "silence", "echo": "on"}

    await page.reload()
    await page.wait_for_selector("body[data-state='idle']")
    await page.get_by_label("Turn-taking of Kitchen").click()
    await expect(row.get_by_label("End of turn")).to_have_value("silence")
    await expect(row.get_by_label("Echo from a speaker")).to_have_value("on")
    assert not [p for p in page.problems if "page error" in p], page.problems
