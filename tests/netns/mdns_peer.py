"""Another host on the mall network, for test_mdns_rollout: python-zeroconf browsing
``_navign-fw._tcp.local.`` from the beacon's network namespace, an independent check of what the
gateway announces.

Run as ``python mdns_peer.py <address>`` (inside ``ip netns exec``). It writes one JSON object
per line on stdout: ``{"ev": "added"|"updated", "name", "port", "server", "addresses", "txt"}``
as the browser resolves a service, ``{"ev": "removed", "name"}`` when one is withdrawn. Commands
on stdin: ``claim <instance> <port>`` registers that instance itself (a name taken before the
gateway probes for it; answered ``{"ev": "claimed", "name"}``), ``unclaim`` withdraws it with
goodbye packets (``{"ev": "unclaimed"}``). It ends at the end of stdin, or after
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_navign-fw._tcp.local."
STATES = {
    ServiceStateChange.Added: "added",
    ServiceStateChange.Updated: "updated",
    ServiceStateChange.Removed: "removed",
}


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Peer:
    def __init__(self, address: str) -> None:
        self.address = address
        self.zc = AsyncZeroconf(interfaces=[address])  # in the running loop: built inside it
        self.changes: asyncio.Queue[tuple[str, ServiceStateChange]] = asyncio.Queue()
        self.claimed: AsyncServiceInfo | None = None

    def on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        self.changes.put_nowait((name, state_change))

    async def report(self) -> None:
        """Resolve and print each change, in the order they came."""
        while True:
            name, change = await self.changes.get()
            event: dict[str, Any] = {"ev": STATES[change], "name": name}
            if change is not ServiceStateChange.Removed:
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                if not await info.async_request(self.zc.zeroconf, 3000):
                    continue  # gone again before it resolved
                event.update(
                    port=info.port,
                    server=info.server,
                    addresses=info.parsed_addresses(),
                    txt={k: v for k, v in info.decoded_properties.items()},
                )
            emit(event)

    async def command(self, line: str) -> None:
        words = line.split()
        if words[:1] == ["claim"] and len(words) == 3:
            instance, port = words[1], int(words[2])
            self.claimed = AsyncServiceInfo(
                SERVICE_TYPE,
                f"{instance}.{SERVICE_TYPE}",
                port=port,
                server=f"peer-{instance}.local.",
                parsed_addresses=[self.address],
                properties={"txtvers": "1", "gw": "not-a-gateway"},
            )
            await (await self.zc.async_register_service(self.claimed))
            emit({"ev": "claimed", "name": self.claimed.name})
        elif words == ["unclaim"] and self.claimed is not None:
            await (await self.zc.async_unregister_service(self.claimed))
            self.claimed = None
            emit({"ev": "unclaimed"})
        else:
            emit({"ev": "error", "line": line})

    async def run(self, max_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        browser = AsyncServiceBrowser(self.zc.zeroconf, SERVICE_TYPE, handlers=[self.on_change])
        reporter = asyncio.create_task(self.report())
        emit({"ev": "ready"})
        try:
            async with asyncio.timeout(max_seconds):
                while line := (await reader.readline()).decode().strip():
                    await self.command(line)
        except TimeoutError:
            emit({"ev": "error", "line": f"still running after {max_seconds:g} s"})
        finally:
            reporter.cancel()
            await browser.async_cancel()
            await self.zc.async_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="the IPv4 address of this host to browse from")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()

    async def run() -> None:
        await Peer(args.address).run(args.max_seconds)

    asyncio.run(run())


if __name__ == "__main__":
    main()
