"""Server-sent events: an incremental parser of ``text/event-stream`` and an async reader.

The parser follows the WHATWG HTML standard, "Event stream interpretation" (§9.2.6), which
protocol §4.1 requires in full: UTF-8 with replacement of invalid bytes, one leading BOM ignored,
CRLF, LF or CR line ends (a CR at the end of one chunk and an LF at the start of the next are one
line end), comments, multi-line ``data``, ``id`` (refused when it contains NUL) and ``retry``
(ASCII digits only). It is fed raw bytes in whatever chunks the network delivers and returns the
events that became complete.

Lines are split on the bytes CR and LF before decoding. That is exact: in UTF-8 those two bytes
never occur inside a multi-byte character, and a decoder with replacement ends any incomplete
sequence at an ASCII byte, so decoding line by line gives the same text as decoding the whole
stream, whatever the chunk boundaries.

Defence: a Raspberry Pi must survive a broken or hostile server, so a line, or an event's lines
together (their bytes without line ends, comments aside), longer than ``max_event_bytes`` raise
:class:`SSEProtocolError` instead of growing a buffer without bound.

One :class:`EventStreamParser` may serve a gateway's successive connections, like an
``EventSource``: :meth:`EventStreamParser.close` ends one stream (its incomplete event is
discarded, as the standard says) and keeps :attr:`~EventStreamParser.last_event_id` and
:attr:`~EventStreamParser.retry` for the next one.

Public: :class:`SSEMessage`, :class:`EventStreamParser`, :func:`iter_sse`, :class:`SSEError`,
:class:`SSEProtocolError`, :class:`SSEIdleTimeout`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp

DEFAULT_MAX_EVENT_BYTES: Final = 1024 * 1024
"""1 MiB: far above any event of protocol §4.2 (the largest is a ``task_create``)."""

_LINE_END: Final = re.compile(rb"\r\n|\r|\n")
_BOM: Final = b"\xef\xbb\xbf"


class SSEError(Exception):
    """Base class of this module's errors: the stream is unusable and the client reconnects."""


