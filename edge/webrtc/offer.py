"""`POST /webrtc/offer`: HTTP signaling for a browser peer.

Body `{"sdp": …, "type": "offer", "assistant_id"?: …, "session_id"?: …, "echo_cancelled"?:
true|false}` (JSON; the offer made after ICE gathering completed: no trickle; `echo_cancelled`:
the client's microphone cancels its speaker's echo, as a browser's does), optional `Authorization: Bearer
<access token>` (required unless `edge.anonymous`). Answer 200 `{"sdp": …, "type":
"answer", "session_id": …}` once every local candidate is gathered. Refusals in the REST
API's error shape: 401 `token_*`, 404 (no such assistant, or session to resume), 409
`session_active` / 410 `session_expired` (resume), 415 not JSON, 400 `malformed_json`,
422 `validation_failed` / `bad_offer`, 429 `too_many_offers` (`edge.offers_per_second`
per address, bursts of `edge.offer_burst`) / `rate_limited` (the API's per-IP limit) /
`too_many_sessions` (`edge.max_sessions_per_address`), 503 `too_many_connections` /
`draining` / `busy` (`edge.max_offers_in_progress` being set up) / `unavailable`; every 429
and 503 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable
from typing import Literal

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from bus.errors import BusError
from edge.api.endpoint import (
    Call,
    Endpoint,
    client_ip,
    decode_body,
    error_response,
    json_response,
    read_body,
)
from edge.api.models import Id
from edge.errors import ApiError
from edge.realtime.auth import bearer, user_caller
from edge.realtime.limits import AddressRates
from edge.webrtc.peer import Peer, check_offer_size, read_offer
from settings.config import EdgeSettings
from telemetry import metrics

log = logging.getLogger("vagent.edge.webrtc")
SESSION_RETRY_AFTER = 5  # seconds: a session of the address may have ended by then
MAX_OFFER_WAIT = 1.0  # seconds an offer over its address's rate waits for its 429


class Offer(msgspec.Struct):
    sdp: str
    type: Literal["offer"]
    assistant_id: Id | None = None
    session_id: Id | None = None  # resume this session (within 60 s of its end)
    echo_cancelled: bool | None = None  # the microphone cancels the speaker's echo itself


class Answer(msgspec.Struct):
    sdp: str
    type: Literal["answer"]
    session_id: str


class Peers:
    """The peers this app holds (kept referenced while they live), offers in progress
    (counted against `edge.max_connections` before their session exists), those of them
    being negotiated (at most `edge.max_offers_in_progress`), and each address's offer rate."""

    def __init__(self, edge: EdgeSettings) -> None:
        self.active: set[Peer] = set()
        self.pending = 0
        self.negotiating = 0
        self.rates = AddressRates(edge.offers_per_second, edge.offer_burst)

    def track(self, peer: Peer, release: Callable[[], None]) -> None:
        """Hold `peer` until it closes; then `release` what it held."""
        self.active.add(peer)
        metrics.connection_opened("webrtc")

        def closed(peer: Peer) -> None:
            self.active.discard(peer)
            metrics.connection_closed("webrtc")
            release()

        peer.on_closed = closed


def peers_of(request: Request) -> Peers:
    state = request.app.state
    if not hasattr(state, "webrtc_peers"):
        state.webrtc_peers = Peers(request.app.state.services.config.edge)
    peers: Peers = state.webrtc_peers
    return peers


