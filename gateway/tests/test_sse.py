"""The SSE parser against the WHATWG rules, chunking, an independent decoder, and a real server."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import aiohttp
import pytest
from aiohttp import web
from httpx_sse._decoders import SSEDecoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navign_gateway.sse import (
    DEFAULT_MAX_EVENT_BYTES,
    EventStreamParser,
    SSEIdleTimeout,
    SSEMessage,
    SSEProtocolError,
    iter_sse,
)


def parse(stream: bytes, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[SSEMessage]:
    return EventStreamParser(max_event_bytes=max_event_bytes).feed(stream)


def datas(messages: Iterable[SSEMessage]) -> list[str]:
    return [m.data for m in messages]


# --- The examples of the HTML standard, §9.2.6 ---------------------------------------------


def test_spec_example_stock_ticker_lines_join_with_newline() -> None:
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert parse(stream) == [SSEMessage(data="YHOO\n+2\n10")]


def test_spec_example_comment_ids_and_leading_space() -> None:
    stream = (
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    parser = EventStreamParser()
    assert parser.feed(stream) == [
        SSEMessage(data="first event", last_event_id="1"),
        SSEMessage(data="second event", last_event_id=""),  # "id" alone resets it
        SSEMessage(data=" third event", last_event_id=""),  # only one space is removed
    ]
    assert parser.comments == 1
    # Without the final blank line the last block is never dispatched, not even at the end.
    parser = EventStreamParser()
    assert len(parser.feed(stream[:-1])) == 2
    parser.close()
    assert parser.last_event_id == ""


def test_spec_example_empty_data_and_a_lone_newline() -> None:
    stream = b"data\n\ndata\ndata\n\ndata:"
    assert parse(stream) == [SSEMessage(data=""), SSEMessage(data="\n")]


def test_spec_example_space_after_colon_is_optional() -> None:
    assert parse(b"data:test\n\ndata: test\n\n") == [SSEMessage(data="test")] * 2


def test_spec_example_event_types() -> None:
    stream = (
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n"
    )
    assert [(m.event, m.data) for m in parse(stream)] == [
        ("add", "73857293"),
        ("remove", "2153"),
        ("add", "113411"),
    ]


def test_spec_example_three_messages() -> None:
    stream = (
        b"data: This is the first message.\n\n"
        b"data: This is the second message, it\ndata: has two lines.\n\n"
        b"data: This is the third message.\n\n"
    )
    assert datas(parse(stream)) == [
        "This is the first message.",
        "This is the second message, it\nhas two lines.",
        "This is the third message.",
    ]


def test_protocol_example_frames() -> None:
    """Protocol §4.3's frames: retry first, events with ids, a ping without one."""
    stream = (
        b"retry: 3342\n\n"
        b'id: 44\nevent: data_update\ndata: {"seq":44}\n\n'
        b'event: ping\ndata: {"server_time":"2026-11-27T10:06:15Z"}\n\n'
    )
    parser = EventStreamParser()
    assert parser.feed(stream) == [
        # The retry came since the previous dispatch (the empty block dispatched nothing).
        SSEMessage(event="data_update", data='{"seq":44}', last_event_id="44", retry=3342),
        SSEMessage(event="ping", data='{"server_time":"2026-11-27T10:06:15Z"}', last_event_id="44"),
    ]
    assert parser.retry == 3342
    assert parser.last_event_id == "44"


# --- Lines, decoding, fields -----------------------------------------------------------------


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_every_line_end_gives_the_same_events(end: bytes) -> None:
    lines = [b"event: e", b"id: 7", b"data: a", b"data: b", b"", b": c", b"data: z", b""]
    assert parse(end.join(lines) + end) == [
        SSEMessage(event="e", data="a\nb", last_event_id="7"),
        SSEMessage(data="z", last_event_id="7"),
    ]


def test_cr_then_lf_in_the_next_chunk_is_one_line_end() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the LF completes CRLF: not a blank line
    assert parser.feed(b"\r") == [SSEMessage(data="a")]
    assert parser.feed(b"\ndata: b\r") == []  # that LF belongs to the previous CR
    assert parser.feed(b"") == []  # an empty chunk does not forget the pending CR
    assert parser.feed(b"\n\n") == [SSEMessage(data="b")]