class SSEProtocolError(SSEError):
    """The stream broke a limit; the connection must be dropped.

    ``dispatched`` holds the events completed by the same :meth:`EventStreamParser.feed` call
    before the offending line: they are valid, and since the parser's ``last_event_id`` already
    moved past them, a caller that dropped them would skip them on reconnect.
    """

    def __init__(self, reason: str, *, limit: int, dispatched: tuple[SSEMessage, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit
        self.dispatched = dispatched


class SSEIdleTimeout(SSEError):  # noqa: N818 - named like TimeoutError, which it reports
    """No byte at all arrived for ``idle_seconds``: the connection is presumed dead."""

    def __init__(self, idle_seconds: float) -> None:
        super().__init__(f"no bytes received for {idle_seconds:g} s; the stream is presumed dead")
        self.idle_seconds = idle_seconds


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched event.

    ``last_event_id`` is the stream's last event ID at dispatch (it persists across events that
    carry no ``id``), ``retry`` the reconnection time in milliseconds if a valid ``retry`` field
    arrived since the previous dispatch.
    """

    event: str = "message"
    data: str = ""
    last_event_id: str = ""
    retry: int | None = None


class EventStreamParser:
    """Incremental ``text/event-stream`` parser (WHATWG HTML §9.2.6)."""

    def __init__(
        self, *, last_event_id: str = "", max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> None:
        """``last_event_id`` seeds the stream's last event ID, e.g. with the gateway's stored
        cursor, so that events without an ``id`` (pings) report it rather than ``""``."""
        if isinstance(max_event_bytes, bool) or not isinstance(max_event_bytes, int):
            raise TypeError("max_event_bytes must be an int")
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be at least 1, not {max_event_bytes}")
        if "\0" in last_event_id or "\r" in last_event_id or "\n" in last_event_id:
            raise ValueError("last_event_id must not contain NUL, CR or LF")
        self.max_event_bytes = max_event_bytes
        self._last_event_id = last_event_id
        self._retry: int | None = None
        self._comments = 0
        self._start_stream()

    def _start_stream(self) -> None:
        # Per-stream state; the last event ID and the reconnection time survive a reconnect.
        self._partial = bytearray()
        self._at_stream_start = True
        self._skip_lf = False
        self._failed = False
        self._data: list[str] = []
        self._event_type = ""
        self._id_buffer = self._last_event_id
        self._pending_retry: int | None = None
        self._event_bytes = 0

    @property
    def last_event_id(self) -> str:
        """The last event ID as of the latest dispatch: the ``Last-Event-ID`` to reconnect with."""
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The latest reconnection time the server asked for, in milliseconds."""
        return self._retry

    @property
    def comments(self) -> int:
        """Comment lines seen so far (keepalives; they carry no event)."""
        return self._comments

    def feed(self, data: bytes) -> list[SSEMessage]:
        """Parse the next chunk of the stream; return the events it completed, in order.

        Raises :class:`SSEProtocolError` when a line or an event exceeds ``max_event_bytes``;
        the parser then refuses further input until :meth:`close`.
        """
        if self._failed:
            raise SSEProtocolError(
                "the stream already failed; close() the parser and reconnect",
                limit=self.max_event_bytes,
            )
        out: list[SSEMessage] = []
        if not data:
            return out
        pos = 0
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:  # the LF of a CRLF split across chunks
                pos = 1
        try:
            for match in _LINE_END.finditer(data, pos):
                if self._partial:
                    self._partial += data[pos : match.start()]
                    line = bytes(self._partial)
                    self._partial.clear()
                else:
                    line = data[pos : match.start()]
                pos = match.end()
                if pos == len(data) and data[-1] == 0x0D:
                    self._skip_lf = True
                message = self._line(line)
                if message is not None:
                    out.append(message)
            self._partial += data[pos:]
            if len(self._partial) > self.max_event_bytes:
                self._fail_line(len(self._partial))
        except SSEProtocolError as exc:
            self._failed = True
            exc.dispatched = tuple(out)
            raise
        return out

    def close(self) -> None:
        """End the current stream: discard an incomplete event (the standard's rule at end of
        file) and get ready for the next connection's stream."""
        self._start_stream()

    def _fail_line(self, length: int) -> None:
        raise SSEProtocolError(
            f"line of more than {self.max_event_bytes} bytes (at least {length})",
            limit=self.max_event_bytes,
        )

    def _line(self, raw: bytes) -> SSEMessage | None:
        if len(raw) > self.max_event_bytes:
            self._fail_line(len(raw))
        if self._at_stream_start:
            self._at_stream_start = False
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
        if not raw:
            return self._dispatch()
        if raw[0] == 0x3A:  # ':' starts a comment
            self._comments += 1
            return None
        self._event_bytes += len(raw)
        if self._event_bytes > self.max_event_bytes:
            raise SSEProtocolError(
                f"event of more than {self.max_event_bytes} bytes", limit=self.max_event_bytes
            )
        line = raw.decode("utf-8", "replace")
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            try:
                retry = int(value)
            except ValueError:
                # Only beyond sys.get_int_max_str_digits(): no meaningful delay; ignore it.
                return None
            self._retry = retry
            self._pending_retry = retry
        return None

    def _dispatch(self) -> SSEMessage | None:
        self._event_bytes = 0
        self._last_event_id = self._id_buffer
        if not self._data:
            self._event_type = ""
            return None
        message = SSEMessage(
            event=self._event_type or "message",
            data="\n".join(self._data),
            last_event_id=self._last_event_id,
            retry=self._pending_retry,
        )
        self._data = []
        self._event_type = ""
        self._pending_retry = None
        return message


async def iter_sse(
    content: aiohttp.StreamReader,
    parser: EventStreamParser,
    *,
    idle_timeout: float,
    on_bytes: Callable[[int], None] | None = None,
) -> AsyncIterator[SSEMessage]:
    """Yield the events of one response body until it ends.

    Raises :class:`SSEIdleTimeout` when no byte arrives for ``idle_timeout`` seconds (protocol
    §4.1: 2.5 ping intervals; comments and pings count, since any byte proves the connection
    alive). ``on_bytes`` is told the size of every chunk (metrics, a watchdog). When the
    iteration ends, for whatever reason, the parser's stream is closed so it can serve the
    next connection.
    """
    if not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
    try:
        while True:
            deadline = asyncio.timeout(idle_timeout)
            try:
                async with deadline:
                    chunk = await content.readany()
            except TimeoutError:
                if deadline.expired():
                    raise SSEIdleTimeout(idle_timeout) from None
                raise  # a timeout of the HTTP client's own, not ours
            if not chunk:
                return
            if on_bytes is not None:
                on_bytes(len(chunk))
            try:
                messages = parser.feed(chunk)
            except SSEProtocolError as exc:
                for message in exc.dispatched:
                    yield message
                raise
            for message in messages:
                yield message
    finally:
        parser.close()
