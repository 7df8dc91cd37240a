"""The gateway process: FastAPI app serving the web client, the HTTP API and the WebSockets."""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import nats.errors
import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.context import ContextClient
from services.gateway import (
    api,
    contexts,
    docs,
    errors,
    httpbody,
    readmodels,
    session,
    uploads,
    websocket,
)
from services.gateway.deps import GatewayState
from services.gateway.liveness import GatewayPresence
from services.gateway.ratelimit import IpRateLimiter
from services.gateway.rooms import FANOUT_COUNTS, GatewayRoomClient, RoomFanouts
from services.gateway.settings import GatewaySettings
from services.gateway.sockets import RawSendCapture
from services.runtime import logs, metrics, tracing
from services.runtime.service import announce, connect

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("services.gateway")

# The demo's own plain-text answers on the socket's route, before any upgrade.
WEBSOCKET_RESPONSES: dict[int | str, dict] = {
    200: {"description": "never: the route only upgrades"},
    400: {"description": "not a WebSocket upgrade",
          "content": {"text/plain": {"example": "expected websocket"}}},
    401: {"description": "a token was shown and refused (the upgrade is denied)",
          "content": {"text/plain": {"example": "Invalid token: expired."}}},
    404: {"description": "the room name is too long",
          "content": {"text/plain": {"example": "Name too long"}}},
    429: {"description": "too many sockets from this IP",
          "content": {"text/plain": {"example": "Too many connections from your IP."}}},
    503: {"description": "the identity keys cannot be fetched",
          "content": {"text/plain": {"example": "Identity keys unavailable."}}},
}


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        fanouts: list[RoomFanouts] = []  # made once connected; the callbacks reach it here

        async def reconnected() -> None:  # broadcasts may have been lost meanwhile
            for each in fanouts:
                each.catch_up()

        async def error(exc: Exception) -> None:
            logging.getLogger("durachat.gateway").warning("NATS: %r", exc)
            if isinstance(exc, nats.errors.SlowConsumerError):
                await reconnected()

        nc = await connect(settings, "durachat-gateway", reconnected_cb=reconnected, error_cb=error)
        fanouts.append(RoomFanouts(nc, presence=None))
        presence = GatewayPresence(nc, settings.gateway_ttl, replicas=settings.stream_replicas)
        await presence.start()
        fanouts[0].presence = presence
        logs.set_replica(presence.gateway_id)
        metrics.watch_connection(nc)
        app.state.gateway = GatewayState(
            settings=settings,
            nc=nc,
            rooms=GatewayRoomClient(nc, settings.request_timeout, presence),
            contexts=ContextClient(nc, timeout=settings.request_timeout),
            fanouts=fanouts[0],
            limiter=IpRateLimiter(
                nc, settings.rate_interval, settings.rate_grace, settings.ratelimit_timeout
            ),
            sockets_per_ip=Counter(),
        )
        micro = await announce(  # answers $SRV.PING, INFO and STATS (its fan-out counted)
            nc, "gateway", [FANOUT_COUNTS], gateway=presence.gateway_id,
            metrics=f"http://{settings.host}:{settings.port}/metrics",
        )
        log.info("gateway %s is up", presence.gateway_id)
        try:
            yield
        finally:
            await micro.stop()
            await presence.stop()
            await nc.drain()

    app = FastAPI(
        title="durachat gateway",
        summary="Durable-Objects-style chat rooms on NATS; the workers-chat-demo protocol.",
        lifespan=lifespan,
        docs_url=None,  # served by docs.install, without a CDN
        redoc_url=None,
    )
    app.add_middleware(RawSendCapture)
    errors.install(app)
    app.include_router(api.router)
    app.include_router(websocket.router, responses=WEBSOCKET_RESPONSES)
    app.include_router(readmodels.router, responses=errors.described(404, 422, 503))
    app.include_router(contexts.router, responses=errors.described(401, 403, 413, 415, 422, 503))
    app.include_router(session.router, responses=errors.described(401, 422, 503))
    app.include_router(uploads.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    docs.install(app)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """This process's metrics, Prometheus text format."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
    async def unknown_api(rest: str) -> JSONResponse:
        return errors.error_response(404, f"No such API: /api/{rest}.")

    return app


def main() -> None:
    settings = GatewaySettings()
    tracing.setup("gateway")  # only with an OTLP endpoint configured
    logs.configure("gateway")
    uploads.keep_piece_buffers()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=httpbody.http_protocol(),
        ws=settings.ws_protocol,
        ws_max_size=settings.ws_max_size,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        log_level="info",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
