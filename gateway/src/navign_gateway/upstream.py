"""Authenticated HTTP requests from the gateway to the central server.

:class:`Upstream` is what every component that talks to the server uses (sync, firmware cache,
reports, heartbeat): it adds ``Authorization``, ``X-Entity-ID`` and ``X-Orchestrator-ID``, and
when the server answers 401 ``AUTH_TOKEN_EXPIRED`` it asks its :class:`TokenSource` for a fresh
token and repeats the request once (protocol §1.7). Any other answer, success or error, is the
caller's: :func:`raise_for_error` turns an error into :class:`UpstreamError` with the envelope's
code.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

#: Bytes of an error body read to find the envelope; the rest is discarded.
MAX_ERROR_BODY = 64 * 1024


class TokenSource(Protocol):
    async def token(self) -> str:
        """The current access token (registering or refreshing first when there is none)."""
        ...

    async def refresh(self, stale: str) -> str:
        """A new token because ``stale`` was refused as expired (one refresh for many callers)."""
        ...


@dataclass
class UpstreamError(Exception):
    """The server refused a request, or could not be reached (``status`` 0)."""

    status: int
    code: str | None
    message: str
    retry_after: float | None = None

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status}{code}: {self.message}" if self.status else self.message


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def error_of(response: aiohttp.ClientResponse) -> UpstreamError:
    """The response's error envelope as an exception (tolerates a body that is not one)."""
    try:
        raw = await response.content.read(MAX_ERROR_BODY)
        body = json.loads(raw)
        error = body["error"]
        code, message = str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        code, message = None, response.reason or "error"
    return UpstreamError(response.status, code, message, _retry_after(response))


async def raise_for_error(response: aiohttp.ClientResponse) -> None:
    if response.status >= 400:
        raise await error_of(response)


class Upstream:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        entity_id: str,
        orchestrator_id: str,
        tokens: TokenSource,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.entity_id = entity_id
        self.orchestrator_id = orchestrator_id
        self.tokens = tokens

    def _headers(self, token: str, extra: Mapping[str, str] | None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "X-Entity-ID": self.entity_id,
            "X-Orchestrator-ID": self.orchestrator_id,
            **(extra or {}),
        }

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        limits: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The server's response (any status) to an authenticated request; refreshes an expired
        token and repeats the request once. Connection failures raise UpstreamError(0, ...).
        ``limits``: aiohttp's timeouts (default: 60 s in all, 10 s to connect)."""
        url = self.base_url + path
        token = await self.tokens.token()
        for attempt in range(2):
            try:
                response = await self.session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=self._headers(token, headers),
                    timeout=limits or aiohttp.ClientTimeout(total=60, sock_connect=10),
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamError(
                    0, None, f"{method} {path}: {exc or type(exc).__name__}"
                ) from exc
            try:
                if attempt == 0 and response.status == 401:
                    error = await error_of(response)
                    if error.code == "AUTH_TOKEN_EXPIRED":
                        response.release()
                        token = await self.tokens.refresh(token)
                        continue
                    raise error
                yield response
                return
            finally:
                response.release()
        raise UpstreamError(401, "AUTH_TOKEN_EXPIRED", "the refreshed token was refused too")
