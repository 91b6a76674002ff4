"""The FastAPI application: wiring only. Storage, auth and events live in their own modules."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from navign_proto.manifest import MAX_ARTIFACT_BYTES
from navign_proto.wire import ErrorEnvelope
from navign_server import __version__
from navign_server.api import (
    admin,
    admin_gateways,
    admin_releases,
    events,
    firmware,
    meta,
    orchestrators,
    reports,
    sync,
)
from navign_server.auth.tokens import TokenService
from navign_server.blobs import BlobStore, FilesystemBlobs
from navign_server.context import ServerContext, utc_now
from navign_server.errors import RequestContextMiddleware, install_error_handlers
from navign_server.events.hub import EventHub
from navign_server.metrics import Metrics
from navign_server.releases import FirmwareHosting, load_release_keys
from navign_server.settings import ServerSettings
from navign_server.storage.base import Store

log = logging.getLogger(__name__)

#: How often history is pruned and signing-key rotation is checked.
MAINTENANCE_INTERVAL_SECONDS = 3600.0


def open_store(database_url: str) -> Store:
    """The backend for a ``sqlite:///`` or ``mongodb://`` URL."""
    if database_url.startswith("sqlite:///"):
        from navign_server.storage.sqlite import SqliteStore

        return SqliteStore(Path(database_url.removeprefix("sqlite:///")))
    from navign_server.storage.mongo import MongoStore

    return MongoStore(database_url)


def open_blobs(settings: ServerSettings, store: Store | None = None) -> BlobStore:
    """Where firmware artifacts live, content-addressed (``navign_server.blobs``).

    MongoDB mode (``store`` a MongoDB store, or none given and a ``mongodb://`` URL): GridFS, the
    bucket ``firmware`` in the store's database, so every instance sharing the database shares the
    artifacts and one backup holds everything (issue 3). It opens a client of its own from the
    same URL (the store's client is private). SQLite mode: files under ``<data_dir>/firmware``."""
    if store is not None:
        from navign_server.storage.mongo_db import MongoDatabase

        if isinstance(store, MongoDatabase):
            from navign_server.blobs_gridfs import GridFSBlobs

            return GridFSBlobs(store.url, store.database_name)
    elif settings.database_url.startswith(("mongodb://", "mongodb+srv://")):
        from navign_server.blobs_gridfs import GridFSBlobs

        return GridFSBlobs(settings.database_url)
    return FilesystemBlobs(settings.data_dir / "firmware")


async def _maintenance(ctx: ServerContext) -> None:
    while True:
        await asyncio.sleep(MAINTENANCE_INTERVAL_SECONDS)
        try:
            await ctx.tokens.rotate_if_due()
            cutoff = ctx.clock() - timedelta(days=ctx.settings.event_retention_days)
            for entity in await ctx.store.list_entities():
                await ctx.store.prune_history(entity["id"], cutoff)
        except Exception:
            log.warning("maintenance pass failed", exc_info=True)


#: Allocations between young-generation collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 50_000


def _tune_garbage_collector() -> None:
    """Keep the cyclic collector from pausing the event loop (bench/sse_fanout.py measured
    full collections of ~280 ms at 1,000 streams). What start-up loaded (modules, schemas) lives
    as long as the process: freeze it, so collections no longer scan it; and collect the young
    generation less often, as the many short-lived request objects allow."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _shown_url(url: str) -> str:
    """A database URL without credentials, for logs."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class NavignApp(FastAPI):
    """The FastAPI app, with the gateways' event stream served ahead of the middleware stack.

    An event stream lives for an hour or more; every frame the middleware stack keeps for a
    response's life is multiplied by every connected gateway (api/events.py says how much).
    """

    _event_stream = events.EventStreamEndpoint()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == events.PATH:
            scope["app"] = self
            await self._event_stream(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: ServerSettings,
    store: Store | None = None,
    *,
    clock: Callable[[], datetime] = utc_now,
) -> FastAPI:
    metrics = Metrics()
    hosting = FirmwareHosting(
        load_release_keys(settings.release_public_keys), open_blobs(settings, store)
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = store if store is not None else open_store(settings.database_url)
        # Whatever opened is closed again, in reverse order, even when a later step fails.
        async with contextlib.AsyncExitStack() as opened:
            await backend.open()
            opened.push_async_callback(backend.close)
            await hosting.blobs.open()
            opened.push_async_callback(hosting.blobs.close)
            tokens = TokenService(
                backend,
                issuer=settings.token_issuer,
                ttl_seconds=settings.token_ttl_seconds,
                rotation=timedelta(days=settings.signing_key_rotation_days),
                clock=clock,
            )
            await tokens.start()
            hub = EventHub(backend, clock=clock, ping_seconds=settings.sse_ping_seconds)
            await hub.start()
            opened.push_async_callback(hub.close)
            ctx = ServerContext(
                settings=settings,
                store=backend,
                tokens=tokens,
                hub=hub,
                metrics=metrics,
                clock=clock,
            )
            app.state.ctx = ctx
            maintenance = asyncio.create_task(_maintenance(ctx), name="maintenance")
            opened.push_async_callback(_stop, maintenance)
            _tune_garbage_collector()
            log.info("navign-server %s ready (%s)", __version__, _shown_url(settings.database_url))
            yield
        log.info("navign-server stopped cleanly")

    app = NavignApp(
        title="Navign central server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None if settings.environment == "production" else "/docs",
        redoc_url=None,
        # Every refusal is the error envelope (not FastAPI's HTTPValidationError shape).
        responses={"4XX": {"model": ErrorEnvelope, "description": "The JSON error envelope"}},
    )
    app.state.metrics = metrics
    app.state.firmware = hosting
    install_error_handlers(app)
    # admin_releases before admin: admin's /entities/{id}/{collection} would shadow its paths.
    for router in (
        orchestrators.router,
        sync.router,
        firmware.router,
        admin_releases.router,
        reports.router,  # before admin: /entities/{id}/{collection} would catch its paths
        admin.router,
        admin_gateways.router,
        meta.router,
    ):
        app.include_router(router)

    def body_limit(path: str) -> int:
        if path.startswith("/api/admin/entities/") and path.endswith("/import"):
            return settings.max_import_bytes
        if path.startswith("/api/admin/releases/") and path.endswith("/artifact"):
            return MAX_ARTIFACT_BYTES  # the release's own size is enforced by the handler
        return settings.max_body_bytes

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema["paths"][events.PATH] = events.OPENAPI_PATH_ITEM
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(RequestContextMiddleware, limit_for=body_limit)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app


class Server(uvicorn.Server):
    """uvicorn's server, which tells the event hub the moment shutdown begins.

    uvicorn waits for open responses to finish before it runs the lifespan shutdown, and event
    streams never finish by themselves: without this they would be cut only by
    ``timeout_graceful_shutdown``. Setting ``should_exit`` (a signal, or a test) ends every
    stream at once; the gateways reconnect to another instance or after the restart.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        self._navign_app = app
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        ctx = getattr(self._navign_app.state, "ctx", None)
        if value and isinstance(ctx, ServerContext):
            ctx.hub.begin_shutdown()
