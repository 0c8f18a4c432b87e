"""The OpenAPI 3.1 document, generated from the endpoint table and the msgspec Structs."""

from __future__ import annotations

import re
from types import UnionType
from typing import Any

import msgspec

from edge.api.endpoint import Endpoint, FormField
from edge.api.models import ID_PATTERN, Error

REF = "#/components/schemas/{name}"
DESCRIPTIONS = {400: "malformed request", 401: "missing, invalid, expired or revoked credentials",
                403: "forbidden: not allowed to this account",
                404: "not found (or not yours)", 409: "conflict", 410: "gone", 413: "body too large",
                415: "unsupported media type or file type", 422: "invalid input", 423: "account locked",
                429: "rate limited",
                500: "internal error", 503: "unavailable: retry"}
TEXT = {"schema": {"type": "string"}}
# Headers some answers always carry.
HEADERS: dict[int, dict[str, Any]] = {
    201: {"Location": {"description": "the created resource", "required": True, **TEXT}},
    202: {"Location": {"description": "the accepted resource, to follow", "required": False, **TEXT}},
    401: {"WWW-Authenticate": {"description": "the bearer scheme", "required": True, **TEXT}},
    429: {"Retry-After": {"description": "seconds to wait", "required": True, **TEXT}},
    503: {"Retry-After": {"description": "seconds to wait", "required": False, **TEXT}},
}


def document(endpoints: tuple[Endpoint, ...], version: str) -> dict[str, Any]:
    types: list[type | UnionType] = [Error]
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
                 "description": "Accounts, assistants, devices, documents, search and sessions "
                                "of a vagent deployment."},
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
    if e.status in HEADERS:
        ok["headers"] = HEADERS[e.status]
    responses[str(e.status)] = ok
    for status in sorted(_error_statuses(e)):
        answer = {"description": DESCRIPTIONS.get(status, "error"), **error}
        if status in HEADERS:
            answer["headers"] = HEADERS[status]
        responses[str(status)] = answer
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": ID_PATTERN}}
                  for name in re.findall(r"{(\w+)}", e.path)]
    parameters += [{"name": q.name, "in": "query", "required": q.required, "description": q.description,
                    "schema": q.schema} for q in e.query]
    if e.method == "POST" and not e.reads_request:
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
    elif e.form:
        operation["requestBody"] = {"required": True,
                                    "content": {"multipart/form-data": {"schema": _form_schema(e.form)}}}
    if e.auth:
        operation["security"] = [{"bearer": []}]
    return operation


def _form_schema(form: tuple[FormField, ...]) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    properties = {f.name: (binary if f.file else {"type": "string", "maxLength": f.max_length})
                  | {"description": f.description} for f in form}
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [f.name for f in form if f.required]
    if required:
        schema["required"] = required
    return schema


def _error_statuses(e: Endpoint) -> set[int]:
    """The error statuses the wrapper (endpoint.bind) may answer for `e`, and its own."""
    statuses = {500, 503, *e.errors}
    post, body = e.method == "POST", e.body is not None or bool(e.form)
    if e.auth:
        statuses.add(401)  # the bearer token
    if "{" in e.path:
        statuses.add(404)  # no such id (or not a possible one)
    if e.method in ("POST", "PATCH", "PUT"):
        statuses.add(413)  # the body is read, and capped
    if body or post:
        statuses.add(400)  # malformed JSON; a bad Idempotency-Key
    if body:
        statuses.add(415)  # not application/json (or multipart/form-data)
    if body or post or e.query:
        statuses.add(422)  # the body's or the query's validation; an Idempotency-Key reused
    if post and not e.reads_request:
        statuses.add(409)  # the same Idempotency-Key is still running
    return statuses


def _optional(kind: Any) -> bool:
    return type(None) in getattr(kind, "__args__", ())
