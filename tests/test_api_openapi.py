"""The OpenAPI document describes exactly the served routes, is valid OpenAPI 3.1, and the
live API keeps to it: schemathesis fuzzes every operation with a real user's token and
checks that no input makes a 5xx, every status and body is the documented one, and every
error has the one error shape."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import CHECKS as SCHEMATHESIS_CHECKS
from schemathesis.checks import load_all_checks, not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from edge.api.openapi import document
from edge.app import ENDPOINTS, OPENAPI_PATH
from schemas import TurnSettings, new_id
from tests.api_harness import Api

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
EXAMPLES = int(os.environ.get("VAGENT_FUZZ_EXAMPLES", "25"))  # per operation and generation mode


async def spec(api: Api) -> dict[str, Any]:
    r = await api.client.get(OPENAPI_PATH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


def served_routes(api: Api) -> set[tuple[str, str]]:
    """(path, method) of every REST route of the app (under /api/v1, and WebRTC's signaling:
    the WebSocket endpoints, the page and the probes are not REST); HEAD comes with GET and
    is not documented."""
    routes = set()
    for route in api.edge.app.routes:
        path = getattr(route, "path", "")
        if not (path.startswith("/api/v1/") or path == "/webrtc/offer") or path == OPENAPI_PATH:
            continue
        assert isinstance(route, Route), route
        routes |= {(route.path, m.lower()) for m in route.methods or () if m != "HEAD"}
    return routes


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in METHODS}


def pointer(doc: Any, ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [*([node["$ref"]] if isinstance(node.get("$ref"), str) else []),
                *(r for v in node.values() for r in refs(v))]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


async def test_document_matches_routes(api: Api) -> None:
    doc = await spec(api)
    assert served_routes(api) == documented(doc)
    assert documented(doc) == {(e.path, e.method.lower()) for e in ENDPOINTS}
    assert (OPENAPI_PATH, "get") not in documented(doc)
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids)) == len(ENDPOINTS)
    # Path parameters are declared exactly as the route has them.
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for op in item.values():
            declared = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            assert declared == names, (path, declared)


async def test_document_is_valid_openapi_31(api: Api) -> None:
    doc = await spec(api)
    assert doc["openapi"].startswith("3.1.")
    assert doc == document(ENDPOINTS, doc["info"]["version"])
    found = refs(doc)
    assert found, "the schemas are shared through components"
    for ref in found:
        pointer(doc, ref)
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(ENDPOINTS)
    # Every documented response that is not a success is the error shape.
    error_ref = "#/components/schemas/Error"
    for item in doc["paths"].values():
        for op in item.values():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == {"$ref": error_ref}


async def test_the_turn_settings_are_documented_with_their_limits(api: Api) -> None:
    """A client learns an assistant's turn settings, and what each may be, from the document:
    the create and read bodies share TurnSettings; PATCH takes some of them, null allowed."""
    doc = await spec(api)
    schemas = doc["components"]["schemas"]

    def turn_of(body: str) -> Any:
        return next(o for o in schemas[body]["properties"]["turn"]["anyOf"] if "$ref" in o)["$ref"]

    assert turn_of("AssistantCreate") == turn_of("Assistant") == "#/components/schemas/TurnSettings"
    assert turn_of("AssistantPatch") == "#/components/schemas/TurnSettingsPatch"
    for name in ("TurnSettings", "TurnSettingsPatch"):
        turn = schemas[name]
        assert turn["additionalProperties"] is False and not turn.get("required")
        fields = {k: next(o for o in v["anyOf"] if o != {"type": "null"})
                  for k, v in turn["properties"].items()}
        assert set(fields) == set(TurnSettings.__struct_fields__)
        assert fields["complete_hold_ms"] == {"type": "integer", "minimum": 0, "maximum": 60000}
        assert fields["threshold"] == {"type": "number", "minimum": 0.0, "maximum": 1.0}
        assert sorted(fields["detector"]["enum"]) == ["silence", "smart_turn"]
        assert sorted(fields["echo"]["enum"]) == ["auto", "off", "on"]
        assert fields["backchannels"]["items"] == {"type": "string", "minLength": 1, "maxLength": 32}


def error_shape(ctx: Any, response: schemathesis.Response, case: Case) -> bool | None:
    """Every error is `{"error": {"code": str, "message": str, "details": object}}` and nothing else."""
    if response.status_code < 400:
        return None
    check_error(response.status_code, response.json())
    return True


def check_error(status: int, body: Any) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, (status, body)
    assert isinstance(error["code"], str) and re.fullmatch(r"[a-z_]+", error["code"]), (status, body)
    assert isinstance(error["message"], str) and error["message"], (status, body)
    assert isinstance(error["details"], dict), (status, body)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, error_shape]
load_all_checks()
# What the fuzzer runs: every check schemathesis has (`--checks all`), and the error shape.
ALL_CHECKS = [*SCHEMATHESIS_CHECKS.get_all(), error_shape]


async def test_unknown_routes_and_methods_answer_the_error_shape(api: Api) -> None:
    c = api.client
    r = await c.get("/api/v1/nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    check_error(404, r.json())
    r = await c.put("/api/v1/me")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    check_error(405, r.json())
    r = await c.post(OPENAPI_PATH)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    check_error(405, r.json())


def validate(schema: schemathesis.BaseSchema, r: httpx.Response) -> None:
    """`r` against the operation of its method and path."""
    method, path = r.request.method, r.request.url.path
    operation = schema.find_operation_by_path(method, path)
    assert operation is not None, (method, path)
    template = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(operation.path))
    match = re.fullmatch(template, path)
    assert match, (operation.path, path)
    operation.Case(path_parameters=match.groupdict()).validate_response(r, checks=CHECKS)


async def test_a_real_flow_keeps_to_the_document(api: Api) -> None:
    """Successes that fuzzing rarely reaches (a bound device, a refreshed token, a delete)
    are checked against the document too: statuses, bodies and headers."""
    schema = schemathesis.openapi.from_dict(await spec(api))
    c = api.client

    async def call(method: str, path: str, *, headers: dict[str, str] | None = None,
                   body: Any = None, status: int) -> Any:
        r = await c.request(method, path, headers=headers, json=body)
        assert r.status_code == status, (method, path, r.text)
        validate(schema, r)
        return r.json() if r.content else None

    email, password = f"f{new_id().lower()}@example.com", "correct horse 9"
    credentials = {"email": email, "password": password}
    await call("POST", "/api/v1/auth/register", body=credentials, status=201)
    pair = await call("POST", "/api/v1/auth/login", headers={"Idempotency-Key": new_id()}, body=credentials,
                      status=200)
    # A replayed error keeps the headers its status documents (WWW-Authenticate on a 401).
    key = {"Idempotency-Key": new_id()}
    for _ in range(2):
        await call("POST", "/api/v1/auth/login", headers=key, body={**credentials, "password": "wrong"},
                   status=401)
    pair = await call("POST", "/api/v1/auth/refresh", body={"refresh_token": pair["refresh_token"]},
                      status=200)
    h = {"Authorization": f"Bearer {pair['access_token']}"}
    await call("GET", "/api/v1/me", headers=h, status=200)
    aid = (await call("POST", "/api/v1/assistants", headers=h, body={"name": "Flow", "tools": ["calculator"]},
                      status=201))["assistant_id"]
    await call("GET", f"/api/v1/assistants/{aid}", headers=h, status=200)
    await call("PATCH", f"/api/v1/assistants/{aid}", headers=h, body={"greeting": "hi"}, status=200)
    page = await call("GET", "/api/v1/assistants?limit=1", headers=h, status=200)
    assert page["next_cursor"]
    await call("GET", f"/api/v1/assistants?limit=1&cursor={page['next_cursor']}", headers=h, status=200)
    device = {"device_id": "AA:BB:CC:00:11:22", "client_id": new_id()}
    code = (await call("POST", "/api/v1/devices/activation", body=device, status=200))["code"]
    key = {"Idempotency-Key": new_id()}
    bound = await call("POST", "/api/v1/devices", headers={**h, **key},
                       body={"code": code, "assistant_id": aid, "name": "desk"}, status=201)
    replay = await c.post("/api/v1/devices", headers={**h, **key},
                          json={"code": code, "assistant_id": aid, "name": "desk"})
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == bound
    validate(schema, replay)
    await call("POST", "/api/v1/devices/activation", body=device, status=200)  # now with its token
    device_id = bound["device"]["device_id"]
    await call("GET", "/api/v1/devices", headers=h, status=200)
    await call("GET", f"/api/v1/devices/{device_id}", headers=h, status=200)
    await call("DELETE", f"/api/v1/devices/{device_id}", headers=h, status=204)
    await call("DELETE", f"/api/v1/assistants/{aid}", headers=h, status=204)
    for path in ("/api/v1/assistants/*", "/api/v1/assistants/a.b", "/api/v1/devices/%2A"):
        for method in ("GET", "DELETE"):
            await call(method, path, headers=h, status=404)
    await call("PATCH", "/api/v1/assistants/*", headers=h, body={}, status=404)
    await call("POST", "/api/v1/auth/verify-email/resend", headers=h, status=409)  # not configured
    await call("POST", "/api/v1/auth/logout", headers=h, body={"refresh_token": pair["refresh_token"]},
               status=204)
    await call("GET", "/api/v1/me", headers=h, status=401)
    await call("POST", "/api/v1/auth/refresh", body={"refresh_token": pair["refresh_token"]}, status=401)


async def test_ids_tokens_and_codes_outside_their_alphabet_are_refused(api: Api) -> None:
    """What schemathesis once found: a Unicode letter or digit reached a KV key (500), and
    `*` named every assistant's log at once (500, or worse)."""
    schema = schemathesis.openapi.from_dict(await spec(api))
    c, h = api.client, await api.user()
    for method, path, body in (
        ("POST", "/api/v1/auth/refresh", {"refresh_token": "é.secret"}),
        ("POST", "/api/v1/devices", {"code": "²"}),
        ("POST", "/api/v1/devices", {"code": "١٢٣٤٥٦"}),
        ("POST", "/api/v1/devices", {"code": "123456", "assistant_id": "*"}),
        ("POST", "/api/v1/devices", {"code": "123456", "assistant_id": "a.b"}),
        ("POST", "/api/v1/auth/logout", {"refresh_token": "é.secret"}),
    ):
        r = await c.request(method, path, headers=h, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed", (body, r.text)
        validate(schema, r)
    aid = (await c.get("/api/v1/me", headers=h)).json()["default_assistant_id"]
    for method, path in (("PATCH", "/api/v1/assistants/*"), ("DELETE", "/api/v1/assistants/*"),
                         ("GET", "/api/v1/assistants/*"), ("DELETE", "/api/v1/devices/é")):
        r = await c.request(method, path, headers=h, json={} if method == "PATCH" else None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
        validate(schema, r)
    assert (await c.get(f"/api/v1/assistants/{aid}", headers=h)).status_code == 200


def sync_login(base_url: str, email: str, password: str) -> dict[str, str]:
    r = httpx.post(f"{base_url}/api/v1/auth/login", json={"email": email, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def fuzz(schema: schemathesis.BaseSchema, base_url: str, email: str, password: str,
         fixed: dict[str, dict[str, str]]) -> list[str]:
    """Every operation in both generation modes, a bounded number of examples each; the
    failures, to report them all at once."""
    failures: list[str] = []
    session = sync_login(base_url, email, password)
    # Deleting and logging out come last: the fixed assistant and the token are used until then.
    operations = sorted((result.ok() for result in schema.get_all_operations()),
                        key=lambda op: (op.method.upper() == "DELETE", op.path == "/api/v1/auth/logout",
                                        op.label))
    for operation in operations:
        # Logging out revokes the token it is sent with: that operation logs in each time.
        auth = (partial(sync_login, base_url, email, password) if operation.path == "/api/v1/auth/logout"
                else partial(dict, session))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies = [operation.as_strategy(generation_mode=mode)]
            if operation.path in fixed and mode is GenerationMode.POSITIVE:
                strategies.append(operation.as_strategy(generation_mode=mode,
                                                        path_parameters=fixed[operation.path]))
            test = _fuzz_test(st.one_of(strategies), base_url, auth)
            try:
                test()
            except (Exception, FailureGroup) as exc:
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return failures


def negates_auth(case: Case) -> bool:
    """A negative case made by leaving out or mangling the bearer token: the token the
    fuzzer adds must not put it back (then the request is valid, and accepted)."""
    data = case.meta.phase.data if case.meta is not None else None
    if data is None:
        return False
    names = {getattr(data, "parameter", None), *(m.parameter for m in getattr(data, "mutations", ()))}
    return "authorization" in {n.lower() for n in names if isinstance(n, str)}


def _fuzz_test(cases: st.SearchStrategy[Case], base_url: str,
               auth: Callable[[], dict[str, str]]) -> Callable[[], None]:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def test(case: Case) -> None:
        headers = {} if negates_auth(case) else auth()
        case.call_and_validate(base_url=base_url, headers=headers, checks=ALL_CHECKS, timeout=30)

    return test


# What a request the schema allows may be answered: a success, or a refusal that depends on
# who asks and what exists (not signed in, not theirs, not found, a conflict, too often).
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]
# Where the schema cannot say all the server checks, the operation's further refusals of
# schema-valid input, and why; nowhere else is a 415, 422 or 423 accepted. Every POST may
# also be 422 idempotency_key_reused: the fuzzer sends one key with different bodies.
DECLARED: dict[tuple[str, str], tuple[list[str], str]] = {
    **{(e.method.upper(), e.path): (["422"], "a cursor is opaque: only one this API gave is valid")
       for e in ENDPOINTS if any(q.name == "cursor" for q in e.query)},
    ("POST", "/api/v1/assistants"): (["422"], "providers, tools and documents named must exist"),
    ("PATCH", "/api/v1/assistants/{assistant_id}"): (["422"], "providers, tools and documents "
                                                      "named must exist"),
    ("POST", "/api/v1/auth/register"): (["422"], "the address must be an email's and the "
                                        "password strong (rules the schema cannot state)"),
    ("POST", "/api/v1/auth/login"): (["423"], "the fuzzer's wrong passwords lock the account"),
    ("POST", "/api/v1/auth/verify-email"): (["422"], "the code must be the one mailed"),
    ("POST", "/api/v1/devices"): (["422"], "the activation code must be pending"),
    ("POST", "/api/v1/documents"): (["415"], "the file must be a type vagent reads"),
    ("POST", "/webrtc/offer"): (["422"], "the SDP must be an offer a peer can answer"),
}


def acceptance_config() -> dict[str, Any]:
    """The positive-data check's statuses, in schemathesis's configuration shape (the same
    for the Python API and the CLI's TOML). An operation is named by its operationId: an
    entry's include filters are alternatives, so a method and a path would match either."""
    declared: dict[tuple[str, str], list[str]] = {}
    for e in ENDPOINTS:
        key = (e.method.upper(), e.path)
        extra = DECLARED.get(key, ([], ""))[0]
        if key[0] == "POST":  # an Idempotency-Key reused with another body
            extra = sorted({*extra, "422"})
        if extra:
            declared[e.operation_id] = extra
    return {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
            "operations": [{"include-operation-id": operation_id,
                            "checks": {"positive_data_acceptance": {
                                "expected-statuses": ACCEPTED + extra}}}
                           for operation_id, extra in declared.items()]}


FUZZ_CONFIG = SchemathesisConfig.from_dict(acceptance_config())


def toml(config: dict[str, Any]) -> str:
    """`acceptance_config()` as TOML: its tables and arrays of tables hold only strings and
    lists of strings."""
    lines = ["[checks.positive_data_acceptance]",
             f"expected-statuses = {json.dumps(ACCEPTED)}"]
    for op in config["operations"]:
        statuses = op["checks"]["positive_data_acceptance"]["expected-statuses"]
        lines += ["", "[[operations]]",
                  f"include-operation-id = {json.dumps(op['include-operation-id'])}",
                  f"checks.positive_data_acceptance.expected-statuses = {json.dumps(statuses)}"]
    return "\n".join(lines) + "\n"


async def test_options_and_unknown_methods_name_every_method_of_the_path(api: Api) -> None:
    """OPTIONS (and any method a path lacks) is 405 with an Allow naming all the path's
    methods, not only those of one of its routes (`/api/v1/assistants` once said GET, HEAD)."""
    doc = await spec(api)
    for path, item in doc["paths"].items():
        concrete = re.sub(r"{\w+}", "01ARZ3NDEKTSV4RRFFQ69G5FAV", path)
        declared = {m.upper() for m in item if m in METHODS} | ({"HEAD"} if "get" in item else set())
        for method in ("OPTIONS", "PUT", "TRACE"):
            if method in declared:
                continue
            r = await api.client.request(method, concrete)
            assert r.status_code == 405, (method, path, r.status_code)
            assert set(r.headers["allow"].split(", ")) == declared, (method, path, r.headers["allow"])
            check_error(405, r.json())
    r = await api.client.options("/api/v1/assistants")
    assert r.headers["allow"] == "GET, HEAD, POST"


@pytest.mark.slow
async def test_schemathesis_finds_nothing(api: Api) -> None:
    doc = await spec(api)
    email, password = f"s{new_id().lower()}@example.com", "correct horse 9"
    r = await api.client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    r = await api.client.post("/api/v1/auth/login", json={"email": email, "password": password})
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await api.client.post("/api/v1/assistants", headers=headers, json={"name": "Fuzzed"})
    assert r.status_code == 201, r.text
    # Fuzzing the assistant's own path with its real id reaches the successes too.
    fixed = {"/api/v1/assistants/{assistant_id}": {"assistant_id": r.json()["assistant_id"]}}
    schema = schemathesis.openapi.from_dict(doc, config=FUZZ_CONFIG)
    failures = await asyncio.to_thread(fuzz, schema, api.edge.url, email, password, fixed)
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
async def test_schemathesis_cli_every_check_and_phase(api: Api, tmp_path: Path) -> None:
    """`schemathesis run --checks all` as CI would run it, with the phases the Python API
    cannot drive: examples, coverage (undeclared methods must be 405 with Allow, missing
    required headers refused, every boundary value) and stateful (links between operations),
    besides fuzzing. Logging out and refreshing are left out: they revoke the token used."""
    email, password = f"c{new_id().lower()}@example.com", "correct horse 9"
    r = await api.client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    r = await api.client.post("/api/v1/auth/login", json={"email": email, "password": password})
    token = r.json()["access_token"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(toml(acceptance_config()))
    output = tmp_path / "schemathesis.txt"
    with output.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
            f"{api.edge.url}{OPENAPI_PATH}", "--checks", "all", "--max-examples", str(min(EXAMPLES, 10)),
            "--phases", "examples,coverage,fuzzing,stateful", "--seed", "1", "--no-color",
            "--exclude-path", "/api/v1/auth/logout", "--exclude-path", "/api/v1/auth/refresh",
            "-H", f"Authorization: Bearer {token}", stdout=out, stderr=asyncio.subprocess.STDOUT)
        code = await asyncio.wait_for(proc.wait(), 240)
    assert code == 0, output.read_text()[-20_000:]
