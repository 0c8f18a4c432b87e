"""One table of endpoints drives both the routing and the OpenAPI document, so the two
cannot drift. Each endpoint states its body and answer types; the wrapper here does what
every endpoint needs: the client-IP rate limit, the bearer token, a size-capped JSON
body decoded into its Struct (or a size-capped multipart form, its files spooled to
disk as they stream in), `Idempotency-Key`, and errors of one shape."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import UnionType
from typing import Any

import msgspec
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response

from bus.errors import BusError
from domain.errors import DomainError
from domain.tokens import Principal
from edge import jsonparse
from edge.api import idempotency
from edge.api.models import ID_PATTERN
from edge.errors import ApiError, from_domain, not_found, unauthorized
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
class FormField:
    """One part of a multipart/form-data body."""

    name: str
    description: str
    file: bool = False  # a file (else a text field)
    required: bool = False
    max_length: int = 1000  # a text field's characters


@dataclass
class Form:
    """A multipart body, read: its text fields, and its files spooled to temporary files
    (in memory up to 1 MiB, then on disk)."""

    fields: dict[str, str]
    files: dict[str, UploadFile]

    async def fingerprint(self) -> bytes:
        """What `Idempotency-Key` compares: the parts' names, values, file names, types and
        contents, not the bytes on the wire (every client picks a new boundary each time)."""
        digest = hashlib.sha256()
        for name, value in sorted(self.fields.items()):
            digest.update(f"field {name!r} {value!r}\n".encode())
        for name, upload in sorted(self.files.items()):
            content = await asyncio.to_thread(_file_digest, upload)
            digest.update(f"file {name!r} {upload.filename!r} {upload.content_type!r} {content}\n".encode())
        return digest.hexdigest().encode()

    async def close(self) -> None:
        for upload in self.files.values():
            await upload.close()


def _file_digest(upload: UploadFile) -> str:
    upload.file.seek(0)
    digest = hashlib.file_digest(upload.file, "sha256")  # type: ignore[arg-type]  # a real binary file; typing's BinaryIO lacks readinto
    upload.file.seek(0)
    return digest.hexdigest()


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    schema: dict[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # Starlette syntax, which is also OpenAPI's: /api/v1/assistants/{assistant_id}
    # (every path parameter is an id: `{kind}_id`, ID_PATTERN)
    handler: Handler
    summary: str
    tag: str
    status: int = 200  # the success status
    body: type | UnionType | None = None  # the JSON request body's Struct (`| None`: optional)
    form: tuple[FormField, ...] = ()  # a multipart/form-data body instead (Call.body: a Form)
    answer: type | None = None  # the success body's Struct (None: no body)
    auth: bool = True  # needs `Authorization: Bearer <access token>`
    rate_limited: bool = False  # counted against the client IP's limit
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = field(default=())  # statuses it may answer besides the common ones
    # The handler reads the request itself (Call.request), its cheapest refusals before the
    # body: nothing above is done for it, `body` and `auth` only document it, and it takes
    # no Idempotency-Key. Errors still get the one shape.
    reads_request: bool = False

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(value), status, headers, media_type=JSON)


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def gone_client(request: Request) -> Response:
    """The client went away while its request was read: no one to answer and nothing wrong
    here (a slow body given up, a closed tab), so no error line; the answer is for the log."""
    log.debug("client went away mid-request", extra={"path": request.url.path})
    return error_response(ApiError(400, "client_disconnected", "the request's body did not arrive"))


def client_ip(request: HTTPConnection, services: Services) -> str:
    """The client's address (a request's or a WebSocket's), for per-address limits."""
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


def decode_body(raw: bytes, content_type: str, kind: Any, path: str = "") -> Any:
    """The JSON body as `kind`, through the edge's one JSON reader (edge/jsonparse.py: nesting
    capped, strict types); a refusal is logged in one line with its reason."""
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        return jsonparse.parse(raw or b"null", kind)
    except jsonparse.JsonInputError as exc:
        error = exc.api_error()
        if exc.problem == "malformed":
            error.message = f"the body is {exc.reason}"
        log.info("request body refused", extra={"path": path, "code": error.code,
                                                "reason": error.message, **error.details})
        raise error from None


FORM_OVERHEAD = 65_536  # bytes a form may add to its files: boundaries, part headers, fields


