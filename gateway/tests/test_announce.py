"""The gateway's mDNS announcement (navign_gateway.announce, protocol §8.3).

The TXT content is checked from release records; the announcement itself runs on the real
python-zeroconf, bound to 127.0.0.1 only (multicast never leaves loopback), over the real
firmware cache filled from a real server (the fixtures of test_firmware_cache), and is read
back by python-zeroconf's own browser and resolver in the same test. Multicast between hosts,
a name conflict (on one host, a probe's unicast answer to 127.0.0.1:5353 reaches only one of
the sockets sharing that port, so it needs two) and the beacon's own querier are in
tests/netns/test_mdns_rollout.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from navign_gateway import announce
from navign_gateway.announce import (
    MAX_TXT_STRING,
    SERVICE_TYPE,
    TXT_BUDGET,
    FirmwareAnnouncer,
    host_label,
    instance_label,
    txt_properties,
)
from navign_gateway.firmware import CachedRelease, FirmwareCache
from navign_server.testing import image_manifest, payload

from .test_firmware_cache import World, app_manifest, world

__all__ = ["world"]  # the real cache's fixture, shared with test_firmware_cache

LOOPBACK = ["127.0.0.1"]
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SHA = "5e1e" + "0" * 60
EVENT_TIMEOUT = 10.0


def release(
    version: str,
    *,
    target: str = "esp32",
    kind: str = "image",
    minutes: int = 0,
    manifest_sha256: str = SHA,
) -> CachedRelease:
    """A release record as the cache keeps it (for the TXT rules alone)."""
    return CachedRelease(
        firmware_id=f"fw-{target}-{kind}-{version}-{minutes}",
        name="navign-beacon-fw",
        version=version,
        target=target,
        kind=kind,
        secure_version=1,
        device_type="beacon",
        channel="stable",
        size=1000,
        sha256="ab" * 32,
        manifest_sha256=manifest_sha256,
        cached_at=T0 + timedelta(minutes=minutes),
        last_used_at=T0,
        pinned=False,
        directory=Path("/nonexistent"),
    )


def encoded(properties: dict[str, str]) -> list[bytes]:
    """The TXT strings as zeroconf puts them on the wire."""
    info = AsyncServiceInfo(SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=1, properties=properties)
    text, strings = info.text, []
    while text:
        strings.append(text[1 : 1 + text[0]])
        text = text[1 + text[0] :]
    return strings


# -- the TXT record ------------------------------------------------------------------------------


def test_txt_names_the_gateway_and_the_latest_release_per_target_and_kind() -> None:
    c3 = "c3" * 32
    releases = [
        release("1.9.0"),
        release("1.10.0", manifest_sha256="10" * 32),  # SemVer: 1.10.0 > 1.9.0
        release("1.10.0-rc.1", minutes=5),  # a pre-release precedes its release
        release("1.0.0", kind="app", manifest_sha256="aa" * 32),
        release("1.0.0", kind="app", minutes=3, manifest_sha256="bb" * 32),  # cached later
        release("0.9.0", target="esp32c3", kind="app", manifest_sha256=c3),
    ]
    properties = txt_properties("gw-1", "mall-riverside", releases)
    assert list(properties.items()) == [
        ("txtvers", "1"),
        ("gw", "gw-1"),
        ("entity", "mall-riverside"),
        ("fw.esp32.app", "1.0.0 " + "bb" * 32),
        ("fw.esp32.image", "1.10.0 " + "10" * 32),
        ("fw.esp32c3.app", "0.9.0 " + c3),
    ]
    assert txt_properties("gw-1", "m", []) == {"txtvers": "1", "gw": "gw-1", "entity": "m"}


def test_txt_strings_stay_within_255_bytes_and_the_record_within_its_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="navign_gateway.announce")
    releases = [
        release("1.0.0", target="esp32"),
        release("2.0.0", target="t" * 200),  # fw.ttt...t.image=2.0.0 <64 hex>: 280 bytes
        release("9" * 70),  # longer than any version (§6.6): not a version at all
        release("1.2.3-" + "r" * 58),  # 64 characters: the longest version that is one
    ]
    properties = txt_properties("gw-1", "mall", releases)
    assert properties["fw.esp32.image"] == "1.2.3-" + "r" * 58 + " " + SHA
    assert not [k for k in properties if k.startswith("fw.ttt")]
    left_out = [r.getMessage() for r in caplog.records]
    assert any("280 bytes, over the 255 of a TXT string" in m for m in left_out), left_out
    assert any("version longer than 64" in m for m in left_out), left_out
    strings = encoded(properties)
    assert max(len(s) for s in strings) <= MAX_TXT_STRING

    # Every target a manifest allows, both kinds, versions at their longest: over the budget.
    caplog.clear()
    longest = "1.2.3-" + "r" * 58
    every = [
        release(longest, target=t, kind=k)
        for t in ("esp32", "esp32c3", "esp32c6", "esp32s3", "esp32x4", "esp32y5")
        for k in ("app", "image")
    ]
    properties = txt_properties("g" * 64, "e" * 64, every)
    total = sum(1 + len(s) for s in encoded(properties))
    assert total <= TXT_BUDGET
    fw_keys = [k for k in properties if k.startswith("fw.")]
    assert fw_keys == sorted(fw_keys)
    assert 0 < len(fw_keys) < len(every)
    assert all("past 1300 bytes" in r.getMessage() for r in caplog.records)
    assert len(caplog.records) == len(every) - len(fw_keys)


def test_instance_and_host_labels() -> None:
    assert instance_label(None, "gw-1") == "gw-1"
    assert instance_label(None, "gw.mall.1") == "gw-mall-1"  # one DNS label
    assert instance_label(None, "g" * 64) == "g" * 63
    assert instance_label("Gate B", "gw-1") == "Gate B"
    assert host_label("gw-1") == "gw-1"
    assert host_label("gw_mall:1.a") == "gw-mall-1-a"
    assert host_label("..::") == "navign-gateway"
    assert len(host_label("x" * 64)) == 63


# -- the cache's change hook ---------------------------------------------------------------------


async def test_the_cache_tells_its_listeners_after_open_commit_and_eviction(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = payload(150_000, "first"), payload(150_000, "second")
    one = await world.publish(image_manifest(first, "1.0.0"), first)
    two = await world.publish(image_manifest(second, "1.1.0"), second)
    cache = FirmwareCache(
        world.db, world.root, world.upstream(), [world.release_pem], 200_000,
        registry=CollectorRegistry(),
    )  # fmt: skip
    seen: list[list[str]] = []
    cache.add_listener(lambda: seen.append([r.version for r in cache.list()]))

    def broken() -> None:
        raise RuntimeError("listener bug")

    cache.add_listener(broken)
    await cache.open()
    assert seen == [[]]
    await cache.ensure(one)
    assert seen[-1] == ["1.0.0"]
    await cache.ensure(two)  # 1.0.0 is evicted to make room, then 1.1.0 committed
    assert seen[-2:] == [[], ["1.1.0"]]
    assert "a change listener failed" in caplog.text  # logged; the cache went on


# -- the announcement on real zeroconf (127.0.0.1 only) ------------------------------------------


class Browser:
    """python-zeroconf's browser and resolver on 127.0.0.1: what a client on the network sees."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ServiceStateChange]] = []
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Browser:
        self.zc = AsyncZeroconf(interfaces=LOOPBACK)
        self.browser = AsyncServiceBrowser(self.zc.zeroconf, SERVICE_TYPE, handlers=[self._on])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.browser.async_cancel()
        await self.zc.async_close()

    def _on(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        self.events.append((name, state_change))
        self._changed.set()

    async def wait_for(self, name: str, state: ServiceStateChange, after: int = 0) -> int:
        """The index of the first ``state`` event for ``name`` from ``after`` on (bounded)."""
        async with asyncio.timeout(EVENT_TIMEOUT):
            while True:
                for index, event in enumerate(self.events[after:], after):
                    if event == (name, state):
                        return index
                self._changed.clear()
                await self._changed.wait()

    async def resolve(self, name: str) -> AsyncServiceInfo:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        assert await info.async_request(self.zc.zeroconf, 3000), f"{name} did not resolve"
        return info

    async def txt_until(self, name: str, check: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        """The resolved TXT of ``name`` once ``check`` accepts it (bounded)."""
        async with asyncio.timeout(EVENT_TIMEOUT):
            while True:
                txt = {k: v or "" for k, v in (await self.resolve(name)).decoded_properties.items()}
                if check(txt):
                    return txt
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 1.0)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-announce and retry without the production delays (the tests drive the timing)."""
    monkeypatch.setattr(announce, "UPDATE_DELAY", 0.05)
    monkeypatch.setattr(announce, "RETRY_SECONDS", 0.05)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with Browser() as b:
        yield b


def unique(prefix: str = "t") -> str:
    """An instance name no other test (or test run on this machine) uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def announcer(cache: FirmwareCache, **kwargs: Any) -> FirmwareAnnouncer:
    values: dict[str, Any] = {
        "port": 8080, "orchestrator_id": "gw-1", "entity_id": "mall-riverside",
        "instance": unique(), "interfaces": LOOPBACK,
    }  # fmt: skip
    values.update(kwargs)
    return FirmwareAnnouncer(cache, **values)


@pytest.mark.usefixtures("quick")
async def test_the_service_is_announced_follows_the_cache_and_says_goodbye(
    world: World, browser: Browser
) -> None:
    image = payload(120_000, "image")
    files = {"main.py": payload(2_000, "main")}
    r1 = await world.publish(image_manifest(image, "1.2.0"), image)
    r2 = await world.publish(image_manifest(image, "1.10.0"), image)
    r3 = await world.publish(app_manifest(files, "0.3.0"), b"".join(files.values()))
    cache = await world.cache(budget=200_000)  # one image at a time
    first = await cache.ensure(r1)  # seeded before the announcement starts
    gateway = announcer(cache, port=8123)
    gateway.start()
    gateway.start()  # idempotent
    async with asyncio.timeout(EVENT_TIMEOUT):
        name = await gateway.wait_registered()

    added = await browser.wait_for(name, ServiceStateChange.Added)
    info = await browser.resolve(name)
    assert info.port == 8123
    assert info.server == "gw-1.local."
    assert info.parsed_addresses() == ["127.0.0.1"]
    assert info.decoded_properties == {
        "txtvers": "1",
        "gw": "gw-1",
        "entity": "mall-riverside",
        "fw.esp32.image": f"1.2.0 {first.manifest_sha256}",
    }
    assert gateway.properties == info.decoded_properties
    assert gateway.addresses == ["127.0.0.1"]

    # A newer image replaces the older one in the cache (the budget) and in the TXT.
    newer = await cache.ensure(r2)
    assert cache.get(r1.firmware_id) is None  # evicted
    updated = await browser.wait_for(name, ServiceStateChange.Updated, added + 1)
    txt = await browser.txt_until(name, lambda t: t.get("fw.esp32.image", "").startswith("1.10"))
    assert txt["fw.esp32.image"] == f"1.10.0 {newer.manifest_sha256}"
    # An app for another chip adds its key.
    app = await cache.ensure(r3)
    await browser.wait_for(name, ServiceStateChange.Updated, updated + 1)
    txt = await browser.txt_until(name, lambda t: "fw.esp32c3.app" in t)
    assert txt["fw.esp32c3.app"] == f"0.3.0 {app.manifest_sha256}"
    assert txt["fw.esp32.image"] == f"1.10.0 {newer.manifest_sha256}"

    await gateway.stop()
    await browser.wait_for(name, ServiceStateChange.Removed)  # the goodbye packets
    await gateway.stop()  # idempotent
    assert gateway.name is None


async def test_no_address_is_logged_once_retried_and_never_raised(
    world: World, caplog: pytest.LogCaptureFixture, quick: None
) -> None:
    caplog.set_level(logging.DEBUG, logger="navign_gateway.announce")
    gateway = announcer(await world.cache(), interfaces=["192.0.2.1"])  # TEST-NET, not ours
    gateway.start()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):  # about ten attempts
            await gateway.wait_registered()
    await gateway.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "none of the configured addresses is up (192.0.2.1)" in warnings[0].getMessage()
    assert sum("failed again" in r.getMessage() for r in caplog.records) >= 2
    assert gateway.name is None
    assert gateway.properties is None


async def test_stop_without_start_and_a_bad_port(world: World) -> None:
    cache = await world.cache()
    await announcer(cache).stop()
    with pytest.raises(ValueError, match="port must be 1-65535"):
        announcer(cache, port=0)


async def test_missing_configured_addresses_are_skipped_with_a_warning(
    world: World, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = announcer(await world.cache(), interfaces=["192.0.2.1", "127.0.0.1"])
    gateway.start()
    try:
        async with asyncio.timeout(EVENT_TIMEOUT):
            name = await gateway.wait_registered()
        assert (await browser.resolve(name)).parsed_addresses() == ["127.0.0.1"]
        assert "not announcing on ['192.0.2.1']" in caplog.text
    finally:
        await gateway.stop()