def test_cr_cr_and_lf_cr_are_two_line_ends() -> None:
    assert parse(b"data: a\r\r") == [SSEMessage(data="a")]
    assert parse(b"data: a\n\r") == [SSEMessage(data="a")]
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [SSEMessage(data="a")]


def test_utf8_split_inside_a_character_and_invalid_bytes_replaced() -> None:
    parser = EventStreamParser()
    euro = "€".encode()
    assert parser.feed(b"data: " + euro[:1]) == []
    assert parser.feed(euro[1:2]) == []
    assert parser.feed(euro[2:] + b"\xff\xe2\x82\n\n") == [SSEMessage(data="€\ufffd\ufffd")]


def test_a_bom_is_ignored_only_at_the_very_start() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"\xef\xbb") == []
    assert parser.feed(b"\xbfdata: a\n\n") == [SSEMessage(data="a")]
    # A second BOM makes "\ufeffdata" an unknown field: nothing is dispatched.
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\n") == []
    assert parse(b"\n\xef\xbb\xbfdata: b\n\n") == []
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: b\n\n") == []
    # A new stream (after close) starts afresh.
    parser.close()
    assert parser.feed(b"\xef\xbb\xbfdata: c\n\n") == [SSEMessage(data="c")]


def test_fields_without_colon_unknown_fields_and_case() -> None:
    stream = b"data\nData: x\nfoo: bar\nevent\ndata:: y\ndata:\tz\n\n"
    assert parse(stream) == [SSEMessage(data="\n: y\n\tz")]


def test_id_with_nul_is_ignored_and_the_id_persists() -> None:
    parser = EventStreamParser()
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\ndata: c\n\nid:\ndata: d\n\n"
    assert [(m.data, m.last_event_id) for m in parser.feed(stream)] == [
        ("a", "1"),
        ("b", "1"),
        ("c", "1"),
        ("d", ""),
    ]


def test_an_id_takes_effect_at_the_blank_line_even_without_data() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 5\n") == []
    assert parser.last_event_id == ""  # the block is not finished yet
    assert parser.feed(b"\n") == []
    assert parser.last_event_id == "5"
    assert parser.feed(b"data: x\n\n") == [SSEMessage(data="x", last_event_id="5")]


def test_a_seeded_last_event_id_reports_until_a_new_one() -> None:
    parser = EventStreamParser(last_event_id="41")
    assert parser.feed(b"event: ping\ndata: {}\n\nid: 42\ndata: a\n\n") == [
        SSEMessage(event="ping", data="{}", last_event_id="41"),
        SSEMessage(data="a", last_event_id="42"),
    ]


@pytest.mark.parametrize(
    "value",
    [b"", b" 5", b"5 ", b"+5", b"-5", b"1_000", b"1.5", b"0x10", "\uff13".encode(), b"\xb2"],
)
def test_retry_takes_ascii_digits_only(value: bytes) -> None:
    parser = EventStreamParser()
    assert parser.feed(b"retry: 100\n\nretry: " + value + b"\ndata: x\n\n") == [
        SSEMessage(data="x", retry=100)  # the earlier valid retry is the pending one
    ]
    assert parser.retry == 100


def test_retry_is_reported_once_and_persists_on_the_parser() -> None:
    parser = EventStreamParser()
    messages = parser.feed(b"retry: 0012\ndata: a\n\ndata: b\n\nretry:7\ndata: c\n\n")
    assert [m.retry for m in messages] == [12, None, 7]
    assert parser.retry == 7
    # An absurd value is ignored rather than crashing the parser (Python's digit limit).
    assert parser.feed(b"retry: " + b"9" * 5000 + b"\ndata: d\n\n") == [SSEMessage(data="d")]
    assert parser.retry == 7


def test_event_type_resets_after_an_empty_dispatch() -> None:
    assert parse(b"event: foo\n\ndata: x\n\n") == [SSEMessage(event="message", data="x")]
    assert parse(b"event:\ndata: x\n\n") == [SSEMessage(event="message", data="x")]


