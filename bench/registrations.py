"""Registrations per second on one server process (one uvicorn worker).

Enrollment tokens are created through the admin API and every register request is signed
(ES256, navign_proto.signing) before the clock starts: signing is the gateways' work, this
measures the server's. Requests come from loopback addresses 127.0.0.2, .3, ... with at most
100 each, under the server's limit of 120 registrations per address per hour.

    uv run python bench/registrations.py --count 800 --concurrency 16 32 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _harness as h
import _mall as mall

TARGET_PER_SECOND = 300.0
WARMUP = 50


async def timed_round(
    server: h.Server, label: str, count: int, concurrency: int, addresses: h.AddressPool
) -> tuple[float, int]:
    """Register ``count`` new gateways, ``concurrency`` at a time: (successes/s, refusals).
    Tokens are created and requests signed before the clock starts."""
    ids = [f"{label}-{i:05d}" for i in range(count)]
    async with h.admin_session(server) as admin:
        tokens = await h.enrollment_tokens(admin, h.ENTITY, ids)
    signed = h.sign_registrations(h.ENTITY, tokens, addresses)
    started = time.perf_counter()
    results = await h.post_registrations(server.base_url, signed, concurrency)
    elapsed = time.perf_counter() - started
    ok = sum(1 for status, _ in results if status == 200)
    return ok / elapsed, count - ok


async def main_async(args: argparse.Namespace) -> list[h.Figure]:
    h.raise_nofile()
    figures: list[h.Figure] = []
    with tempfile.TemporaryDirectory(prefix="navign-bench-reg-") as tmp:
        workdir = args.workdir or Path(tmp)
        with h.running_server(workdir) as server:
            await mall.import_chunks(server, 0, 1, 100)
            addresses = h.AddressPool()
            await h.register_gateways(server, WARMUP, prefix="warm", addresses=addresses)
            best = 0.0
            for concurrency in args.concurrency:
                rates: list[float] = []
                refused = 0
                for r in range(args.rounds):
                    label = f"c{concurrency}r{r}"
                    rate, failed = await timed_round(
                        server, label, args.count, concurrency, addresses
                    )
                    rates.append(rate)
                    refused += failed
                    h.say(f"concurrency {concurrency} round {r}: {rate:.0f}/s, {failed} refused")
                rate = h.median(rates)
                best = max(best, rate)
                figures += [
                    h.Figure("registrations", f"registered/s, concurrency {concurrency} "
                             f"(median of {args.rounds} x {args.count})", rate, "1/s"),
                    h.Figure("registrations", f"refused, concurrency {concurrency}", refused,
                             "requests", "= 0", refused == 0),
                ]  # fmt: skip
            figures.append(
                h.Figure("registrations", "registered/s, best concurrency", best, "1/s",
                         f">= {TARGET_PER_SECOND:g}", best >= TARGET_PER_SECOND, goal=True)
            )  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=800, help="registrations per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32, 64])
    h.common_arguments(parser)
    args = parser.parse_args()
    h.emit(h.run(main_async(args)), args.json)


if __name__ == "__main__":
    main()
