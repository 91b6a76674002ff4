"""The firmware's DNS-SD querier (src/navign/mdns.py) on the MicroPython unix port.

Responses are built by python-zeroconf's own encoder (an independent implementation), sent by a
UDP responder on loopback. Malformed packets (pointer loops, lengths past the end...) and a few
hundred random mutations of a valid response must be refused with ``Malformed`` (or a decoding
error), never crash the parser. The multicast path between network namespaces is tested with the
gateway's real zeroconf announcer in the rollout tests.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading

import pytest

# zeroconf's DNS encoder/decoder classes are public API but not re-exported for type checkers.
from zeroconf import (  # type: ignore[attr-defined]
    DNSAddress,
    DNSIncoming,
    DNSOutgoing,
    DNSPointer,
    DNSService,
    DNSText,
    const,
)

from navign_firmware import unix

SERVICE = "_navign-fw._tcp.local."
INSTANCE = "gw-1._navign-fw._tcp.local."


def response(*, port: int = 8080, address: str = "127.0.0.1", with_a: bool = True) -> bytes:
    out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
    out.add_answer_at_time(DNSPointer(SERVICE, const._TYPE_PTR, const._CLASS_IN, 120, INSTANCE), 0)
    out.add_additional_answer(
        DNSService(INSTANCE, const._TYPE_SRV, const._CLASS_IN, 120, 0, 0, port, "gw-1.local.")
    )
    out.add_additional_answer(
        DNSText(INSTANCE, const._TYPE_TXT, const._CLASS_IN, 120, b"\x0agateway=gw\x07v=1.2.0")
    )
    if with_a:
        out.add_additional_answer(
            DNSAddress(
                "gw-1.local.", const._TYPE_A, const._CLASS_IN, 120, socket.inet_aton(address)
            )
        )
    packets = out.packets()
    assert len(packets) == 1
    return packets[0]


class Responder:
    """Answers every query with ``answer(query)`` (or nothing when it returns None)."""

    def __init__(self, answer: object) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.queries: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.queries.append(data)
            reply = self.answer(data)  # type: ignore[operator]
            if reply is not None:
                self.sock.sendto(reply, peer)

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def discover(port: int, timeout_ms: int = 500, attempts: int = 2) -> object:
    code = (
        "from navign import mdns\n"
        f"print(repr(mdns.discover('_navign-fw._tcp.local', ('127.0.0.1', {port}), "
        f"timeout_ms={timeout_ms}, attempts={attempts})))\n"
    )
    out = unix.run(code).stdout.strip()
    return (
        None
        if out == "None"
        else tuple(json.loads(out.replace("(", "[").replace(")", "]").replace("'", '"')))
    )


def test_finds_the_gateway_from_a_zeroconf_encoded_answer() -> None:
    with Responder(lambda q: response(port=8123)) as responder:
        assert discover(responder.port) == ("127.0.0.1", 8123)
    # The query asks for the service's PTR, as DNS-SD says.
    incoming = DNSIncoming(responder.queries[0])
    assert [(q.name, q.type) for q in incoming.questions] == [(SERVICE, const._TYPE_PTR)]


def test_asks_for_the_address_when_the_answer_lacks_it() -> None:
    def answer(query: bytes) -> bytes:
        questions = DNSIncoming(query).questions
        if any(q.type == const._TYPE_A for q in questions):
            out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
            out.add_answer_at_time(
                DNSAddress(
                    "gw-1.local.",
                    const._TYPE_A,
                    const._CLASS_IN,
                    120,
                    socket.inet_aton("127.0.0.5"),
                ),
                0,
            )
            return out.packets()[0]
        return response(port=9000, with_a=False)

    with Responder(answer) as responder:
        assert discover(responder.port) == ("127.0.0.5", 9000)


def test_gives_up_when_nobody_answers() -> None:
    with Responder(lambda q: None) as responder:
        assert discover(responder.port, timeout_ms=200, attempts=2) is None
        assert len(responder.queries) == 2


def _header(an: int = 1) -> bytes:
    return struct.pack("!HHHHHH", 0, 0x8400, 0, an, 0, 0)


MALFORMED = {
    "short header": b"\x00\x00\x84",
    "pointer loop": _header() + b"\xc0\x0c" + b"\x00\x0c\x00\x01" + b"\x00" * 6,
    "forward pointer": _header() + b"\xc0\x20" + b"\x00" * 40,
    "label past the end": _header() + b"\x3f" + b"a" * 10,
    "rdata past the end": _header() + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 200) + b"\x00" * 4,
    "A of 5 bytes": _header()
    + b"\x00"
    + struct.pack("!HHIH", 1, 1, 0, 5)
    + b"\x7f\x00\x00\x01\x00",
    "SRV too short": _header() + b"\x00" + struct.pack("!HHIH", 33, 1, 0, 3) + b"\x00\x00\x00",
    "TXT past its rdata": _header() + b"\x00" + struct.pack("!HHIH", 16, 1, 0, 2) + b"\x09a",
    "name over 255": _header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00" + b"\x00" * 10,
    "reserved label type": _header() + b"\x80abc" + b"\x00" * 10,
    "truncated pointer": _header() + b"\xc0",
    "a query, not a response": struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + b"\x00\x00\x0c\x00\x01",
    "too many records": struct.pack("!HHHHHH", 0, 0x8400, 0, 65, 0, 0),
}


def _parse_all(packets: list[bytes]) -> list[str]:
    """Parse each packet on MicroPython: 'ok', 'malformed' or the unexpected exception."""
    lines = ",".join(repr(p) for p in packets)
    code = (
        "from navign import mdns\n"
        f"for p in [{lines}]:\n"
        "    try:\n"
        "        mdns.parse(p)\n"
        "        print('ok')\n"
        "    except (mdns.Malformed, UnicodeError):\n"
        "        print('malformed')\n"
        "    except Exception as e:\n"
        "        print('CRASH', repr(e))\n"
    )
    return unix.run(code).stdout.split("\n")[:-1]


def test_malformed_packets_are_refused() -> None:
    outcomes = _parse_all(list(MALFORMED.values()))
    assert dict(zip(MALFORMED, outcomes, strict=True)) == dict.fromkeys(MALFORMED, "malformed")


@pytest.fixture
def mutations() -> list[bytes]:
    rng = random.Random(20261127)
    valid = response()
    packets = []
    for _ in range(300):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            if len(data) < 2:
                break
            choice = rng.random()
            if choice < 0.5:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice < 0.8:
                del data[rng.randrange(len(data)) :]
            else:
                data.insert(rng.randrange(len(data)), rng.randrange(256))
        packets.append(bytes(data))
    return packets


def test_random_mutations_never_crash_the_parser(mutations: list[bytes]) -> None:
    outcomes = _parse_all(mutations)
    assert len(outcomes) == len(mutations)
    crashes = [o for o in outcomes if o.startswith("CRASH")]
    assert not crashes, crashes[:5]
    assert "malformed" in outcomes  # the mutations do hit the checks
