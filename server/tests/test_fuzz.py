"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (issue 3, items 10
and 12): no input from the wire produces a 5xx, and every response matches the document.

schemathesis generates requests for every operation of the document (checked equal to the
server's ``/openapi.json``): boundary values and invalid inputs first (its coverage phase), then
random valid and invalid data. They go over loopback to a real uvicorn server, run in a thread
with its own event loop (schemathesis calls with blocking ``requests``), seeded with the sample
mall and an enrolled gateway. Admin paths carry the admin token; gateway paths a real gateway
token and X-Entity-ID; signed paths are signed with the gateway's key (a registration names that
key), so the fuzzer gets past the signature check. Most requests are still refused, with a 4xx:
the point is that none fails with a 5xx, and that refusals of invalid data are 4xx, not 2xx.

Deterministic (derandomized) and bounded: ``NAVIGN_FUZZ_EXAMPLES`` random examples per operation
(default ``DEFAULT_EXAMPLES``); set it higher to fuzz longer locally, and ``NAVIGN_FUZZ_SEED`` to
explore other inputs than the fixed ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from navign_proto import keys
from navign_proto.signing import sign_request
from navign_server.app import create_app
from navign_server.context import RateLimits
from navign_server.ratelimit import Rate, RateLimiter

from .conftest import (
    RunningServer,
    TestGateway,
    enrolled_gateway,
    import_sample_mall,
    run_server,
    server_settings,
)

T = TypeVar("T")

#: About 35 s for the whole module on a 2-core machine.
DEFAULT_EXAMPLES = 15
EXAMPLES = int(os.environ.get("NAVIGN_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))
SEED = os.environ.get("NAVIGN_FUZZ_SEED")
SIGNED_PATHS = {"/api/orchestrators/register", "/api/orchestrators/token"}
EVENTS_PATH = "/api/orchestrators/events"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def openapi_document() -> dict[str, Any]:
    """The document the server serves at /openapi.json (building it needs no server)."""
    document: dict[str, Any] = create_app(server_settings(Path("unused"))).openapi()
    return document


DOCUMENT = openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(max_examples=EXAMPLES, deterministic=True, database="none")
if SEED is not None:
    schema.config.seed = int(SEED)  # takes precedence over the derandomized default


@dataclass
class Live:
    server: RunningServer
    gateway: TestGateway


class ServerThread:
    """``run_server`` on an event loop of its own, in a thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-server")
        self.runner = run_server(server_settings(tmp_path), tmp_path)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        return self.run(self.runner.__aenter__())

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.runner.__aexit__(None, None, None))
            self.run(_cancel_the_rest())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


async def _cancel_the_rest() -> None:
    """Tasks a library leaves behind (sse-starlette's shutdown watcher) end with the loop."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp_path = tmp_path_factory.mktemp("fuzz")
    server_thread = ServerThread(tmp_path)
    with server_thread as server:
        # The rate limits would answer most of the fuzzer's requests with 429.
        unlimited = [RateLimiter(Rate(1_000_000, 1)) for _ in range(4)]
        server.ctx.limits = RateLimits(*unlimited)
        server_thread.run(import_sample_mall(server))
        gateway = server_thread.run(enrolled_gateway(server))
        served = requests.get(f"{server.base_url}/openapi.json", timeout=30)
        assert served.json() == DOCUMENT, "the fuzzed document is the one the server serves"
        yield Live(server, gateway)


def auth_headers(live: Live, path: str) -> dict[str, str]:
    if path.startswith("/api/admin/"):
        return {"Authorization": f"Bearer {live.server.admin_token}"}
    if path.startswith(("/api/orchestrators/", "/api/firmware/")):
        assert live.gateway.token is not None
        return {
            "Authorization": f"Bearer {live.gateway.token}",
            "X-Entity-ID": live.gateway.entity_id,
        }
    return {}


def signed_body(live: Live, case: Case[Any], headers: dict[str, str]) -> bytes:
    """The body to send, signed (headers updated); a registration names the gateway's key."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("public_key"), str):
        body["public_key"] = keys.public_key_to_pem(live.gateway.key.public_key())
    if isinstance(body, NotSet):
        raw = b""
    elif isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = json.dumps(body).encode()
    query = urlsplit(case.formatted_path).query
    headers.update(sign_request(live.gateway.key, case.method, case.path, query, raw))
    return raw


def check_event_stream(live: Live, case: Case[Any], headers: dict[str, str]) -> None:
    """The stream never ends by itself: read the status and headers, then hang up."""
    kwargs = case.as_transport_kwargs(base_url=live.server.base_url, headers=headers)
    with requests.request(**kwargs, stream=True, timeout=30) as response:
        assert response.status_code < 500, response.text
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
        else:
            assert response.json()["error"]["code"]


@pytest.mark.slow
@schema.parametrize()
def test_no_input_produces_a_server_error(case: Case[Any], live: Live) -> None:
    headers = auth_headers(live, case.path)
    if case.path == EVENTS_PATH:
        check_event_stream(live, case, headers)
        return
    extra: dict[str, Any] = {}
    if case.path in SIGNED_PATHS:
        extra["data"] = signed_body(live, case, headers)
    case.call_and_validate(
        base_url=live.server.base_url, headers=headers, checks=CHECKS, timeout=30, **extra
    )