async def read_form(request: Request, spec: tuple[FormField, ...], max_file_bytes: int) -> Form:
    """The multipart body as it streams in, refused (413) as soon as it outgrows what
    `max_file_bytes` of files and the text fields can make; each file is checked again."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send the body as multipart/form-data")
    limit = max_file_bytes * sum(1 for f in spec if f.file) + FORM_OVERHEAD
    too_large = ApiError(413, "body_too_large", f"the upload exceeds {max_file_bytes} bytes",
                         {"limit": max_file_bytes})
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large

    async def capped() -> Any:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            yield chunk

    # A few parts more than the form has, to name an unexpected one (422) rather than count it.
    parser = MultiPartParser(request.headers, capped(), max_files=sum(1 for f in spec if f.file) + 2,
                             max_fields=sum(1 for f in spec if not f.file) + 8, max_part_size=FORM_OVERHEAD)
    try:
        data = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "malformed_multipart", f"the body is not a valid form: {exc.message}") from None
    form = Form({}, {})
    try:
        by_name = {f.name: f for f in spec}
        for name, value in data.multi_items():
            field_spec = by_name.get(name)
            if field_spec is None or name in form.fields or name in form.files:
                raise ApiError(422, "validation_failed",
                               f"unexpected form field {name!r}" if field_spec is None
                               else f"form field {name!r} is given twice", {"at": name})
            if field_spec.file != isinstance(value, UploadFile):
                raise ApiError(422, "validation_failed",
                               f"form field {name!r} must be " + ("a file" if field_spec.file else "text"),
                               {"at": name})
            if isinstance(value, UploadFile):
                form.files[name] = value
                if (value.size or 0) > max_file_bytes:
                    raise too_large
            else:
                if len(value) > field_spec.max_length:
                    raise ApiError(422, "validation_failed",
                                   f"{name} is longer than {field_spec.max_length} characters", {"at": name})
                form.fields[name] = value
        for field_spec in spec:
            if field_spec.required and field_spec.name not in form.fields | form.files:
                raise ApiError(422, "validation_failed", f"form field {field_spec.name!r} is required",
                               {"at": field_spec.name})
    except BaseException:
        await form.close()
        for _, value in data.multi_items():
            if isinstance(value, UploadFile):
                await value.close()
        raise
    return form


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
        form: Form | None = None
        try:
            if endpoint.reads_request:
                return await endpoint.handler(Call(request, services, None, None, {}))
            if endpoint.rate_limited:
                services.limiter.check(client_ip(request, services))
            principal = await authenticate(request, services) if endpoint.auth else None
            params = path_params(request)
            raw = b""
            if endpoint.form:
                form = await read_form(request, endpoint.form, services.config.edge.max_upload_bytes)
            elif request.method in ("POST", "PATCH", "PUT"):
                raw = await read_body(request, services.config.edge.max_body_bytes)
            body = (decode_body(raw, request.headers.get("content-type", ""), endpoint.body,
                                request.url.path)
                    if endpoint.body is not None else form)
            key = request.headers.get("idempotency-key")
            if key is not None and request.method == "POST":
                who = principal.user_id if principal else f"anonymous@{client_ip(request, services)}"
                scope = f"{who} {request.method} {request.url.path}"
                slot = await idempotency.claim(services.bus, services.tokens.subkey("idempotency"),
                                               scope, key,
                                               await form.fingerprint() if form is not None else raw)
                if slot.replay is not None:
                    stored = slot.replay
                    content = _b64(stored.body_b64)
                    return Response(content, stored.status,
                                    {**stored.headers, "Idempotent-Replayed": "true"},
                                    media_type=JSON if content else None)
            response = await endpoint.handler(Call(request, services, principal, body, params))
        except ApiError as error:
            response = error_response(error)
        except DomainError as error:
            response = error_response(from_domain(error))
        except BusError as exc:
            log.warning("bus unavailable", extra={"path": request.url.path, "error": str(exc)})
            response = error_response(ApiError(503, "unavailable", "the event log is unreachable: retry",
                                               headers={"Retry-After": "1"}))
        except ClientDisconnect:
            response = gone_client(request)
        except Exception as exc:
            # The default log format has no traceback: the line itself must say why.
            log.exception("request failed", extra={"path": request.url.path,
                                                   "error": f"{type(exc).__name__}: {exc}"})
            response = error_response(ApiError(500, "internal", "internal error"))
        finally:
            if form is not None:
                await form.close()
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