def test_close_discards_the_incomplete_event_but_keeps_id_and_retry() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"retry: 2500\nid: 9\ndata: a\n\nevent: half\nid: 10\ndata: b\n") == [
        SSEMessage(data="a", last_event_id="9", retry=2500)
    ]
    parser.close()
    assert (parser.last_event_id, parser.retry) == ("9", 2500)
    assert parser.feed(b"\ndata: c\n\n") == [SSEMessage(data="c", last_event_id="9")]


def test_constructor_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventStreamParser(max_event_bytes=0)
    with pytest.raises(TypeError):
        EventStreamParser(max_event_bytes=True)
    with pytest.raises(ValueError, match="NUL"):
        EventStreamParser(last_event_id="a\0b")
    assert EventStreamParser().max_event_bytes == DEFAULT_MAX_EVENT_BYTES == 1 << 20


# --- Limits ----------------------------------------------------------------------------------


def test_a_long_line_is_refused_whole_or_in_pieces() -> None:
    with pytest.raises(SSEProtocolError, match="line of more than 64 bytes") as info:
        parse(b"data: ok\n\ndata: " + b"x" * 100 + b"\n\n", max_event_bytes=64)
    assert info.value.dispatched == (SSEMessage(data="ok"),)
    assert info.value.limit == 64

    parser = EventStreamParser(max_event_bytes=64)
    for _ in range(6):  # a line without an end grows only up to the limit
        parser.feed(b"x" * 10)
    with pytest.raises(SSEProtocolError):
        parser.feed(b"x" * 10)
    # A failed stream stays failed until closed, then the parser is usable again.
    with pytest.raises(SSEProtocolError, match="already failed"):
        parser.feed(b"\n\n")
    parser.close()
    assert parser.feed(b"data: fine\n\n") == [SSEMessage(data="fine")]


def test_a_line_exactly_at_the_limit_is_accepted() -> None:
    line = b"data: " + b"y" * 58
    assert len(line) == 64
    assert datas(parse(line + b"\n\n", max_event_bytes=64)) == ["y" * 58]


def test_an_event_of_many_short_lines_is_refused_but_comments_do_not_count() -> None:
    with pytest.raises(SSEProtocolError, match="event of more than 100 bytes"):
        parse(b"data: 0123456789\n" * 10 + b"\n", max_event_bytes=100)
    # Each block stays under the limit: fine, however long the stream.
    assert len(parse(b"data: 0123456789\n\n" * 50, max_event_bytes=100)) == 50
    # Comments are keepalives; they never accumulate.
    parser = EventStreamParser(max_event_bytes=100)
    assert parser.feed(b": keepalive\n" * 100 + b"data: x\n\n") == [SSEMessage(data="x")]
    assert parser.comments == 100


# --- Chunking: any split gives the same result ------------------------------------------------

TOKENS = [
    b"data",
    b"event",
    b"id",
    b"retry",
    b":",
    b" ",
    b"  ",
    b"\r",
    b"\n",
    b"\r\n",
    b"x",
    b"12",
    b"\x00",
    b"\xef\xbb\xbf",
    "€".encode(),
    "😀".encode(),
    b"\xff",
    b"\xe2\x82",
    b"\xc3",
]


def run_chunks(chunks: Iterable[bytes], max_event_bytes: int) -> tuple[object, ...]:
    """Everything observable: messages (including those carried by an error), final state."""
    parser = EventStreamParser(max_event_bytes=max_event_bytes)
    messages: list[SSEMessage] = []
    error = None
    for chunk in chunks:
        try:
            messages.extend(parser.feed(chunk))
        except SSEProtocolError as exc:
            messages.extend(exc.dispatched)
            error = exc.limit
            break
    return messages, error, parser.last_event_id, parser.retry, parser.comments


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.lists(st.sampled_from(TOKENS), max_size=120),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    limit=st.sampled_from([8, 32, DEFAULT_MAX_EVENT_BYTES]),
)
def test_any_chunking_gives_the_same_messages(
    tokens: list[bytes], cuts: list[int], limit: int
) -> None:
    stream = b"".join(tokens)
    whole = run_chunks([stream], limit)
    assert run_chunks(split_at(stream, cuts), limit) == whole
    assert run_chunks([bytes([b]) for b in stream], limit) == whole


