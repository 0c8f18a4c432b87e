"""The OpenAPI 3.1 document, generated from the endpoint table and the msgspec Structs."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import msgspec

from edge.api.endpoint import Endpoint
from edge.api.models import Error

REF = "#/components/schemas/{name}"
COMMON_ERRORS = {400: "malformed request", 413: "body too large", 415: "not JSON",
                 422: "invalid input", 500: "internal error", 503: "event log unreachable"}
AUTH_ERRORS = {401: "missing, invalid, expired or revoked token"}
DESCRIPTIONS = {404: "not found (or not yours)", 409: "conflict", 423: "account locked",
                429: "rate limited"}


def document(endpoints: tuple[Endpoint, ...], version: str) -> dict[str, Any]:
    types = [Error]
    for e in endpoints:
        types += [t for t in (e.body, e.answer) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, by_type)
    return {
        "openapi": "3.1.0",
        "info": {"title": "vagent API", "version": version,
                 "description": "Accounts, assistants and devices of a vagent deployment."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _operation(e: Endpoint, schemas: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": schemas[Error]}}}
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": "success"}
    if e.answer is not None:
        ok["content"] = {"application/json": {"schema": schemas[e.answer]}}
    responses[str(e.status)] = ok
    statuses = {**COMMON_ERRORS, **(AUTH_ERRORS if e.auth else {})}
    statuses.update({s: DESCRIPTIONS.get(s, COMMON_ERRORS.get(s, "error")) for s in e.errors})
    for status, text in sorted(statuses.items()):
        responses[str(status)] = {"description": text, **error}
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "minLength": 1, "maxLength": 128}}
                  for name in re.findall(r"{(\w+)}", e.path)]
    parameters += [{"name": q.name, "in": "query", "required": False, "description": q.description,
                    "schema": q.schema} for q in e.query]
    if e.method == "POST":
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "description": "the same key and body within 24 h get the same response",
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255}})
    operation: dict[str, Any] = {"operationId": e.operation_id, "summary": e.summary, "tags": [e.tag],
                                 "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if e.body is not None:
        operation["requestBody"] = {"required": not _optional(e.body),
                                    "content": {"application/json": {"schema": schemas[e.body]}}}
    if e.auth:
        operation["security"] = [{"bearer": []}]
    return operation


def _optional(kind: Any) -> bool:
    return type(None) in getattr(kind, "__args__", ())


@cache
def _encoded(endpoints: tuple[Endpoint, ...], version: str) -> bytes:
    return msgspec.json.encode(document(endpoints, version))
