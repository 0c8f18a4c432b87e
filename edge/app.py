"""The edge's Starlette app: the REST API under /api/v1 and the real-time
endpoints. Every route comes from the endpoint tables, which also make the OpenAPI
document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import version

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from edge import web, webrtc
from edge.api import accounts, analytics, assistants, devices, documents, search, sessions
from edge.api.endpoint import JSON, Endpoint, bind, error_response
from edge.api.openapi import document
from edge.errors import ApiError
from edge.realtime.ops import healthz, readyz
from edge.realtime.ws_json import ws_endpoint
from edge.services import Services
from edge.xiaozhi import ota, vision
from edge.xiaozhi.endpoint import xiaozhi_endpoint
from edge.xiaozhi.protocol import PATH as XIAOZHI_PATH
from telemetry import metrics

ENDPOINTS: tuple[Endpoint, ...] = (*accounts.ENDPOINTS, *assistants.ENDPOINTS, *devices.ENDPOINTS,
                                   *documents.ENDPOINTS, *sessions.ENDPOINTS, *search.ENDPOINTS,
                                   *webrtc.ENDPOINTS, *analytics.ENDPOINTS)
OPENAPI_PATH = "/api/v1/openapi.json"
METRICS_PATH = "/metrics"  # Prometheus' default scrape path


def create_app(services: Services) -> Starlette:
    spec = msgspec.json.encode(document(ENDPOINTS, version("vagent")))

    async def openapi(request: Request) -> Response:
        return Response(spec, media_type=JSON)

    async def prometheus(request: Request) -> Response:
        if not services.config.telemetry.metrics:
            raise HTTPException(404)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    # One route per path, holding every method of it: a method the path lacks (OPTIONS
    # among them) is answered 405 with an Allow that names all of them, not only the
    # methods of whichever route of the path Starlette matched first.
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for e in ENDPOINTS:
        by_path.setdefault(e.path, {})[e.method] = bind(e, services)
    routes: list[BaseRoute] = [Route(path, _by_method(handlers), methods=list(handlers))
                               for path, handlers in by_path.items()]
    routes.append(Route(OPENAPI_PATH, openapi, methods=["GET"]))
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route(METRICS_PATH, prometheus, methods=["GET"]),
        WebSocketRoute("/ws", ws_endpoint),
        WebSocketRoute(XIAOZHI_PATH, xiaozhi_endpoint),
        # A device's OTA URL may be written with or without its trailing slash.
        Route(ota.PATH, ota.check_version_route, methods=["GET", "POST"]),
        Route(ota.PATH.rstrip("/"), ota.check_version_route, methods=["GET", "POST"]),
        Route(ota.ACTIVATE_PATH, ota.activate_route, methods=["POST"]),
        Route(vision.PATH, vision.explain_route, methods=["POST"]),
        Route(ota.firmware.DOWNLOAD_PATH + "{path:path}", ota.download_route, methods=["GET"]),
    ]

    routes += web.routes()  # the page at / and its /static/ assets (last: shadows nothing)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {404: f"no route {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
                       exc.status_code, str(exc.detail))
        headers = dict(exc.headers or {})
        if "Allow" in headers:  # Starlette joins a set: give it one order
            headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
        return error_response(ApiError(exc.status_code, code, message, headers=headers))

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.services = services
    return app


def _by_method(handlers: dict[str, Callable[[Request], Awaitable[Response]]]
               ) -> Callable[[Request], Awaitable[Response]]:
    """The path's handler for the request's method (HEAD is GET's; Route has checked the
    method is one of them)."""
    async def serve(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    serve.__name__ = "_".join(h.__name__ for h in handlers.values())
    return serve
