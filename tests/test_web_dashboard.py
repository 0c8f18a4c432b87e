"""The page's usage dashboard (#usage) in a real headless Chromium (Debian's, via Playwright),
signed in on the real stack, drawing the answers of GET /api/v1/analytics's contract as the
browser itself gives them (page.route): gaps in a percentile, no turns at all, an operator's
scope, a refusal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import websockets
from playwright.async_api import async_playwright, expect

from schemas import new_id
from settings.config import Config, PriceConfig
from tests.api_harness import Api

# per million tokens: the echo LLM's few tokens a turn still cost a visible amount
PRICE = PriceConfig(provider=os.environ.get("VAGENT_LLM_PROVIDER", "openai"),
                    prompt_per_million=1000.0, completion_per_million=2000.0)


def priced(config: Config) -> Config:
    return msgspec.structs.replace(config, prices=[PRICE])


pytestmark = pytest.mark.stack("dialogue", settings=priced)
expect.set_options(timeout=30_000)

CHROMIUM = os.environ.get("VAGENT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The README's picture of the dashboard, taken from the real turns' test.
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "dashboard.png"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Any, stack: Api) -> AsyncIterator[Any]:
    context = await browser.new_context(base_url=stack.edge.url, viewport={"width": 1100, "height": 900},
                                        locale="en-US")
    page = await context.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.problems = problems
    try:
        yield page
    finally:
        await context.close()


async def sign_up(page: Any) -> dict[str, str]:
    """A new account, signed in on the page; its Authorization header."""
    await page.goto("/")
    await page.wait_for_selector("body[data-state='signed-out']")
    await page.get_by_role("button", name="Create an account").click()
    await page.get_by_label("Your name").fill("Ada")
    await page.get_by_label("Email").fill(f"dash{new_id().lower()}@example.com")
    await page.get_by_label("Password").fill("correct horse 9")
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_selector("body[data-state='idle']")
    return {"Authorization": "Bearer " + await page.evaluate("sessionStorage.getItem('vagent.access')")}


async def typed_turns(api: Api, token: str, assistant_id: str, texts: list[str]) -> None:
    """One session over /ws, a turn per text, each answered before the next."""
    url = api.edge.url.replace("http://", "ws://") + f"/ws?token={token}&assistant_id={assistant_id}"
    async with websockets.connect(url) as ws:
        for text in texts:
            await ws.send(json.dumps({"type": "user.text", "text": text}))
            async with asyncio.timeout(30):
                while json.loads(await ws.recv())["type"] != "assistant.message":
                    pass


async def values(chart: Any, selector: str) -> list[float]:
    return [float(v) for v in await chart.locator(selector).evaluate_all(
        "nodes => nodes.map(n => n.getAttribute('data-value'))")]


def row(key: str, label: str, turns: int, cost: float,
        p50: float | None = None, p90: float | None = None, p99: float | None = None) -> dict[str, Any]:
    """A row of the analytics contract; first_delta's percentiles as given, the rest unmeasured."""
    unmeasured = {"p50": None, "p90": None, "p99": None, "count": 0}
    latency = {stage: dict(unmeasured) for stage in
               ("transcript", "first_token", "first_sentence", "first_audio", "first_delta")}
    latency["first_delta"] = {"p50": p50, "p90": p90, "p99": p99, "count": turns if p50 is not None else 0}
    if turns and p50 is not None:
        latency["first_audio"] = {"p50": p50 * 3, "p90": None, "p99": None, "count": 1}
    return {"key": key, "label": label, "sessions": 1 if turns else 0, "turns": turns,
            "audio_in_minutes": 0.5, "audio_out_minutes": 1.25, "prompt_tokens": 10 * turns,
            "completion_tokens": 20 * turns, "cost": cost, "interruptions": 1, "errors": 2,
            "tool_calls": 3, "latency_ms": latency}


def answer(by: str, rows: list[dict[str, Any]], total: dict[str, Any], scope: str) -> dict[str, Any]:
    totals = {k: v for k, v in total.items() if k not in ("key", "label")}
    return {"since": "2026-12-04T12:00:00Z", "until": "2026-12-07T12:00:00Z", "by": by, "scope": scope,
            "currency": "USD", "rows": rows, "totals": totals}


@contextlib.asynccontextmanager
async def answering(page: Any, respond: Any) -> AsyncIterator[list[str]]:
    """GET /api/v1/analytics answered by `respond(by, since)` -> (status, body); the queries asked."""
    asked: list[str] = []

    async def handle(route: Any) -> None:
        query = route.request.url.split("?", 1)[1]
        params = dict(part.split("=", 1) for part in query.split("&"))
        asked.append(query)
        status, body = respond(params["by"], params["since"])
        await route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    await page.route("**/api/v1/analytics?*", handle)
    yield asked


