"""The web page at `/`: plain HTML, CSS and JavaScript from `edge/static/`, no build step.

`/` serves `index.html`; its assets live under `/static/`. Only these two paths are
taken, so the page never shadows `/api`, `/ws`, `/xiaozhi`, `/webrtc`, `/healthz` or
`/readyz`. The page talks to the REST API for accounts, assistants and past sessions, to
`/ws` for typed conversations and to `POST /webrtc/offer` for calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere; media stays on this origin and the peer connection.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


class _Static(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
        return response


def routes() -> list[BaseRoute]:
    """The page's routes, to append to the app's."""
    return [Route("/", index, methods=["GET"]),
            Mount("/static", _Static(directory=STATIC), name="static")]
