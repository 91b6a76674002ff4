"""mDNS / DNS-SD announcement of the gateway's firmware service (protocol §8.3).

Why it exists: a beacon with Wi-Fi and no ``gateway`` hint in its configuration finds its mall
gateway by asking for ``_navign-fw._tcp.local.``. This module answers: it registers that
service through python-zeroconf's asyncio API on the gateway's HTTP port, with a TXT record
saying which releases the gateway holds, and keeps the TXT in step with the firmware cache.

The announcement:

- instance ``<instance>._navign-fw._tcp.local.`` (``[mdns] instance``, default the orchestrator
  id with dots turned into hyphens), renamed ``<instance>-2`` ... by zeroconf's probing when
  another responder already holds the name;
- SRV to ``<orchestrator id>.local.`` (letters, digits and hyphens only) on the HTTP port, and
  A records for the addresses of the chosen interfaces (``[mdns] interfaces``, or every non-
  loopback IPv4 address of the host);
- TXT (:func:`txt_properties`): ``txtvers=1``, ``gw=<orchestrator id>``, ``entity=<entity id>``
  and, per (target chip, kind) with a verified release cached, the latest by SemVer
  precedence: ``fw.<target>.<kind>=<version> <manifest sha256 hex>``. Every TXT string is at
  most 255 bytes and the whole TXT at most :data:`TXT_BUDGET` bytes, so that a legacy-unicast
  answer carrying PTR, SRV, TXT and A fits one packet (the beacon reads one); what would not
  fit is left out with a WARNING, never sent broken.

Updated (after :data:`UPDATE_DELAY`, coalescing bursts) whenever the cache reports a change,
withdrawn with goodbye packets on :meth:`FirmwareAnnouncer.stop`. mDNS failing to start (no
address yet, a socket error), or an update failing, is logged once, retried every
:data:`RETRY_SECONDS`, and never stops the gateway.

Public: :class:`FirmwareAnnouncer`, :func:`txt_properties`, :func:`instance_label`,
:func:`host_label`, :data:`SERVICE_TYPE` and the timing and size constants.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Final

import ifaddr
from zeroconf import Error as ZeroconfError
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from navign_gateway.backoff import FailureLog
from navign_gateway.firmware import CachedRelease, FirmwareCache
from navign_proto.versions import VersionError, parse_version

__all__ = [
    "MAX_TXT_STRING",
    "RETRY_SECONDS",
    "SERVICE_TYPE",
    "STOP_SECONDS",
    "TXT_BUDGET",
    "TXT_VERSION",
    "UPDATE_DELAY",
    "FirmwareAnnouncer",
    "host_label",
    "instance_label",
    "txt_properties",
]

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_navign-fw._tcp.local."
TXT_VERSION: Final = "1"
#: One TXT string (``key=value``) is a length byte and at most this many bytes (RFC 6763 §6.1).
MAX_TXT_STRING: Final = 255
#: The whole TXT record stays under this (RFC 6763 §6.2), so one packet carries the answer.
TXT_BUDGET: Final = 1300
#: Seconds between a cache change and the re-announcement (changes in between are coalesced).
UPDATE_DELAY = 1.0
#: Seconds between attempts to start mDNS after a failure (no address yet, a socket error).
RETRY_SECONDS = 60.0
#: Bound on the goodbye packets and the sockets' close at stop.
STOP_SECONDS = 2.0

_NOT_HOST = re.compile(r"[^A-Za-z0-9-]+")


def instance_label(configured: str | None, orchestrator_id: str) -> str:
    """The DNS-SD instance name: the configured one (validated by the configuration), else the
    orchestrator id made a single label (dots become hyphens, at most 63 bytes)."""
    if configured is not None:
        return configured
    return orchestrator_id.replace(".", "-")[:63]


def host_label(orchestrator_id: str) -> str:
    """The host label of the SRV target: the orchestrator id (unique per gateway, unlike a Pi's
    default hostname, and not the name avahi announces) in letters, digits and hyphens."""
    label = _NOT_HOST.sub("-", orchestrator_id)[:63].strip("-")
    return label or "navign-gateway"


def txt_properties(
    orchestrator_id: str, entity_id: str, releases: Iterable[CachedRelease]
) -> dict[str, str]:
    """The TXT of the announcement, in order: ``txtvers``, ``gw``, ``entity``, then
    ``fw.<target>.<kind>`` by target and kind, each the latest version cached (SemVer
    precedence; the most recently cached among equal versions). A string over
    :data:`MAX_TXT_STRING` bytes, or one that would take the TXT past :data:`TXT_BUDGET`, is
    left out with a WARNING."""
    latest: dict[tuple[str, str], CachedRelease] = {}
    for release in releases:
        try:
            rank = (parse_version(release.version), release.cached_at)
        except VersionError as exc:
            log.warning("mDNS: release %s left out: %s", release.firmware_id, exc)
            continue
        chip_kind = (release.target, release.kind)
        current = latest.get(chip_kind)
        if current is None or rank > (parse_version(current.version), current.cached_at):
            latest[chip_kind] = release
    properties = {"txtvers": TXT_VERSION, "gw": orchestrator_id, "entity": entity_id}
    used = sum(_txt_size(k, v) for k, v in properties.items())
    for (target, kind), release in sorted(latest.items()):
        key = f"fw.{target}.{kind}"
        value = f"{release.version} {release.manifest_sha256}"
        size = _txt_size(key, value)
        if not key.isascii() or not key.isprintable() or "=" in key:
            log.warning("mDNS: %s left out: %r cannot be a TXT key", release.firmware_id, key)
        elif size - 1 > MAX_TXT_STRING:
            log.warning(
                "mDNS: %s left out: %s=%s is %d bytes, over the %d of a TXT string",
                release.firmware_id, key, value, size - 1, MAX_TXT_STRING,
            )  # fmt: skip
        elif used + size > TXT_BUDGET:
            log.warning(
                "mDNS: %s left out: %s would take the TXT record past %d bytes",
                release.firmware_id, key, TXT_BUDGET,
            )  # fmt: skip
        else:
            properties[key] = value
            used += size
    return properties


def _txt_size(key: str, value: str) -> int:
    """Bytes of ``key=value`` in a TXT record, its length byte included."""
    return 1 + len(f"{key}={value}".encode())


def _host_addresses() -> list[str]:
    """This host's IPv4 addresses without loopback: what zeroconf's "all interfaces" serves."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                address = ipaddress.IPv4Address(ip.ip)
                if not address.is_loopback and str(address) not in found:
                    found.append(str(address))
    return found


