"""Prometheus metrics, one registry per application (tests build many applications)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass(slots=True)
class Metrics:
    registry: CollectorRegistry = field(default_factory=_registry)
    sse_connections: Gauge = field(init=False)
    events_published: Counter = field(init=False)
    registrations: Counter = field(init=False)
    errors: Counter = field(init=False)
    sync_seconds: Histogram = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.sse_connections = Gauge(
            "navign_sse_connections", "Open gateway event streams", registry=r
        )
        self.events_published = Counter(
            "navign_events_published", "Events sent on gateway streams", ["type"], registry=r
        )
        self.registrations = Counter(
            "navign_registrations", "Registration attempts by outcome", ["outcome"], registry=r
        )
        self.errors = Counter("navign_errors", "Error responses by code", ["code"], registry=r)
        self.sync_seconds = Histogram(
            "navign_sync_seconds",
            "Time to serve a sync request",
            ["kind"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
