"""Health, metrics and the token verification keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from navign_server.auth.principals import Ctx

router = APIRouter(tags=["meta"])


@router.get("/healthz")
async def healthz(ctx: Ctx) -> JSONResponse:
    try:
        await ctx.store.list_signing_keys()
    except Exception as exc:  # noqa: BLE001 - health reports any store failure
        return JSONResponse({"status": "unhealthy", "store": str(exc)[:200]}, status_code=503)
    return JSONResponse({"status": "ok", "sse_connections": ctx.hub.subscriber_count})


@router.get("/.well-known/jwks.json")
async def jwks(ctx: Ctx) -> dict[str, Any]:
    return ctx.tokens.jwks()


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
