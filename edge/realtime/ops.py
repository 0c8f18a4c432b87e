"""`/healthz` (the process answers) and `/readyz` (NATS connected and every actor and the
projections heartbeating), for load balancers and orchestrators."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from bus.health import ACTOR_NAMES, health
from edge.services import Services
from projections.runtime import HEARTBEAT_NAME


async def healthz(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    return JSONResponse({"ok": True, "draining": services.draining, "sessions": len(services.links)})


async def readyz(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    report = await health(services.bus, [*ACTOR_NAMES, HEARTBEAT_NAME])
    ready = report.ok and not services.draining
    return JSONResponse({"ok": ready, "nats": report.nats, "missing": report.missing,
                         "draining": services.draining, "error": report.error},
                        status_code=200 if ready else 503)