# --- An independent decoder: httpx-sse -------------------------------------------------------

# Field values without line ends; NUL, BOM, colons and odd spacing included.
_VALUE = st.text(alphabet=st.sampled_from([*"ab :\t\x00\ufeff€😀", "\u2028", "\x85"]), max_size=12)
_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=6)


@st.composite
def event_blocks(draw: st.DrawFn) -> list[str]:
    """One block of lines ending in a dispatch; always at least one data line (httpx-sse, unlike
    the standard, dispatches a block without data, so such blocks are left out here)."""
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(":" + draw(_VALUE))
    if draw(st.booleans()):
        lines.append("event:" + draw(_VALUE))
    if draw(st.booleans()):
        lines.append("id:" + draw(_VALUE))
    if draw(st.booleans()):
        lines.append("retry:" + draw(st.sampled_from(["", " "])) + draw(_DIGITS))
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["other", "Data", "ID"])) + ":" + draw(_VALUE))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        prefix = draw(st.sampled_from(["data:", "data: ", "data"]))
        lines.append(prefix + draw(_VALUE) if prefix != "data" else prefix)
    order = draw(st.permutations(range(len(lines))))
    return [*(lines[i] for i in order), ""]


def oracle(stream: bytes) -> list[tuple[str, str, str, int | None]]:
    """httpx-sse's decoder, given lines split by a one-line regex over the whole text."""
    text = stream.decode("utf-8-sig", "replace")
    lines = re.split("\r\n|\r|\n", text)[:-1]  # what follows the last line end is incomplete
    decoder = SSEDecoder()
    out = []
    for line in lines:
        event = decoder.decode(line)
        if event is not None:
            out.append((event.event, event.data, event.id, event.retry))
    return out


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.lists(event_blocks(), max_size=8),
    ends=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1, max_size=5),
    bom=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_agrees_with_httpx_sse(
    blocks: list[list[str]], ends: list[str], bom: bool, cuts: list[int]
) -> None:
    lines = [line for block in blocks for line in block]
    text = ""
    for i, line in enumerate(lines):
        end = ends[i % len(ends)]
        if not line and end == "\n" and text.endswith("\r"):
            end = "\r"  # CR then LF would be one line end, swallowing this blank line
        text += line + end
    stream = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    parser = EventStreamParser()
    ours = [m for chunk in split_at(stream, cuts) for m in parser.feed(chunk)]
    assert [(m.event, m.data, m.last_event_id, m.retry) for m in ours] == oracle(stream)
    assert len(ours) == len(blocks)


# --- iter_sse against a real aiohttp server ----------------------------------------------------

