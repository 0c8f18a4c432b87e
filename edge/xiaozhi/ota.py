"""`/xiaozhi/ota/`: where a stock xiaozhi device asks for everything, the one address it
is configured with (its OTA URL).

At every boot the device reports itself (`Device-Id` = its MAC, `Client-Id`, `User-Agent`,
`Activation-Version`, `Serial-Number`; a POST body with its application version, board
type, chip…) and is told the time, a newer firmware image if an operator put one in the
data dir (edge/xiaozhi/firmware.py), the WebSocket URL with its device token, and, while
no one has bound it, an activation code to show. It then polls `/xiaozhi/ota/activate`
(202 while waiting, 200 once its owner bound the code) and asks again for its token.

The code is the devices service's (domain/devices.py), the same one
`POST /api/v1/devices/activation` hands out, and the owner binds it the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import FileResponse, Response

from bus.errors import BusError
from domain.devices import Activation, Proof
from domain.errors import Conflict
from domain.language import preferred_language
from domain.phrases import phrases
from edge.api.endpoint import client_ip, decode_body, error_response, gone_client, json_response, read_body
from edge.errors import ApiError, domain_refusals
from edge.services import Services
from edge.xiaozhi import firmware
from edge.xiaozhi.protocol import PATH as WEBSOCKET_PATH
from edge.xiaozhi.protocol import check_ids

log = logging.getLogger("vagent.edge.xiaozhi")
T = TypeVar("T")
PATH = "/xiaozhi/ota/"
ACTIVATE_PATH = "/xiaozhi/ota/activate"


# --- what the device sends -------------------------------------------------------------------


class Application(msgspec.Struct):
    version: str | None = None


class Board(msgspec.Struct):
    type: str | None = None


class Report(msgspec.Struct):
    """The firmware's system information (its `GetSystemInfoJson`); only what is read here
    is declared, everything else in it is ignored."""

    application: Application | None = None
    board: Board | None = None
    mac_address: str | None = None
    chip_model_name: str | None = None


class ActivationPayload(msgspec.Struct):
    """The activation poll: `{}` from a device without a serial number, else the challenge
    it was given, signed with its efuse key."""

    algorithm: str | None = None
    serial_number: str | None = None
    challenge: str | None = None
    hmac: str | None = None


# --- what it is told --------------------------------------------------------------------------


class ServerTime(msgspec.Struct):
    timestamp: int  # ms since the epoch
    timezone_offset: int  # minutes east of UTC; the firmware sets its clock to local time


class Firmware(msgspec.Struct):
    version: str
    url: str  # empty: nothing to install


class Websocket(msgspec.Struct, omit_defaults=True):
    url: str
    # Empty while unbound (the firmware then sends no Authorization); left out when this
    # client may not have one (the firmware keeps the one it holds).
    token: str | None = None


class ActivationBlock(msgspec.Struct):
    code: str
    message: str
    challenge: str
    timeout_ms: int


class OtaAnswer(msgspec.Struct, omit_defaults=True):
    server_time: ServerTime
    firmware: Firmware
    websocket: Websocket
    activation: ActivationBlock | None = None


class ActivationStatus(msgspec.Struct):
    status: str  # "pending" | "bound"
    message: str


# --- handlers ---------------------------------------------------------------------------------


Handler = Callable[[Request, Services], Awaitable[Response]]


def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Errors of the API's one shape, as every HTTP route answers them."""
    async def serve(request: Request) -> Response:
        services: Services = request.app.state.services
        try:
            with domain_refusals():
                return await handler(request, services)
        except ApiError as error:
            return error_response(error)
        except BusError as exc:
            log.warning("bus unavailable", extra={"path": request.url.path, "error": str(exc)})
            return error_response(ApiError(503, "unavailable", "the event log is unreachable: retry",
                                           headers={"Retry-After": "1"}))
        except ClientDisconnect:
            return gone_client(request)
        except Exception as exc:
            # The default log format has no traceback: the line itself must say why.
            log.exception("request failed", extra={"path": request.url.path,
                                                   "error": f"{type(exc).__name__}: {exc}"})
            return error_response(ApiError(500, "internal", "internal error"))

    serve.__name__ = handler.__name__
    return serve


def device_ids(request: Request) -> tuple[str, str]:
    """The Device-Id and Client-Id headers, both required here (the code is bound to them)."""
    device = request.headers.get("device-id", "").strip()
    client = request.headers.get("client-id", "").strip()
    check_ids(device, client)
    if not device:
        raise ApiError(400, "device_id_missing", "send a Device-Id header (the device's MAC address)")
    if not client:
        raise ApiError(400, "client_id_missing", "send a Client-Id header (the device's UUID)")
    return device, client


