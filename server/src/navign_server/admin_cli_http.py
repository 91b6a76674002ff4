"""The admin API over HTTP for ``navign-admin``: stdlib ``urllib``, no runtime dependency added.

One exception type per cause, each a readable line: the server's error envelope
(:class:`ServerError`, with its code), no connection (:class:`ServerUnreachable`) and no answer in
time (:class:`ServerTimeout`). Only reads (GET) are retried, and only on 429/503 with a short
``Retry-After``: a write is never sent twice.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

from navign_server import __version__

#: Reads retried after 429/503, and the longest ``Retry-After`` honoured (else: fail now).
GET_RETRIES: Final = 2
RETRY_AFTER_MAX_SECONDS: Final = 10.0
#: Largest response read; the biggest admin answer (a page of documents) is far below it.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
USER_AGENT: Final = f"navign-admin/{__version__}"

sleep = time.sleep  # patched by tests


class AdminApiError(Exception):
    """A failed admin call; ``str()`` is the one line shown to the operator."""


class ServerError(AdminApiError):
    """The server answered with an error (its envelope's code and message when it sent one)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        envelope: Mapping[str, Any] | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.envelope = envelope
        self.retry_after = retry_after


class ServerUnreachable(AdminApiError):  # noqa: N818 - reads as what happened
    """No connection: refused, unknown host, TLS failure, connection dropped."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class ServerTimeout(ServerUnreachable):
    def __init__(self, url: str, seconds: float) -> None:
        AdminApiError.__init__(self, f"no answer from {url} within {seconds:g} s")
        self.url = url
        self.reason = "timeout"


class InvalidServerUrl(ValueError):  # noqa: N818 - a usage error, shown as one line
    pass


def check_server_url(url: str, *, allow_insecure_http: bool) -> str:
    """``url`` without a trailing slash, or :class:`InvalidServerUrl` with the reason."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidServerUrl(f"--server must be an http(s) URL with a host, not {url!r}")
    if parts.username or parts.query or parts.fragment:
        raise InvalidServerUrl("--server must not carry credentials, a query or a fragment")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise InvalidServerUrl(
            "plain http to a non-loopback server sends the admin token in the clear; "
            "use https or --allow-insecure-http"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_path(*segments: str) -> str:
    """``/api/admin/<segments>``, each segment percent-encoded (an id never changes the path)."""
    return "/api/admin/" + "/".join(quote(s, safe="") for s in segments)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    headers: Message

    @property
    def server_time(self) -> datetime:
        """The server's ``Date`` (ages are computed on its clock), else this machine's time."""
        value = self.headers.get("Date")
        if value:
            try:
                return parsedate_to_datetime(value).astimezone(UTC)
            except (TypeError, ValueError):
                pass
        return datetime.now(UTC)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, not followed: the admin token must not travel elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class AdminApi:
    """Blocking client of ``/api/admin/...`` with the admin bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._opener = urllib.request.build_opener(_NoRedirects())

    def get(self, path: str, **query: str | int | bool | None) -> Reply:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None, **query: str | int | bool | None) -> Reply:
        return self.request("POST", path, json_body=body, query=query)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool | None] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> Reply:
        if json_body is not None:
            data = json.dumps(json_body, ensure_ascii=False, allow_nan=False).encode("utf-8")
            content_type = "application/json"
        elif method == "POST" and data is None:
            data, content_type = b"{}", "application/json"
        url = self.base_url + path + _query_string(query or {})
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        attempts = GET_RETRIES + 1 if method == "GET" else 1
        for attempt in range(attempts):
            try:
                return self._send(method, url, data, headers)
            except ServerError as exc:
                wait = _retry_after(exc)
                if attempt + 1 == attempts or wait is None:
                    raise
                sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> Reply:
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - scheme checked by check_server_url
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
                return Reply(response.status, _decode(raw, response.status), response.headers)
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    body = exc.read(1024 * 1024)
                except (OSError, http.client.HTTPException):
                    body = b""
            raise _server_error(exc.code, exc.reason, exc.headers, body) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except TimeoutError:
            raise ServerTimeout(self.base_url, self.timeout) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> ServerUnreachable:
        if isinstance(reason, TimeoutError):
            return ServerTimeout(self.base_url, self.timeout)
        if isinstance(reason, ConnectionRefusedError):
            text = "connection refused"
        elif isinstance(reason, socket.gaierror):
            text = f"unknown host ({reason.strerror or reason})"
        elif isinstance(reason, ssl.SSLError):
            text = f"TLS: {getattr(reason, 'reason', None) or reason}"
        elif isinstance(reason, OSError) and reason.strerror:
            text = reason.strerror
        else:
            text = str(reason) or type(reason).__name__
        return ServerUnreachable(self.base_url, text)


def _query_string(query: Mapping[str, str | int | bool | None]) -> str:
    pairs = [
        (k, ("true" if v else "false") if isinstance(v, bool) else str(v))
        for k, v in query.items()
        if v is not None
    ]
    return "?" + urlencode(pairs) if pairs else ""


def _decode(raw: bytes, status: int) -> Any:
    if len(raw) > MAX_RESPONSE_BYTES:
        raise AdminApiError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise AdminApiError(f"HTTP {status} answer is not JSON") from None


def _server_error(status: int, reason: str, headers: Message, raw: bytes) -> ServerError:
    if 300 <= status < 400:
        where = headers.get("Location", "elsewhere")
        return ServerError(status, f"HTTP {status}", f"redirected to {where}; use that --server")
    retry_after = headers.get("Retry-After")
    try:
        body = json.loads(raw)
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, TypeError, KeyError):
        text = reason or "error without an error envelope"
        return ServerError(status, f"HTTP {status}", text, retry_after=retry_after)
    request_id = error.get("request_id")
    return ServerError(
        status,
        code,
        message,
        request_id=request_id if isinstance(request_id, str) else None,
        envelope=body,
        retry_after=retry_after,
    )


def _retry_after(exc: ServerError) -> float | None:
    """Seconds to wait before retrying a read, or None when it must not be retried."""
    if exc.status not in (429, 503):
        return None
    try:
        wait = float(exc.retry_after) if exc.retry_after is not None else 1.0
    except ValueError:
        return None
    return wait if 0 <= wait <= RETRY_AFTER_MAX_SECONDS else None