async def test_gaps_an_operators_scope_and_the_period_follow_the_contract(page: Any, stack: Api) -> None:
    days = [row("2026-12-05", "2026-12-05", 4, 0.5, 300.0, 500.0, 900.0),
            row("2026-12-06", "2026-12-06", 0, 0.0),  # no turns that day: no percentile
            row("2026-12-07", "2026-12-07", 6, 1.25, 250.0, 400.0, None)]  # Dec 4: no row at all
    assistants = [row("a1", "Cheap", 7, 0.25), row("a2", "Dear assistant with a long name", 3, 1.5)]
    total = row("", "", 10, 1.75, 270.0, 480.0, 880.0)

    def respond(by: str, since: str) -> tuple[int, dict[str, Any]]:
        return 200, answer(by, days if by == "day" else assistants, total, "all")

    await sign_up(page)
    async with answering(page, respond) as asked:
        await page.get_by_role("link", name="Usage").click()
        await expect(page.locator("#dash-scope")).to_have_text("All users · the last 7 days")
        assert sorted(asked) == ["since=7d&by=assistant", "since=7d&by=day"]
        stats = page.locator("#dash-totals .stat dd:not(.about)")
        await expect(stats).to_have_text(["1", "10", "300", "$1.75", "1.8 min", "3", "1", "2"])
        await expect(page.locator(".stat[data-stat='tokens'] .about")).to_have_text("100 in · 200 out")

        latency = page.locator("#dash-latency")
        p50 = latency.locator("g.series[data-series='p50']")
        # A day without a measure breaks the line: two points, no segment across the gap.
        assert await values(p50, "circle.point") == [300.0, 250.0]
        await expect(p50.locator("path.line")).to_have_count(0)
        p99 = latency.locator("g.series[data-series='p99']")
        assert await values(p99, "circle.point") == [900.0]
        await expect(latency.locator("svg > g.x-labels text")).to_have_text(
            ["Dec 4", "Dec 5", "Dec 6", "Dec 7"])
        await expect(latency.locator("circle.point").first.locator("title")).to_have_text(
            "p50, Dec 5: 300 ms")
        # Only the stages measured are offered; another one redraws the lines.
        stage = page.locator("#dash-stage")
        await expect(stage.locator("option")).to_have_text(
            ["Typed message → first words", "End of speech → first audio"])
        await stage.select_option("first_audio")
        assert await values(latency.locator("g.series[data-series='p50']"), "circle.point") == [900.0, 750.0]
        await expect(latency.locator("g.series[data-series='p90'] circle.point")).to_have_count(0)

        turns = page.locator("#dash-turns")
        assert await values(turns, "rect.bar") == [0.0, 4.0, 0.0, 6.0]  # every day of the period
        cost = page.locator("#dash-cost")
        assert await values(cost, "rect.bar") == [1.5, 0.25]  # dearest first
        # a long name is cut to fit, its whole in the bar's tooltip
        await expect(cost.locator("text.name")).to_have_text([re.compile(r"^Dear .*…$"), "Cheap"])
        await expect(cost.locator("rect.bar").first.locator("title")).to_have_text(
            "Dear assistant with a long name: $1.50")

        # Another period: asked for, and the chosen stage kept.
        await page.locator("#dashboard label", has_text="30 days").click()
        await expect(page.locator("#dash-scope")).to_have_text("All users · the last 30 days")
        assert sorted(asked[2:]) == ["since=30d&by=assistant", "since=30d&by=day"]
        await expect(stage).to_have_value("first_audio")
    assert not page.problems, page.problems


async def test_no_turns_a_refusal_and_no_prices_are_said(page: Any, stack: Api) -> None:
    empty = row("", "", 0, 0.0)
    state = {"status": 200}
    free = [row("2026-12-07", "2026-12-07", 2, 0.0, 120.0, 130.0, 140.0)]

    def respond(by: str, since: str) -> tuple[int, dict[str, Any]]:
        if state["status"] == 403:
            return 403, {"error": {"code": "forbidden", "message": "Operators only", "details": None}}
        if state["status"] == 0:
            return 200, answer(by, free if by == "day" else [row("a1", "Free", 2, 0.0)], free[0], "own")
        return 200, answer(by, [], empty, "own")

    await sign_up(page)
    async with answering(page, respond):
        await page.get_by_role("link", name="Usage").click()
        await expect(page.locator("#dash-empty")).to_have_text(
            "No turns yet in the last 7 days: talk to an assistant and they show here.")
        await expect(page.locator("#dash-body")).to_be_hidden()
        await expect(page.locator("#dash-scope")).to_have_text("Your usage · the last 7 days")

        state["status"] = 403
        await page.get_by_role("button", name="Refresh").click()
        await expect(page.locator("#dash-error")).to_have_text(
            "This account may not read usage: Operators only.")
        await expect(page.locator("#dash-empty")).to_be_hidden()

        # Turns without a price: the bars are there at zero, and where prices come from is said.
        state["status"] = 0
        await page.get_by_role("button", name="Refresh").click()
        await expect(page.locator("#dash-error")).to_be_hidden()
        await expect(page.locator("#dash-cost rect.bar")).to_have_count(1)
        await expect(page.locator("#dash-cost-note")).to_be_visible()
        await expect(page.locator("#dash-turns rect.bar")).to_have_count(4)
        # One day with a measure: its points alone, no line.
        await expect(page.locator("#dash-latency circle.point")).to_have_count(3)

        # Signing out forgets it.
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_selector("body[data-state='signed-out']")
        await expect(page.locator("#dash-totals .stat")).to_have_count(0)
    assert not page.problems, page.problems