async def body_of(request: Request, services: Services, kind: type[T]) -> T | None:
    """The request's JSON body as `kind`, None when there is none (a GET, an empty POST)."""
    if request.method != "POST":
        return None
    raw = await read_body(request, services.config.edge.max_body_bytes)
    if not raw.strip():
        return None
    value: T | None = decode_body(raw, request.headers.get("content-type", ""), kind | None,
                                  request.url.path)
    return value


async def check_version(request: Request, services: Services) -> Response:
    services.limiter.check(client_ip(request, services))  # a new code is a KV write
    device, client = device_ids(request)
    report = await body_of(request, services, Report)
    current = (report.application.version if report and report.application else None) or \
        _agent_version(request.headers.get("user-agent", "")) or "0.0.0"
    board = report.board.type if report and report.board else None
    language = preferred_language(request.headers.get("accept-language"))
    if language is not None:
        # For the device's sessions whose hello names no language (stock firmware's does
        # not): kept in KV, as the WebSocket may reach another edge process, or a restarted one.
        await services.devices.remember_language(device, language)
    try:
        activation: Activation | None = await services.devices.activation(device, client)
    except Conflict as refusal:
        # Bound for another client (or another client is activating it): no code and no
        # token, but still a 200 with the rest. An error would leave the firmware without
        # any WebSocket settings (it falls back to MQTT), and a missing token key keeps the
        # token it holds.
        log.warning("xiaozhi ota check without activation",
                    extra={"device": device.lower(), "code": refusal.code, "reason": refusal.message})
        activation = None
    image = firmware.newest(services.data_dir, board, current)
    base = public_base(request, services)
    answer = OtaAnswer(
        server_time=ServerTime(timestamp=time.time_ns() // 1_000_000,
                               timezone_offset=time.localtime().tm_gmtoff // 60),
        firmware=Firmware(version=image.version, url=base + image.path) if image else
        Firmware(version=current, url=""),
        websocket=Websocket(url=_ws_base(base) + WEBSOCKET_PATH,
                            token=None if activation is None else activation.token or ""),
        activation=_activation_block(activation, language) if activation else None)
    log.info("xiaozhi ota check", extra={"device": device.lower(), "version": current, "board": board,
                                         "status": activation.status if activation else None,
                                         "offered": image.version if image else None})
    return json_response(answer)


async def activate(request: Request, services: Services) -> Response:
    device, client = device_ids(request)
    payload = await body_of(request, services, ActivationPayload) or ActivationPayload()
    serial = payload.serial_number or request.headers.get("serial-number") or None
    header_serial = request.headers.get("serial-number")
    if payload.serial_number and header_serial and payload.serial_number != header_serial.strip():
        raise ApiError(400, "serial_number_mismatch",
                       "the body's serial_number is not the Serial-Number header's")
    key = services.config.edge.xiaozhi.hmac_keys.get(serial) if serial else None
    proof = Proof(hmac=payload.hmac, key=bytes.fromhex(key)) if key else None
    if await services.devices.confirm(device, client, payload.challenge, proof):
        return json_response(ActivationStatus("bound", "activated"))
    return json_response(ActivationStatus("pending", "waiting for the owner to bind the code"), 202)


async def download(request: Request, services: Services) -> Response:
    file = firmware.locate(services.data_dir, request.path_params["path"])
    return FileResponse(file, media_type="application/octet-stream")


check_version_route = guarded(check_version)
activate_route = guarded(activate)
download_route = guarded(download)


# --- helpers ----------------------------------------------------------------------------------


def _agent_version(user_agent: str) -> str | None:
    """The firmware's `User-Agent` is `<board name>/<version>`."""
    _, slash, version = user_agent.strip().partition("/")
    return version.split(" ")[0] or None if slash else None


def public_base(request: HTTPConnection, services: Services) -> str:
    """The edge's address as the device reaches it: edge.public_url, else the request's
    (a WebSocket's ws:// or wss:// as http:// or https://)."""
    configured = services.config.edge.public_url
    if configured:
        return configured.rstrip("/")
    scheme = {"ws": "http", "wss": "https"}.get(request.url.scheme, request.url.scheme)
    return f"{scheme}://{request.url.netloc}"


def _ws_base(base: str) -> str:
    scheme, sep, rest = base.partition("://")
    return {"https": "wss", "http": "ws"}.get(scheme.lower(), scheme) + sep + rest


def _activation_block(activation: Activation, language: str | None) -> ActivationBlock | None:
    if activation.status != "pending" or activation.code is None:
        return None
    text = phrases(language).activation
    return ActivationBlock(code=activation.code, message=text.format(code=activation.code),
                           challenge=activation.challenge or "",
                           timeout_ms=(activation.expires_in or 0) * 1000)
