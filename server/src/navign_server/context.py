"""What every request handler needs, built once at start-up and kept on ``app.state``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from navign_server.auth.tokens import TokenService
from navign_server.events.hub import EventHub
from navign_server.metrics import Metrics
from navign_server.ratelimit import Rate, RateLimiter
from navign_server.settings import ServerSettings
from navign_server.storage.base import AuditRecord, Store


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class RateLimits:
    """The protocol's default limits (docs/protocol.md §1)."""

    registration: RateLimiter = field(default_factory=lambda: RateLimiter(Rate(120, 3600)))
    refresh: RateLimiter = field(default_factory=lambda: RateLimiter(Rate(60, 3600)))
    stream_open: RateLimiter = field(default_factory=lambda: RateLimiter(Rate(30, 60)))
    requests: RateLimiter = field(default_factory=lambda: RateLimiter(Rate(600, 60)))


@dataclass(slots=True)
class ServerContext:
    settings: ServerSettings
    store: Store
    tokens: TokenService
    hub: EventHub
    limits: RateLimits = field(default_factory=RateLimits)
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], datetime] = utc_now

    async def audit(
        self,
        actor: str,
        action: str,
        *,
        outcome: str = "ok",
        entity_id: str | None = None,
        **details: Any,
    ) -> None:
        """Append to the audit log, stamped with the server's clock."""
        await self.store.audit(
            AuditRecord(
                at=self.clock(),
                actor=actor,
                action=action,
                outcome=outcome,
                entity_id=entity_id,
                details=details,
            )
        )


def context(request: Request) -> ServerContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, ServerContext)
    return ctx


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