def _assigned(address: str) -> bool:
    """Whether ``address`` is one of this host's (a socket can bind to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class _NoAddressError(Exception):
    """No address to announce: none of the configured ones is up, or the host has none."""


class FirmwareAnnouncer:
    """The ``_navign-fw._tcp`` announcement of one gateway, following its firmware cache.

    :meth:`start` returns at once; probing and the first announcements run in the background
    (about 2 s; :meth:`wait_registered`). Both :meth:`start` and :meth:`stop` are idempotent.
    """

    def __init__(
        self,
        cache: FirmwareCache,
        *,
        port: int,
        orchestrator_id: str,
        entity_id: str,
        instance: str | None = None,
        interfaces: Sequence[str] = (),
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, not {port}")
        self._cache = cache
        self._port = port
        self._orchestrator_id = orchestrator_id
        self._entity_id = entity_id
        self._interfaces = list(interfaces)
        self._name = f"{instance_label(instance, orchestrator_id)}.{SERVICE_TYPE}"
        self._server = f"{host_label(orchestrator_id)}.local."
        self._addresses: list[str] = []
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._registered = asyncio.Event()
        self._failures = FailureLog(log, "mDNS announcement")
        cache.add_listener(self._dirty.set)

    @property
    def name(self) -> str | None:
        """The registered service name (zeroconf may have renamed it); None until registered."""
        return self._info.name if self._info is not None and self._registered.is_set() else None

    @property
    def properties(self) -> dict[str, str] | None:
        """The TXT announced now; None until registered."""
        if self._info is None or not self._registered.is_set():
            return None
        return {k: v or "" for k, v in self._info.decoded_properties.items()}

    @property
    def addresses(self) -> list[str]:
        """The IPv4 addresses announced (empty until registered)."""
        return list(self._addresses) if self._registered.is_set() else []

    def start(self) -> None:
        """Begin announcing in the background (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mdns")
            self._task.add_done_callback(self._task_done)

    async def wait_registered(self) -> str:
        """The registered name, once probing and registration are done (callers bound the
        wait, e.g. with ``asyncio.timeout``)."""
        await self._registered.wait()
        assert self._info is not None
        return self._info.name

    async def stop(self) -> None:
        """Withdraw the service (goodbye packets) and close the sockets, within
        :data:`STOP_SECONDS`. Safe to call when not started, or twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # _task_done logged a failure
        await self._close(goodbye=True)

    @staticmethod
    def _task_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("mDNS announcement stopped: %r", exc, exc_info=exc)

    # -- the background task ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._register()
                break
            except (OSError, ZeroconfError, _NoAddressError) as exc:
                self._failures.failed(exc)
                await self._close(goodbye=False)
                await asyncio.sleep(RETRY_SECONDS)
        self._failures.recovered()
        log.info(
            "mDNS: announcing %s on %s port %d", self.name, ", ".join(self._addresses), self._port
        )
        updates = FailureLog(log, "mDNS update")
        while True:
            await self._dirty.wait()
            await asyncio.sleep(UPDATE_DELAY)
            self._dirty.clear()
            try:
                await self._update()
            except (OSError, ZeroconfError) as exc:
                updates.failed(exc)
                self._dirty.set()  # try again, with what the cache holds then
                await asyncio.sleep(RETRY_SECONDS)
            else:
                updates.recovered()

    async def _register(self) -> None:
        self._addresses = self._choose_addresses()
        interfaces = list(self._addresses) if self._interfaces else InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        self._dirty.clear()
        self._info = self._service_info(self._name)
        announced = await self._zc.async_register_service(self._info, allow_name_change=True)
        await announced
        self._registered.set()

    def _choose_addresses(self) -> list[str]:
        if not self._interfaces:
            found = _host_addresses()
            if not found:
                raise _NoAddressError("the host has no IPv4 address besides loopback")
            return found
        up = [a for a in self._interfaces if _assigned(a)]
        missing = [a for a in self._interfaces if a not in up]
        if not up:
            raise _NoAddressError(f"none of the configured addresses is up ({', '.join(missing)})")
        if missing:
            log.warning("mDNS: not announcing on %s: not an address of this host", missing)
        return up

    def _service_info(self, name: str) -> AsyncServiceInfo:
        properties = txt_properties(self._orchestrator_id, self._entity_id, self._cache.list())
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=self._port,
            properties=dict(properties),
            server=self._server,
            parsed_addresses=list(self._addresses),
        )

    async def _update(self) -> None:
        assert self._zc is not None
        assert self._info is not None
        info = self._service_info(self._info.name)
        if info.text == self._info.text:
            return
        announced = await self._zc.async_update_service(info)
        self._info = info  # only once zeroconf took it (a failed update is tried again)
        await announced
        log.info("mDNS: TXT of %s updated: %s", info.name, self.properties)

    async def _close(self, *, goodbye: bool) -> None:
        zc, info, registered = self._zc, self._info, self._registered.is_set()
        self._zc = self._info = None
        self._registered.clear()
        if zc is None:
            return
        try:
            async with asyncio.timeout(STOP_SECONDS):
                if goodbye and registered and info is not None:
                    sent = await zc.async_unregister_service(info)
                    await sent
                await zc.async_close()
        except (TimeoutError, OSError, ZeroconfError) as exc:
            log.warning("mDNS: closing did not finish cleanly: %r", exc)
