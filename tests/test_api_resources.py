"""The REST API's resources: assistants and devices, their pages, who may see what, and
`Idempotency-Key`; all through HTTP against a live edge over a real NATS and read store."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from bus import kv
from bus.client import Bus
from bus.log import load
from bus.server import EmbeddedServer
from domain.assistants import merged_turn
from domain.errors import Invalid, Unauthorized
from domain.tokens import BUCKET, device_key
from edge.api import idempotency
from edge.app import ENDPOINTS
from projections.runtime import rebuild, store_path
from projections.store import ReadStore
from schemas import AssistantUpdated, TurnSettings, new_id
from settings.llm import provider_configs
from tests.api_harness import Api, serve_api

Headers = dict[str, str]


def error_code(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


async def create(api: Api, h: Headers, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "Bob")
    body.setdefault("persona", "You are Bob.")
    r = await api.client.post("/api/v1/assistants", headers=h, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def me(api: Api, h: Headers) -> dict[str, Any]:
    r = await api.client.get("/api/v1/me", headers=h)
    assert r.status_code == 200, r.text
    return r.json()


async def walk(api: Api, h: Headers, path: str, key: str, limit: int = 2) -> list[str]:
    """Every id of a paginated list, following next_cursor; checks each page's size."""
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        r = await api.client.get(path, headers=h, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        ids += [item[key] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
        assert len(page["items"]) == limit  # a page with a next one is full
    raise AssertionError("the cursor never ended")


def mac() -> str:
    raw = new_id().encode().hex()[-12:].upper()
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


async def activation(api: Api, device_id: str, client_id: str = "client-1") -> httpx.Response:
    return await api.client.post("/api/v1/devices/activation",
                                 json={"device_id": device_id, "client_id": client_id})


async def bind(api: Api, h: Headers, device_id: str, assistant_id: str | None = None,
               name: str | None = "kitchen") -> dict[str, Any]:
    r = await activation(api, device_id)
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    body: dict[str, Any] = {"code": r.json()["code"], "name": name}
    if assistant_id:
        body["assistant_id"] = assistant_id
    r = await api.client.post("/api/v1/devices", headers=h, json=body)
    assert r.status_code == 201, r.text
    return r.json()


# --- assistants -----------------------------------------------------------------------------


async def test_assistant_crud(api: Api) -> None:
    c, h = api.client, await api.user()
    r = await c.post("/api/v1/assistants", headers=h, json={
        "name": "Bob", "persona": "You are Bob.", "greeting": "Hi!", "voice": "v1",
        "tools": ["calculator"]})
    assert r.status_code == 201, r.text
    created = r.json()
    aid = created["assistant_id"]
    assert r.headers["location"] == f"/api/v1/assistants/{aid}"
    assert created["name"] == "Bob" and created["persona"] == "You are Bob."
    assert created["greeting"] == "Hi!" and created["voice"] == "v1"
    assert created["tools"] == ["calculator"] and created["documents"] == []
    assert created["llm"] is None and created["asr"] is None and created["tts"] is None
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", created["created_at"])
    assert created["created_at"] == created["updated_at"]

    r = await c.get(f"/api/v1/assistants/{aid}", headers=h)
    assert r.status_code == 200 and r.json() == created

    r = await c.get("/api/v1/assistants", headers=h)
    assert r.status_code == 200
    listed = {a["assistant_id"]: a for a in r.json()["items"]}
    default = (await me(api, h))["default_assistant_id"]
    assert set(listed) == {aid, default} and listed[aid] == created
    assert r.json()["next_cursor"] is None

    # PATCH changes the fields given, and only those.
    r = await c.patch(f"/api/v1/assistants/{aid}", headers=h, json={"greeting": "Hello there"})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["greeting"] == "Hello there"
    unchanged = ("assistant_id", "name", "persona", "voice", "tools", "documents", "llm", "created_at")
    assert {k: patched[k] for k in unchanged} == {k: created[k] for k in unchanged}
    assert patched["updated_at"] >= created["updated_at"]
    r = await c.patch(f"/api/v1/assistants/{aid}", headers=h, json={"name": "Robert", "tools": []})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["tools"], r.json()["greeting"]) == ("Robert", [], "Hello there")
    assert (await c.get(f"/api/v1/assistants/{aid}", headers=h)).json() == r.json()

    r = await c.delete(f"/api/v1/assistants/{aid}", headers=h)
    assert r.status_code == 204 and r.content == b""
    for method in ("GET", "PATCH", "DELETE"):
        r = await c.request(method, f"/api/v1/assistants/{aid}", headers=h,
                            json={"name": "x"} if method == "PATCH" else None)
        assert r.status_code == 404 and error_code(r) == "not_found", (method, r.text)
    r = await c.get("/api/v1/assistants", headers=h)
    assert [a["assistant_id"] for a in r.json()["items"]] == [default]


async def test_the_default_assistant_cannot_be_deleted(api: Api) -> None:
    h = await api.user()
    default = (await me(api, h))["default_assistant_id"]
    assert default
    r = await api.client.delete(f"/api/v1/assistants/{default}", headers=h)
    assert r.status_code == 409 and error_code(r) == "default_assistant", r.text
    assert (await api.client.get(f"/api/v1/assistants/{default}", headers=h)).status_code == 200


async def test_an_assistant_with_bound_devices_cannot_be_deleted(api: Api) -> None:
    h = await api.user()
    assistant = await create(api, h, name="Hall")
    device = (await bind(api, h, mac(), assistant["assistant_id"]))["device"]["device_id"]
    path = f"/api/v1/assistants/{assistant['assistant_id']}"
    r = await api.client.delete(path, headers=h)
    assert r.status_code == 409 and error_code(r) == "assistant_in_use", r.text
    assert r.json()["error"]["details"]["devices"] == [device]
    assert (await api.client.delete(f"/api/v1/devices/{device}", headers=h)).status_code == 204
    assert (await api.client.delete(path, headers=h)).status_code == 204


async def test_the_systems_default_assistant_is_nobodys(api: Api) -> None:
    h = await api.user()
    for method in ("GET", "PATCH", "DELETE"):
        r = await api.client.request(method, "/api/v1/assistants/default", headers=h,
                                     json={"name": "x"} if method == "PATCH" else None)
        assert r.status_code == 404, (method, r.text)


@pytest.mark.parametrize("kind", ["llm", "asr", "tts"])
async def test_an_unknown_provider_is_refused(api: Api, kind: str) -> None:
    c, h = api.client, await api.user()
    r = await c.post("/api/v1/assistants", headers=h, json={"name": "x", kind: "no-such-provider"})
    assert r.status_code == 422 and error_code(r) == "unknown_provider", r.text
    assert r.json()["error"]["details"]["field"] == kind
    assert r.json()["error"]["details"]["known"]
    aid = (await create(api, h))["assistant_id"]
    r = await c.patch(f"/api/v1/assistants/{aid}", headers=h, json={kind: "no-such-provider"})
    assert r.status_code == 422 and error_code(r) == "unknown_provider", r.text
    assert (await c.get(f"/api/v1/assistants/{aid}", headers=h)).json()[kind] is None
    # Known names are accepted.
    known = {"llm": [p.name for p in provider_configs(api.services.config)],
             "asr": ["moonshine"], "tts": ["piper"]}[kind][0]
    r = await c.patch(f"/api/v1/assistants/{aid}", headers=h, json={kind: known})
    assert r.status_code == 200 and r.json()[kind] == known, r.text


async def test_an_unknown_tool_is_refused(api: Api) -> None:
    c, h = api.client, await api.user()
    r = await c.post("/api/v1/assistants", headers=h,
                     json={"name": "x", "tools": ["calculator", "launch_missiles"]})
    assert r.status_code == 422 and error_code(r) == "unknown_tool", r.text
    assert r.json()["error"]["details"]["unknown"] == ["launch_missiles"]
    aid = (await create(api, h, tools=["calculator"]))["assistant_id"]
    r = await c.patch(f"/api/v1/assistants/{aid}", headers=h, json={"tools": ["launch_missiles"]})
    assert r.status_code == 422 and error_code(r) == "unknown_tool", r.text
    assert (await c.get(f"/api/v1/assistants/{aid}", headers=h)).json()["tools"] == ["calculator"]


async def test_a_document_that_is_not_yours_is_refused(api: Api) -> None:
    c, h = api.client, await api.user()
    for document in (new_id(), "not a valid id!"):
        r = await c.post("/api/v1/assistants", headers=h, json={"name": "x", "documents": [document]})
        assert r.status_code == 422 and error_code(r) == "unknown_document", r.text
        assert r.json()["error"]["details"]["id"] == document


async def test_invalid_bodies_are_refused(api: Api) -> None:
    c, h = api.client, await api.user()
    for body in ({"name": ""}, {"name": "x" * 101}, {"nope": 1}, {"tools": "calculator"}, []):
        r = await c.post("/api/v1/assistants", headers=h, json=body)
        assert r.status_code == 422 and error_code(r) == "validation_failed", (body, r.text)
    r = await c.post("/api/v1/assistants", headers={**h, "Content-Type": "application/json"},
                     content=b"{not json")
    assert r.status_code == 400 and error_code(r) == "malformed_json", r.text


async def test_turn_settings_round_trip_and_change_field_by_field(api: Api) -> None:
    c, h = api.client, await api.user()
    turn = {"detector": "silence", "complete_hold_ms": 250, "threshold": 0.7, "echo": "on",
            "backchannels": ["mhm", "嗯"]}
    created = await create(api, h, turn=turn)
    aid = created["assistant_id"]
    assert created["turn"] == turn
    assert (await c.get(f"/api/v1/assistants/{aid}", headers=h)).json()["turn"] == turn
    # Without `turn`, an assistant takes the configuration's turn-taking.
    assert (await create(api, h))["turn"] is None

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        r = await c.patch(f"/api/v1/assistants/{aid}", headers=h, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    # The turn settings given change; the others keep their values.
    assert (await patch({"turn": {"complete_hold_ms": 300}}))["turn"] == {**turn, "complete_hold_ms": 300}
    assert (await patch({"name": "Robert"}))["turn"] == {**turn, "complete_hold_ms": 300}
    # null sets one back to the configuration's (it is left out); a list is replaced whole.
    after = await patch({"turn": {"detector": None, "backchannels": ["ok"], "barge_in_min_ms": 600}})
    assert after["turn"] == {"complete_hold_ms": 300, "threshold": 0.7, "echo": "on",
                             "backchannels": ["ok"], "barge_in_min_ms": 600}
    assert (await c.get(f"/api/v1/assistants/{aid}", headers=h)).json() == after
    # The event log holds the whole group as it became, so it alone says what is in force.
    bus = api.services.bus
    entries, _ = await load(bus, "assistant", aid)
    updates = [e.event.turn for e in entries if isinstance(e.event, AssistantUpdated)]
    assert [msgspec.to_builtins(t) if t else None for t in updates] == [
        {**turn, "complete_hold_ms": 300}, None, after["turn"]]


@pytest.mark.parametrize(("turn", "at", "words"), [
    ({"complete_hold_ms": -1}, "$.turn.complete_hold_ms", ">= 0"),
    ({"incomplete_max_ms": 60_001}, "$.turn.incomplete_max_ms", "<= 60000"),
    ({"threshold": 1.5}, "$.turn.threshold", "<= 1.0"),
    ({"detector": "vibes"}, "$.turn.detector", "'vibes' (one of: silence, smart_turn)"),
    ({"echo": "maybe"}, "$.turn.echo", "'maybe' (one of: auto, off, on)"),
    ({"backchannels": [""]}, "$.turn.backchannels[0]", "length >= 1"),
    ({"hold_ms": 200}, "$.turn", "unknown field `hold_ms`"),
    ({"complete_hold_ms": "200"}, "$.turn.complete_hold_ms", "got `str`"),
])
async def test_bad_turn_settings_are_refused_naming_the_field(api: Api, turn: dict[str, Any], at: str,
                                                              words: str) -> None:
    c, h = api.client, await api.user()
    aid = (await create(api, h, turn={"complete_hold_ms": 250}))["assistant_id"]
    for method, path in (("POST", "/api/v1/assistants"), ("PATCH", f"/api/v1/assistants/{aid}")):
        r = await c.request(method, path, headers=h, json={"name": "x", "turn": turn})
        assert r.status_code == 422 and error_code(r) == "validation_failed", (method, r.text)
        error = r.json()["error"]
        assert error["details"]["at"] == at and words in error["message"] and at in error["message"], error
    assert (await c.get(f"/api/v1/assistants/{aid}", headers=h)).json()["turn"] == {"complete_hold_ms": 250}


def test_the_domain_merges_and_checks_turn_settings_itself() -> None:
    """What the CLI and any other caller of the domain get, API body or not."""
    current = TurnSettings(complete_hold_ms=250, echo="on")
    assert merged_turn(current, {"echo": None, "threshold": 0.7}) == TurnSettings(
        complete_hold_ms=250, threshold=0.7)
    assert merged_turn(None, TurnSettings(detector="silence")) == TurnSettings(detector="silence")
    assert merged_turn(current, {}) == current
    with pytest.raises(Invalid) as refused:
        merged_turn(current, {"complete_hold_ms": -1})
    assert refused.value.code == "invalid_turn" and "$.turn.complete_hold_ms" in refused.value.message


# --- pagination -----------------------------------------------------------------------------


async def test_pages_walk_every_assistant_once(api: Api) -> None:
    h = await api.user()
    made = [(await create(api, h, name=f"a{i}"))["assistant_id"] for i in range(7)]
    everything = {*made, (await me(api, h))["default_assistant_id"]}
    for limit in (1, 2, 3, 8, 100):
        ids = await walk(api, h, "/api/v1/assistants", "assistant_id", limit)
        assert len(ids) == len(set(ids)), f"duplicates with limit={limit}"
        assert set(ids) == everything, f"missing with limit={limit}"
        assert ids == sorted(ids)
    r = await api.client.get("/api/v1/assistants", headers=h, params={"limit": 8})
    assert r.json()["next_cursor"] is None  # exactly one full page: no empty page after it
    r = await api.client.get("/api/v1/assistants", headers=h)
    assert len(r.json()["items"]) == len(everything)  # the default limit is larger


async def test_bad_limits_and_cursors_are_refused(api: Api) -> None:
    h = await api.user()
    for path in ("/api/v1/assistants", "/api/v1/devices"):
        for limit in ("0", "101", "-1", "abc", "1.5", ""):
            r = await api.client.get(path, headers=h, params={"limit": limit})
            assert r.status_code == 422 and error_code(r) == "validation_failed", (path, limit, r.text)
            assert r.json()["error"]["details"]["at"] == "limit"
        bad_utf8 = base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("=")
        not_an_id = base64.urlsafe_b64encode(b"x' OR 1=1 --").decode().rstrip("=")
        for cursor in (bad_utf8, not_an_id, "a", "%%%", "AAAA%", "x" * 401):
            r = await api.client.get(path, headers=h, params={"cursor": cursor})
            assert r.status_code == 422 and error_code(r) == "validation_failed", (path, cursor, r.text)
            assert r.json()["error"]["details"]["at"] == "cursor"


# --- devices --------------------------------------------------------------------------------


async def test_device_activation_bind_and_unbind(api: Api) -> None:
    c, h = api.client, await api.user()
    aid = (await create(api, h))["assistant_id"]
    device = mac()

    r = await activation(api, device)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["status"] == "pending" and re.fullmatch(r"\d{6}", first["code"])
    assert first["expires_in"] > 0 and first["token"] is None
    r = await activation(api, device)  # asking again: the same code
    assert r.status_code == 200 and r.json()["code"] == first["code"]
    r = await activation(api, device.lower())  # the id is case-insensitive
    assert r.status_code == 200 and r.json()["code"] == first["code"]
    r = await activation(api, device, "another-client")
    assert r.status_code == 409 and error_code(r) == "activation_pending", r.text

    r = await c.post("/api/v1/devices", headers=h, json={"code": "000000x"})
    assert r.status_code == 422 and error_code(r) == "activation_code_invalid", r.text
    wrong = f"{(int(first['code']) + 1) % 1_000_000:06d}"
    r = await c.post("/api/v1/devices", headers=h, json={"code": wrong, "assistant_id": aid})
    assert r.status_code == 422 and error_code(r) == "activation_code_invalid", r.text

    r = await c.post("/api/v1/devices", headers=h,
                     json={"code": first["code"], "assistant_id": aid, "name": "kitchen"})
    assert r.status_code == 201, r.text
    bound = r.json()
    device_id = device.lower()
    assert r.headers["location"] == f"/api/v1/devices/{device_id}"
    assert bound["device"]["device_id"] == device_id
    assert bound["device"]["assistant_id"] == aid and bound["device"]["name"] == "kitchen"
    assert bound["device"]["bound_at"].endswith("Z")
    grant = await api.services.tokens.verify_device(bound["token"], device)
    assert (grant.device_id, grant.assistant_id) == (device_id, aid)

    r = await activation(api, device)  # the device asks again and collects its token
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "bound" and r.json()["token"] == bound["token"]
    assert r.json()["assistant_id"] == aid and r.json()["code"] is None
    r = await activation(api, device, "another-client")
    assert r.status_code == 409, r.text

    # The code was used; and once the activation record lapsed, a bound device gets no new
    # code: its own client gets a token again, another client nothing.
    r = await c.post("/api/v1/devices", headers=h, json={"code": first["code"], "assistant_id": aid})
    assert r.status_code == 422 and error_code(r) == "activation_code_invalid", r.text
    await kv.delete(api.services.bus, BUCKET, f"act.{device_key(device_id)}")
    r = await activation(api, device, "another-client")
    assert r.status_code == 409 and error_code(r) == "device_bound", r.text
    r = await activation(api, device)
    assert r.status_code == 200 and r.json()["status"] == "bound" and r.json()["code"] is None
    grant = await api.services.tokens.verify_device(r.json()["token"], device)
    assert (grant.device_id, grant.assistant_id) == (device_id, aid)

    r = await c.get(f"/api/v1/devices/{device}", headers=h)  # any case
    assert r.status_code == 200 and r.json() == bound["device"]
    r = await c.get("/api/v1/devices", headers=h)
    assert r.status_code == 200 and r.json() == {"items": [bound["device"]], "next_cursor": None}

    r = await c.delete(f"/api/v1/devices/{device}", headers=h)
    assert r.status_code == 204 and r.content == b""
    with pytest.raises(Unauthorized):
        await api.services.tokens.verify_device(bound["token"], device)
    assert (await c.get("/api/v1/devices", headers=h)).json()["items"] == []
    assert (await c.get(f"/api/v1/devices/{device}", headers=h)).status_code == 404
    r = await c.delete(f"/api/v1/devices/{device}", headers=h)
    assert r.status_code == 404 and error_code(r) == "not_found"

    # Unbound, it can be activated and bound again; the old token stays dead.
    again = await bind(api, h, device)
    assert again["device"]["assistant_id"] == (await me(api, h))["default_assistant_id"]
    assert again["token"] != bound["token"]
    await api.services.tokens.verify_device(again["token"], device)
    with pytest.raises(Unauthorized):
        await api.services.tokens.verify_device(bound["token"], device)


async def test_a_device_token_is_for_its_device_only(api: Api) -> None:
    h = await api.user()
    bound = await bind(api, h, mac())
    with pytest.raises(Unauthorized):
        await api.services.tokens.verify_device(bound["token"], mac())
    with pytest.raises(Unauthorized):
        await api.services.tokens.verify_device(h["Authorization"].split()[1])  # an access token


async def test_one_code_binds_one_device_once(api: Api) -> None:
    """Two owners racing with the same code: one binds it, the other is refused."""
    ha, hb = await api.user(), await api.user()
    device = mac()
    code = (await activation(api, device)).json()["code"]
    answers = await asyncio.gather(*(api.client.post("/api/v1/devices", headers=h, json={"code": code})
                                     for h in (ha, hb)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses[0] == 201 and statuses[1] in (409, 422), [r.text for r in answers]
    winner = ha if answers[0].status_code == 201 else hb
    loser = hb if winner is ha else ha
    assert len((await api.client.get("/api/v1/devices", headers=winner)).json()["items"]) == 1
    assert (await api.client.get("/api/v1/devices", headers=loser)).json()["items"] == []


async def test_invalid_activation_requests(api: Api) -> None:
    for body in ({"device_id": "a b", "client_id": "c"}, {"device_id": "a.b", "client_id": "c"},
                 {"device_id": "x" * 129, "client_id": "c"}, {"device_id": "aa", "client_id": ""},
                 {"device_id": "aa"}):
        r = await api.client.post("/api/v1/devices/activation", json=body)
        assert r.status_code == 422, (body, r.text)


async def test_device_pages(api: Api) -> None:
    h = await api.user()
    devices = {(await bind(api, h, mac(), name=None))["device"]["device_id"] for _ in range(5)}
    ids = await walk(api, h, "/api/v1/devices", "device_id", 2)
    assert ids == sorted(devices)


# --- isolation ------------------------------------------------------------------------------


async def test_users_see_only_their_own(api: Api) -> None:
    c = api.client
    ha, hb = await api.user(), await api.user()
    a_default = (await me(api, ha))["default_assistant_id"]
    a_assistants = [a_default] + [(await create(api, ha, name=f"A{i}"))["assistant_id"] for i in range(3)]
    a_devices = [(await bind(api, ha, mac(), a_assistants[1]))["device"]["device_id"] for _ in range(2)]
    b_own = (await create(api, hb, name="B"))["assistant_id"]

    for aid in a_assistants:
        r = await c.get(f"/api/v1/assistants/{aid}", headers=hb)
        assert r.status_code == 404 and error_code(r) == "not_found", r.text
        r = await c.patch(f"/api/v1/assistants/{aid}", headers=hb, json={"name": "mine now"})
        assert r.status_code == 404 and error_code(r) == "not_found", r.text
        r = await c.delete(f"/api/v1/assistants/{aid}", headers=hb)
        assert r.status_code == 404 and error_code(r) == "not_found", r.text
        # B cannot bind a device to A's assistant; the code stays usable.
        device = mac()
        code = (await activation(api, device)).json()["code"]
        r = await c.post("/api/v1/devices", headers=hb, json={"code": code, "assistant_id": aid})
        assert r.status_code == 404 and error_code(r) == "not_found", r.text
        r = await c.post("/api/v1/devices", headers=hb, json={"code": code, "assistant_id": b_own})
        assert r.status_code == 201, r.text
    for device_id in a_devices:
        for method in ("GET", "DELETE"):
            r = await c.request(method, f"/api/v1/devices/{device_id}", headers=hb)
            assert r.status_code == 404 and error_code(r) == "not_found", (method, r.text)

    # The 404 says nothing more than a missing one would.
    missing = await c.get(f"/api/v1/assistants/{new_id()}", headers=hb)
    theirs = await c.get(f"/api/v1/assistants/{a_assistants[2]}", headers=hb)
    assert missing.status_code == theirs.status_code == 404
    assert missing.json()["error"].keys() == theirs.json()["error"].keys()

    b_assistants = await walk(api, hb, "/api/v1/assistants", "assistant_id", 100)
    b_devices = await walk(api, hb, "/api/v1/devices", "device_id", 100)
    assert not set(b_assistants) & set(a_assistants)
    assert b_own in b_assistants and len(b_devices) == len(a_assistants)
    assert not set(b_devices) & set(a_devices)
    # A's things are untouched.
    assert set(await walk(api, ha, "/api/v1/assistants", "assistant_id", 100)) == set(a_assistants)
    assert sorted(await walk(api, ha, "/api/v1/devices", "device_id", 100)) == sorted(a_devices)
    for aid in a_assistants[1:]:
        assert (await c.get(f"/api/v1/assistants/{aid}", headers=ha)).json()["name"].startswith("A")


def authed_endpoints() -> list[tuple[str, str]]:
    return [(e.method, re.sub(r"\{[^}]+\}", "x1", e.path)) for e in ENDPOINTS if e.auth]


@pytest.mark.parametrize(("method", "path"), authed_endpoints())
async def test_no_token_no_entry(api: Api, method: str, path: str) -> None:
    body = {} if method in ("POST", "PATCH", "PUT") else None
    r = await api.client.request(method, path, json=body)
    assert r.status_code == 401 and error_code(r) == "token_missing", r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz"):
        r = await api.client.request(method, path, json=body, headers={"Authorization": header})
        assert r.status_code == 401 and error_code(r) == "token_invalid", (header, r.text)


async def test_every_resource_endpoint_needs_a_token(api: Api) -> None:
    authed = {(e.method, e.path) for e in ENDPOINTS if e.auth}
    for method, path in (("GET", "/api/v1/assistants"), ("POST", "/api/v1/assistants"),
                         ("GET", "/api/v1/assistants/{assistant_id}"),
                         ("PATCH", "/api/v1/assistants/{assistant_id}"),
                         ("DELETE", "/api/v1/assistants/{assistant_id}"), ("POST", "/api/v1/devices"),
                         ("GET", "/api/v1/devices"), ("GET", "/api/v1/devices/{device_id}"),
                         ("DELETE", "/api/v1/devices/{device_id}")):
        assert (method, path) in authed


# --- Idempotency-Key ------------------------------------------------------------------------


async def test_idempotency_key_replays_the_first_answer(api: Api) -> None:
    c, h = api.client, await api.user()
    before = await walk(api, h, "/api/v1/assistants", "assistant_id", 100)
    key = {"Idempotency-Key": new_id()}
    body = {"name": "Once", "persona": "p"}
    first = await c.post("/api/v1/assistants", headers={**h, **key}, json=body)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    second = await c.post("/api/v1/assistants", headers={**h, **key}, json=body)
    assert second.status_code == 201, second.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    after = await walk(api, h, "/api/v1/assistants", "assistant_id", 100)
    assert set(after) - set(before) == {first.json()["assistant_id"]}

    r = await c.post("/api/v1/assistants", headers={**h, **key}, json={**body, "name": "Twice"})
    assert r.status_code == 422 and error_code(r) == "idempotency_key_reused", r.text
    assert len(await walk(api, h, "/api/v1/assistants", "assistant_id", 100)) == len(after)

    # The key is the caller's own: another user with the same key and body makes their own.
    other = await api.user()
    r = await c.post("/api/v1/assistants", headers={**other, **key}, json=body)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers, r.text
    assert r.json()["assistant_id"] != first.json()["assistant_id"]
    # A new key is a new request.
    r = await c.post("/api/v1/assistants", headers={**h, "Idempotency-Key": new_id()}, json=body)
    assert r.status_code == 201 and r.json()["assistant_id"] != first.json()["assistant_id"]


async def test_idempotency_records_keep_no_token_readable(api: Api) -> None:
    """A retried login gets the same tokens back, yet the bucket holds them only sealed: read
    without the server's secret and the request's key, it gives no token away."""
    c = api.client
    email = f"u{new_id().lower()}@example.com"
    account = {"email": email, "password": "correct horse 9"}
    assert (await c.post("/api/v1/auth/register", json=account)).status_code == 201
    key = {"Idempotency-Key": new_id()}
    first = await c.post("/api/v1/auth/login", headers=key, json=account)
    again = await c.post("/api/v1/auth/login", headers=key, json=account)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    records = list((await kv.items(api.services.bus, idempotency.BUCKET)).values())
    stored = b"".join(records)
    tokens = first.json()
    for secret in (tokens["access_token"], tokens["refresh_token"], email):
        assert secret.encode() not in stored
    assert base64.b64encode(first.content) not in stored
    assert all(set(json.loads(r)) <= {"body_sha256", "done", "nonce_b64", "sealed_b64"} for r in records)

    # Under another server secret the record cannot be opened: the request runs anew.
    other = await idempotency.claim(api.services.bus, b"another secret", "x", "k", b"{}")
    await other.save(200, b'{"token": "t"}', {})
    again = await idempotency.claim(api.services.bus, b"a third secret", "x", "k", b"{}")
    assert again.replay is None and again.revision is not None
    await again.release()


async def test_idempotency_key_replays_a_refusal(api: Api) -> None:
    c, h = api.client, await api.user()
    key = {"Idempotency-Key": new_id()}
    body = {"name": "x", "llm": "no-such-provider"}
    first = await c.post("/api/v1/assistants", headers={**h, **key}, json=body)
    assert first.status_code == 422 and error_code(first) == "unknown_provider", first.text
    second = await c.post("/api/v1/assistants", headers={**h, **key}, json=body)
    assert second.status_code == 422 and second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"

    # Binding with a bad code, replayed too (the devices endpoint takes keys as well).
    bad = {"code": "999999x"}
    first = await c.post("/api/v1/devices", headers={**h, **key}, json=bad)
    assert first.status_code == 422, first.text
    assert "idempotent-replayed" not in first.headers  # another path: another key space
    second = await c.post("/api/v1/devices", headers={**h, **key}, json=bad)
    assert second.status_code == 422 and second.headers["idempotent-replayed"] == "true"


async def test_idempotent_bind_returns_the_same_token(api: Api) -> None:
    c, h = api.client, await api.user()
    device = mac()
    code = (await activation(api, device)).json()["code"]
    key = {"Idempotency-Key": new_id()}
    first = await c.post("/api/v1/devices", headers={**h, **key}, json={"code": code})
    assert first.status_code == 201, first.text
    second = await c.post("/api/v1/devices", headers={**h, **key}, json={"code": code})
    assert second.status_code == 201 and second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"


async def test_bad_idempotency_keys(api: Api) -> None:
    h = await api.user()
    for key in (b"x" * 256, "ключ".encode()):
        r = await api.client.post("/api/v1/assistants", headers={**h, "Idempotency-Key": key},
                                  json={"name": "x"})
        assert r.status_code == 400 and error_code(r) == "invalid_idempotency_key", (key, r.text)


async def test_concurrent_binds_and_unbinds_of_one_owner_all_succeed(api: Api) -> None:
    """Each decision appends to the owner's log; concurrent ones retry rather than fail."""
    c, h = api.client, await api.user()
    devices = [mac() for _ in range(4)]
    codes = [(await activation(api, d)).json()["code"] for d in devices]
    answers = await asyncio.gather(*(c.post("/api/v1/devices", headers=h, json={"code": code})
                                     for code in codes))
    assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
    listed = await walk(api, h, "/api/v1/devices", "device_id", 100)
    assert listed == sorted(d.lower() for d in devices)
    answers = await asyncio.gather(*(c.delete(f"/api/v1/devices/{d}", headers=h) for d in devices))
    assert [r.status_code for r in answers] == [204] * 4, [r.text for r in answers]
    assert (await c.get("/api/v1/devices", headers=h)).json()["items"] == []


# --- rebuilding the read models -------------------------------------------------------------


async def test_rebuilt_read_models_equal_the_live_ones(module_nats: EmbeddedServer, tmp_path: Path) -> None:
    """After API activity of every kind, the users, assistants and devices tables rebuilt
    from the streams alone are the live ones, row for row."""
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    async with serve_api(module_nats.url, live_dir) as api:
        c = api.client
        users = [await api.user() for _ in range(3)]
        for n, h in enumerate(users):
            kept = (await create(api, h, name=f"kept {n}", tools=["calculator"]))["assistant_id"]
            gone = (await create(api, h, name=f"gone {n}"))["assistant_id"]
            r = await c.patch(f"/api/v1/assistants/{kept}", headers=h,
                              json={"greeting": "hi", "tools": [], "tts": "piper"})
            assert r.status_code == 200, r.text
            r = await c.patch(f"/api/v1/assistants/{kept}", headers=h,
                              json={"turn": {"echo": "on", "complete_hold_ms": 300 + n}})
            assert r.status_code == 200, r.text
            r = await c.patch(f"/api/v1/assistants/{kept}", headers=h,
                              json={"turn": {"echo": None, "backchannels": ["嗯"]}})
            assert r.json()["turn"] == {"complete_hold_ms": 300 + n, "backchannels": ["嗯"]}, r.text
            assert (await c.delete(f"/api/v1/assistants/{gone}", headers=h)).status_code == 204
            stays = await bind(api, h, mac(), kept)
            leaves = await bind(api, h, mac(), name=None)
            r = await c.delete(f"/api/v1/devices/{leaves['device']['device_id']}", headers=h)
            assert r.status_code == 204
            assert stays["device"]["assistant_id"] == kept
        me_ = [await me(api, h) for h in users]
        await api.services.accounts.lock(me_[0]["user_id"])
        await api.services.accounts.lock(me_[1]["user_id"], until_ts=time.time_ns() + 10**12)
        await api.services.accounts.unlock(me_[1]["user_id"])
        # Read each model fresh once, so the live store has applied everything before it stops.
        for query, params in (("users", {}), ("all_assistants", {}), ("all_devices", {})):
            assert await api.services.query(query, after="", limit=10_000, **params)
        locked = await api.services.query("user", user_id=me_[0]["user_id"])
        assert locked[0]["locked"] is True
    # serve_api stopped the live projection service: its file is complete and closed.

    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    bus = await Bus.connect(module_nats.url, name="test-rebuild")
    try:
        counts = await rebuild(bus, store_path(rebuilt))
    finally:
        await bus.close()
    live = ReadStore(store_path(live_dir), [], read_only=True)
    fresh = ReadStore(store_path(rebuilt), [], read_only=True)
    try:
        for table in ("users", "assistants", "devices"):
            rows = live.table(table)
            assert rows == fresh.table(table), table
            assert counts[table] == len(rows) > 0
        # A group of settings, kept as JSON, is rebuilt as the updates left it.
        turns = {turn for (turn,) in fresh.query("SELECT turn FROM assistants")[1]}
        assert turns >= {f'{{"complete_hold_ms":{300 + n},"backchannels":["嗯"]}}' for n in range(3)}
        ids = {u["user_id"] for u in me_}
        assert len([r for r in live.table("users") if r[0] in ids]) == 3
        assert len([r for r in live.table("devices") if r[1] in ids]) == 3
        checkpoints = [r for r in live.table("_checkpoints") if r[0] in ("users", "assistants", "devices")]
        assert checkpoints == [r for r in fresh.table("_checkpoints") if r[0] in ("users", "assistants",
                                                                                   "devices")]
    finally:
        live.close()
        fresh.close()
