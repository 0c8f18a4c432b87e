"""One table of endpoints drives both the routing and the OpenAPI document, so the two
cannot drift. Each endpoint states its body and answer types; the wrapper here does what
every endpoint needs: the client-IP rate limit, the bearer token, a size-capped JSON
body decoded into its Struct, `Idempotency-Key`, and errors of one shape."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from bus.errors import BusError
from edge.api import idempotency
from edge.api.models import ID_PATTERN
from edge.errors import ApiError, not_found, unauthorized
from edge.identity.tokens import Principal
from edge.services import Services

log = logging.getLogger("vagent.edge.api")
JSON = "application/json"
PATH_ID = re.compile(ID_PATTERN)


@dataclass
class Call:
    request: Request
    services: Services
    principal: Principal | None
    body: Any  # the decoded request Struct, if the endpoint takes one
    params: dict[str, str]  # path parameters

    @property
    def user_id(self) -> str:
        assert self.principal is not None
        return self.principal.user_id

    def query_param(self, name: str) -> str | None:
        return self.request.query_params.get(name)


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # Starlette syntax, which is also OpenAPI's: /api/v1/assistants/{assistant_id}
    # (every path parameter is an id: `{kind}_id`, ID_PATTERN)
    handler: Handler
    summary: str
    tag: str
    status: int = 200  # the success status
    body: type | None = None  # the JSON request body's Struct
    answer: type | None = None  # the success body's Struct (None: no body)
    auth: bool = True  # needs `Authorization: Bearer <access token>`
    rate_limited: bool = False  # counted against the client IP's limit
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = field(default=())  # statuses it may answer besides the common ones

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(value), status, headers, media_type=JSON)


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def client_ip(request: Request, services: Services) -> str:
    if services.config.auth.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.client.host if request.client else "unknown"


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes", {"limit": limit})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes",
                           {"limit": limit})
        chunks.append(chunk)
    return b"".join(chunks)


def decode_body(raw: bytes, content_type: str, kind: type) -> Any:
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        return msgspec.json.decode(raw or b"null", type=kind)
    except msgspec.ValidationError as exc:
        path = str(exc).rpartition(" - at `")[2].rstrip("`") if " - at `" in str(exc) else "$"
        raise ApiError(422, "validation_failed", str(exc), {"at": path}) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def path_params(request: Request) -> dict[str, str]:
    """The path's ids; one that no id could be names nothing there is (and must not reach
    the event log, where `*` or `a.b` would address other subjects): 404."""
    params = {name: str(value) for name, value in request.path_params.items()}
    for name, value in params.items():
        if not PATH_ID.match(value):
            raise not_found(name.removesuffix("_id"), value)
    return params


async def authenticate(request: Request, services: Services) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise unauthorized("token_missing", "send Authorization: Bearer <access token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("token_invalid", "the Authorization header must be 'Bearer <token>'")
    return await services.tokens.verify(token.strip())


def bind(endpoint: Endpoint, services: Services) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        slot: idempotency.Slot | None = None
        try:
            if endpoint.rate_limited:
                services.limiter.check(client_ip(request, services))
            principal = await authenticate(request, services) if endpoint.auth else None
            params = path_params(request)
            raw = b""
            if request.method in ("POST", "PATCH", "PUT"):
                raw = await read_body(request, services.config.edge.max_body_bytes)
            body = (decode_body(raw, request.headers.get("content-type", ""), endpoint.body)
                    if endpoint.body is not None else None)
            key = request.headers.get("idempotency-key")
            if key is not None and request.method == "POST":
                who = principal.user_id if principal else f"anonymous@{client_ip(request, services)}"
                scope = f"{who} {request.method} {request.url.path}"
                slot = await idempotency.claim(services.bus, scope, key, raw)
                if slot.replay is not None:
                    stored = slot.replay
                    content = _b64(stored.body_b64)
                    return Response(content, stored.status,
                                    {**stored.headers, "Idempotent-Replayed": "true"},
                                    media_type=JSON if content else None)
            response = await endpoint.handler(Call(request, services, principal, body, params))
        except ApiError as error:
            response = error_response(error)
        except BusError as exc:
            log.warning("bus unavailable", extra={"path": request.url.path, "error": str(exc)})
            response = error_response(ApiError(503, "unavailable", "the event log is unreachable: retry",
                                               headers={"Retry-After": "1"}))
        except Exception:
            log.exception("request failed", extra={"path": request.url.path})
            response = error_response(ApiError(500, "internal", "internal error"))
        if slot is not None and slot.replay is None:
            try:
                await slot.save(response.status_code, bytes(response.body), _kept_headers(response))
            except Exception:
                log.exception("idempotency record not saved")
        return response

    serve.__name__ = endpoint.operation_id
    return serve


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


KEPT_HEADERS = ("location", "retry-after", "www-authenticate")  # replayed with a stored response


def _kept_headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS}
