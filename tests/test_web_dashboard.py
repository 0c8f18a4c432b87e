"""The page's usage dashboard (#usage) in a real headless Chromium (Debian's, via Playwright).

Real turns: a user types to two assistants over /ws through the real dialogue actor and the
echo LLM, with a price per token; the dashboard's cards, bars and lines then show what
GET /api/v1/analytics answers, and the answer what the turns were; made an operator, the user
sees another user's turns too. Then the edges of the API's
contract, answered by the browser itself (page.route): gaps in a percentile, no turns at all,
an operator's scope, a refusal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
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
# The picture of the dashboard with real turns, outside pytest's rotating tmp dirs (copied to
# docs/images/dashboard.png when the page changes).
SCREENSHOT = Path(tempfile.gettempdir()) / "vagent-dashboard.png"


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


async def typed_turns(api: Api, token: str, assistant_id: str | None, texts: list[str]) -> None:
    """One session over /ws (with the user's default assistant unless another is named), a
    turn per text, each answered before the next."""
    url = api.edge.url.replace("http://", "ws://") + f"/ws?token={token}"
    if assistant_id:
        url += f"&assistant_id={assistant_id}"
    async with websockets.connect(url) as ws:
        for text in texts:
            await ws.send(json.dumps({"type": "user.text", "text": text}))
            async with asyncio.timeout(30):
                while json.loads(await ws.recv())["type"] != "assistant.message":
                    pass


async def values(chart: Any, selector: str) -> list[float]:
    return [float(v) for v in await chart.locator(selector).evaluate_all(
        "nodes => nodes.map(n => n.getAttribute('data-value'))")]


async def test_real_turns_show_as_cards_bars_and_lines(page: Any, stack: Api) -> None:
    headers = await sign_up(page)
    token = headers["Authorization"].split()[1]
    r = await stack.client.get("/api/v1/me", headers=headers)
    me = r.json()
    default = me["default_assistant_id"]
    r = await stack.client.post("/api/v1/assistants", json={"name": "Kitchen helper"}, headers=headers)
    assert r.status_code == 201, r.text
    kitchen = r.json()["assistant_id"]
    await typed_turns(stack, token, default, ["hello there"])
    await typed_turns(stack, token, kitchen, ["boil an egg", "how long", "and the toast", "thanks"])

    async def answer(by: str) -> dict[str, Any]:
        r = await stack.client.get(f"/api/v1/analytics?since=7d&by={by}", headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    async with asyncio.timeout(30):  # until the read model has every turn
        while (days := await answer("day"))["totals"]["turns"] < 5:
            await asyncio.sleep(0.2)
    assistants = await answer("assistant")
    totals = days["totals"]
    assert (days["scope"], totals["turns"], totals["sessions"]) == ("own", 5, 2), days
    assert totals["cost"] > 0 and totals["prompt_tokens"] > 0, totals

    await page.goto("/#usage")
    dash = page.locator("#dashboard")
    await expect(dash).to_be_visible()
    await expect(page.locator(".layout")).to_be_hidden()
    await expect(page.locator("#view-usage")).to_have_attribute("aria-current", "page")
    await expect(page.locator("#dash-scope")).to_have_text("Your usage · the last 7 days")
    await expect(page.locator(".stat[data-stat='turns'] dd").first).to_have_text("5")
    await expect(page.locator(".stat[data-stat='sessions'] dd").first).to_have_text("2")
    tokens = totals["prompt_tokens"] + totals["completion_tokens"]
    await expect(page.locator(".stat[data-stat='tokens'] dd").first).to_have_text(f"{tokens:,}")
    await expect(page.locator(".stat[data-stat='errors'] dd").first).to_have_text(str(totals["errors"]))
    await expect(page.locator(".stat[data-stat='cost'] dd").first).to_contain_text("$")

    # Turns per day: a bar for each of the 8 dates the last 7 days touch, today's holding all five.
    turns = page.locator("#dash-turns")
    await expect(turns.locator("rect.bar")).to_have_count(8)
    assert await values(turns, "rect.bar") == [0.0] * 7 + [5.0]
    assert [row["turns"] for row in days["rows"]] == [5], days
    # Cost per assistant: a bar each, dearest first, named.
    cost = page.locator("#dash-cost")
    by_cost = sorted(assistants["rows"], key=lambda row: (-row["cost"], -row["turns"]))
    await expect(cost.locator("rect.bar")).to_have_count(2)
    assert await cost.locator("rect.bar").evaluate_all(
        "nodes => nodes.map(n => n.getAttribute('data-label'))") == [row["label"] for row in by_cost]
    assert await values(cost, "rect.bar") == pytest.approx([row["cost"] for row in by_cost])
    assert by_cost[0]["label"] == "Kitchen helper"  # four turns cost more than one
    await expect(cost.locator("text.name", has_text="Kitchen helper")).to_be_visible()
    await expect(page.locator("#dash-cost-note")).to_be_hidden()
    # Latency of typed turns, p50/p90/p99: a point per day with a measure, one line each.
    await expect(page.locator("#dash-stage")).to_have_value("first_delta")
    latency = page.locator("#dash-latency")
    await expect(latency.locator("g.series")).to_have_count(3)
    for p in ("p50", "p90", "p99"):
        wanted = [days["rows"][0]["latency_ms"]["first_delta"][p]]
        got = await values(latency.locator(f"g.series[data-series='{p}']"), "circle.point")
        assert got == pytest.approx(wanted) and wanted and all(v > 0 for v in wanted), (p, got)
    await expect(latency.locator(".legend li")).to_have_text(["p50", "p90", "p99"])

    # The period: 24 hours asks the API for it and still holds today's turns.
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/analytics" in r.url else None)
    await page.locator("#dashboard label", has_text="24 hours").click()
    await expect(page.locator("#dash-scope")).to_have_text("Your usage · the last 24 hours")
    await expect(page.locator(".stat[data-stat='turns'] dd").first).to_have_text("5")
    assert sorted(u.split("?", 1)[1] for u in asked) == ["since=24h&by=assistant", "since=24h&by=day"]

    await page.locator("#dashboard label", has_text="7 days").click()
    await expect(page.locator("#dash-scope")).to_have_text("Your usage · the last 7 days")
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    print(f"\nscreenshot of the dashboard: {SCREENSHOT}")

    # Back to the conversation: the link, and the view follows the address.
    await page.get_by_role("link", name="Talk").click()
    await expect(page.locator(".layout")).to_be_visible()
    await expect(dash).to_be_hidden()
    await page.go_back()
    await expect(dash).to_be_visible()

    # Made an operator, the same account sees everyone's turns: another user's too.
    other = (await stack.user())["Authorization"].split()[1]
    await typed_turns(stack, other, None, ["someone else"])
    await stack.services.accounts.set_role(me["user_id"], "operator")
    async with asyncio.timeout(30):
        while (await answer("day"))["totals"]["turns"] < 6:
            await asyncio.sleep(0.2)
    await page.get_by_role("button", name="Refresh").click()
    await expect(page.locator("#dash-scope")).to_have_text("All users · the last 7 days")
    await expect(page.locator(".stat[data-stat='turns'] dd").first).to_have_text("6")
    await expect(page.locator(".stat[data-stat='sessions'] dd").first).to_have_text("3")
    await expect(cost.locator("rect.bar")).to_have_count(3)  # the other user's default assistant
    assert not page.problems, page.problems


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