async def webrtc_offer(call: Call) -> Response:
    request, services = call.request, call.services
    edge = services.config.edge
    peers = peers_of(request)
    address = client_ip(request, services)
    peer: Peer | None = None
    counted = negotiating = False
    slot: str | None = None  # the address's session slot, until a peer holds it
    wait = peers.rates.wait(address)
    if wait > 0:
        # Nothing of the offer is read. The answer comes once a retry could be taken: a client
        # posting in a loop sends about one a second, not one per refusal it gets back.
        await asyncio.sleep(min(wait, MAX_OFFER_WAIT))
        retry = max(1, math.ceil(wait - MAX_OFFER_WAIT))
        return error_response(ApiError(
            429, "too_many_offers",
            f"at most {edge.offers_per_second:g} offers a second from one address "
            f"(bursts of {edge.offer_burst}): slow down",
            {"retry_after": retry, "per_second": edge.offers_per_second, "burst": edge.offer_burst},
            {"Retry-After": str(retry)}))
    try:
        # A peer costs far more than a login (ICE, DTLS, codecs): the same per-IP limit.
        services.limiter.check(address)
        if services.draining:
            raise ApiError(503, "draining", "the server is shutting down: retry shortly",
                           headers={"Retry-After": "1"})
        if len(services.links) + peers.pending >= edge.max_connections:
            raise ApiError(503, "too_many_connections", "this edge is full: retry later",
                           headers={"Retry-After": "1"})
        if not services.addresses.take(address, edge.max_sessions_per_address):
            limit = edge.max_sessions_per_address
            raise ApiError(429, "too_many_sessions",
                           f"at most {limit} sessions at once from one address: end one first",
                           {"limit": limit}, {"Retry-After": str(SESSION_RETRY_AFTER)})
        slot = address
        peers.pending += 1
        counted = True
        raw = await read_body(request, edge.max_body_bytes)
        offer: Offer = decode_body(raw, request.headers.get("content-type", ""), Offer,
                                   request.url.path)
        check_offer_size(offer.sdp)  # before anything parses it
        caller = await user_caller(services, bearer(request.headers.get("authorization"), None),
                                   offer.assistant_id)
        # Setting up a peer is CPU work on the event loop (aiortc's): a few at a time, and
        # the rest are told at once to come back rather than queued behind them.
        if peers.negotiating >= edge.max_offers_in_progress:
            raise ApiError(503, "busy", "too many calls are being set up: retry shortly",
                           {"retry_after": 1}, {"Retry-After": "1"})
        peers.negotiating += 1
        negotiating = True
        description = await asyncio.to_thread(read_offer, offer.sdp)
        peer = Peer(services, caller, address, echo_cancelled=offer.echo_cancelled)
        peers.track(peer, functools.partial(services.addresses.give, address))
        slot = None
        sdp = await peer.negotiate(offer.sdp, description)
        peers.negotiating -= 1  # what follows waits on the event log, not on this process
        negotiating = False
        session_id = await peer.start(offer.session_id)
        return json_response(Answer(sdp=sdp, type="answer", session_id=session_id))
    except ApiError as error:
        await _discard(peer)
        return error_response(error)
    except BusError as exc:
        log.warning("bus unavailable", extra={"path": request.url.path, "error": str(exc)})
        await _discard(peer)
        return error_response(ApiError(503, "unavailable", "the event log is unreachable: retry",
                                       headers={"Retry-After": "1"}))
    except ClientDisconnect:  # gone while its offer was read: no one to answer, nothing wrong
        log.debug("webrtc offer abandoned by its client")
        await _discard(peer)
        return error_response(ApiError(400, "client_disconnected", "the request was not sent whole"))
    except Exception:
        log.exception("webrtc offer failed")
        await _discard(peer)
        return error_response(ApiError(500, "internal", "internal error"))
    except asyncio.CancelledError:
        # The server is shutting down: a peer that exists already must close, or its
        # connection and its address's slot would be held for ever.
        await _discard(peer, "server_shutdown")
        raise
    finally:
        if counted:
            peers.pending -= 1
        if negotiating:
            peers.negotiating -= 1
        if slot is not None:
            services.addresses.give(slot)


async def _discard(peer: Peer | None, reason: str = "error") -> None:
    if peer is not None:
        await peer.close(reason)  # gives its address's slot back


ENDPOINTS = (
    Endpoint("POST", "/webrtc/offer", webrtc_offer,
             "Start a call: a browser's WebRTC offer (ICE gathered), answered once the answer's "
             "candidates are; Authorization: Bearer <access token> optional where edge.anonymous "
             "allows", "calls", body=Offer, answer=Answer, auth=False, reads_request=True,
             errors=(401, 404, 409, 410, 429)),
)