Script = Callable[[web.StreamResponse], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """Start a real server on 127.0.0.1 that plays a script; return its URL."""
    runners: list[web.AppRunner] = []

    async def start(script: Script) -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await script(response)
            return response

        app = web.Application()
        app.router.add_get("/events", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        return f"http://127.0.0.1:{port}/events"

    yield start
    for runner in runners:
        await runner.cleanup()


async def collect(
    url: str,
    parser: EventStreamParser,
    idle_timeout: float,
    sizes: list[int] | None = None,
    *,
    into: list[SSEMessage] | None = None,
) -> list[SSEMessage]:
    """GET ``url`` and gather its events into ``into`` (kept even when iteration raises)."""
    received = [] if into is None else into
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        on_bytes = sizes.append if sizes is not None else None
        async for message in iter_sse(
            response.content, parser, idle_timeout=idle_timeout, on_bytes=on_bytes
        ):
            received.append(message)
    return received


async def test_iter_sse_reads_delayed_chunks_until_the_stream_ends(
    serve: Callable[[Script], Awaitable[str]],
) -> None:
    chunks = [b"retry: 2000\n\nid: 1\nevent: a\nda", b"ta: x\r", b"\n\r\n", "data: é".encode()[:-1]]
    chunks += ["é".encode()[-1:] + b"\n\nid: 2\ndata: y\n\ndata: never dispatched\n"]

    async def script(response: web.StreamResponse) -> None:
        for chunk in chunks:
            await response.write(chunk)
            await asyncio.sleep(0.05)

    url = await serve(script)
    parser = EventStreamParser()
    sizes: list[int] = []
    messages = await asyncio.wait_for(collect(url, parser, 5.0, sizes), 30)
    assert messages == [
        SSEMessage(event="a", data="x", last_event_id="1", retry=2000),
        SSEMessage(data="é", last_event_id="1"),
        SSEMessage(data="y", last_event_id="2"),
    ]
    assert sum(sizes) == sum(len(c) for c in chunks)
    assert (parser.last_event_id, parser.retry) == ("2", 2000)
    # The stream's end closed the parser: the unfinished event is gone.
    assert parser.feed(b"\n") == []


async def test_iter_sse_raises_idle_timeout_when_the_server_goes_silent(
    serve: Callable[[Script], Awaitable[str]],
) -> None:
    release = asyncio.Event()

    async def script(response: web.StreamResponse) -> None:
        await response.write(b"id: 3\ndata: before\n\ndata: half")
        # Silent, but bounded: the test releases the handler when it is done.
        await asyncio.wait_for(release.wait(), 20)

    url = await serve(script)
    parser = EventStreamParser()
    received: list[SSEMessage] = []
    try:
        with pytest.raises(SSEIdleTimeout) as info:
            await asyncio.wait_for(collect(url, parser, 0.3, into=received), 20)
    finally:
        release.set()
    assert info.value.idle_seconds == 0.3
    assert received == [SSEMessage(data="before", last_event_id="3")]
    assert parser.feed(b"\n\n") == []  # the half event was discarded when the stream closed


async def test_iter_sse_comments_alone_keep_the_stream_alive(
    serve: Callable[[Script], Awaitable[str]],
) -> None:
    async def script(response: web.StreamResponse) -> None:
        for _ in range(12):  # 12 x 0.1 s of comments: more than twice the idle timeout in all
            await response.write(b":\n")
            await asyncio.sleep(0.1)
        await response.write(b"data: end\n\n")

    url = await serve(script)
    parser = EventStreamParser()
    sizes: list[int] = []
    messages = await asyncio.wait_for(collect(url, parser, 0.5, sizes), 30)
    assert messages == [SSEMessage(data="end")]
    assert parser.comments == 12
    assert sum(sizes) == 12 * 2 + len(b"data: end\n\n")


async def test_iter_sse_yields_good_events_before_a_protocol_error(
    serve: Callable[[Script], Awaitable[str]],
) -> None:
    async def script(response: web.StreamResponse) -> None:
        await response.write(b"id: 1\ndata: good\n\ndata: " + b"z" * 5000 + b"\n\n")

    url = await serve(script)
    parser = EventStreamParser(max_event_bytes=1024)
    received: list[SSEMessage] = []
    with pytest.raises(SSEProtocolError):
        await asyncio.wait_for(collect(url, parser, 5.0, into=received), 20)
    assert received == [SSEMessage(data="good", last_event_id="1")]
    assert parser.last_event_id == "1"
    assert parser.feed(b"data: next stream\n\n") == [
        SSEMessage(data="next stream", last_event_id="1")
    ]


@pytest.mark.parametrize("idle_timeout", [0.0, -1.0, float("nan")])
async def test_iter_sse_refuses_a_non_positive_idle_timeout(
    serve: Callable[[Script], Awaitable[str]], idle_timeout: float
) -> None:
    async def script(response: web.StreamResponse) -> None:
        await response.write(b"data: x\n\n")

    url = await serve(script)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        with pytest.raises(ValueError, match="idle_timeout"):
            async for _ in iter_sse(
                response.content, EventStreamParser(), idle_timeout=idle_timeout
            ):
                pass
