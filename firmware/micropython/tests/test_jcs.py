"""``navign.jcs`` on the real MicroPython interpreter: ``proto/vectors/canonical_json.json`` (read
by MicroPython from the repository), then inputs compared with ``navign_proto.canonical`` (the
reference: ``parse_json`` and the ``rfc8785`` package), then objects built in MicroPython.

``navign.jcs`` serialises what a release manifest can hold, so it refuses floats: the vectors'
cases with floats are listed by name below, and must parse and then be refused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Final

import pytest

from navign_firmware import unix
from navign_proto.canonical import canonical_json, parse_json
from navign_proto.errors import CanonicalJSONError

VECTORS: Final = Path(__file__).resolve().parents[3] / "proto" / "vectors"

#: The vectors' valid cases whose input holds a float: navign.jcs refuses floats (a manifest's
#: numbers are sizes and counters), so these must parse and then be refused by canonical().
FLOAT_CASES: Final = {
    "rfc8785-3.2.2": "numbers 333333333.33333329, 1E30, 4.50, 2e-3, 1e-27 are floats",
    "integers": "1.0 and 100e-2 are floats (JCS prints them as 1)",
    "floats": "every number is a float",
    "mall-area": "coordinates 40.5 and 22.25 are floats",
}

SCRIPT: Final = """
import gc, json, binascii
from navign import jcs
def has_float(v):
    if isinstance(v, float):
        return True
    if isinstance(v, dict):
        return any(has_float(x) for x in v.values())
    if isinstance(v, list):
        return any(has_float(x) for x in v)
    return False
def outcome(data):
    try:
        v = jcs.parse(data)
    except ValueError:
        return "refused"
    try:
        c = jcs.canonical(v)
    except ValueError:
        return "float" if has_float(v) else "no-canonical"
    # equals_canonical streams the same comparison without building the bytes.
    if not jcs.equals_canonical(v, c) or jcs.equals_canonical(v, c + b" "):
        return "equals_canonical disagrees"
    if jcs.equals_canonical(v, c[:-1]) or jcs.equals_canonical(v, data) != (data == c):
        return "equals_canonical disagrees"
    return binascii.hexlify(c).decode()
V = json.load(open(%r))
for case in V["valid"]:
    print(json.dumps(["valid:" + case["name"], outcome(case["input"].encode())]))
for case in V["rejected"]:
    print(json.dumps(["rejected:" + case["name"], outcome(case["input"].encode())]))
V = None
for line in open(%r):
    name, data = json.loads(line)
    line = None
    print(json.dumps([name, outcome(binascii.unhexlify(data))]))
    gc.collect()
"""

#: (name, input bytes). What each must give is asked of navign_proto.canonical.
INPUTS: Final[list[tuple[str, bytes]]] = [
    ("sorted-keys", b'{"b":1,"a":2}'),
    ("nested", b'{"a":{"c":[1,2,{"z":null,"y":true}],"b":false}}'),
    ("empty-array", b"[]"),
    ("empty-object", b"{}"),
    ("empty-string", b'""'),
    ("zero", b"0"),
    ("minus-zero", b"-0"),
    ("int", b"123"),
    ("max-safe", b"9007199254740991"),
    ("min-safe", b"-9007199254740991"),
    ("above-max-safe", b"9007199254740992"),
    ("below-min-safe", b"-9007199254740992"),
    ("huge-int", b"1" + b"0" * 400),
    ("exponent-int", b"1e2"),
    ("one-point-zero", b"1.0"),
    ("minus-zero-float", b"-0.0"),
    ("zero-e-zero", b"0e0"),
    ("small-float", b"[1e-7]"),
    ("inf-literal-number", b"[1e400]"),
    ("trailing-comma-array", b"[1,]"),
    ("trailing-comma-object", b'{"a":1,}'),
    ("missing-colon", b'{"a" 1}'),
    ("bare-key", b"{a:1}"),
    ("single-quotes", b"['a']"),
    ("leading-zero", b"[01]"),
    ("minus-leading-zero", b"[-01]"),
    ("dot-no-digits", b"[1.]"),
    ("no-int-part", b"[.5]"),
    ("e-no-digits", b"[1e]"),
    ("e-sign-no-digits", b"[1e+]"),
    ("lone-minus", b"[-]"),
    ("plus", b"[+1]"),
    ("hex", b"[0x10]"),
    ("infinity", b"[Infinity]"),
    ("minus-infinity", b"[-Infinity]"),
    ("nan", b"[NaN]"),
    ("true", b"[true]"),
    ("tru", b"[tru]"),
    ("True", b"[True]"),
    ("null", b"[null]"),
    ("nul", b"[nul]"),
    ("truex", b"[truex]"),
    ("control-escapes", b'"\\u0000\\u001f\\u007f\\u0080"'),
    ("surrogate-pair", b'"\\ud83d\\ude00"'),
    ("surrogate-pair-upper-hex", b'"\\uD83D\\uDE00"'),
    ("lone-high-surrogate", b'"\\ud83d"'),
    ("lone-high-then-text", b'"\\ud83dx"'),
    ("lone-low-surrogate", b'"\\ude00"'),
    ("high-then-non-low", b'"\\ud83d\\u0041"'),
    ("high-high", b'"\\ud83d\\ud83d"'),
    ("short-u-escape", b'"\\u12"'),
    ("bad-hex-u-escape", b'"\\u12g4"'),
    ("bad-escape", b'"\\x41"'),
    ("escaped-slash", b'"\\/"'),
    ("quote-backslash", b'"a\\"b\\\\c"'),
    ("short-escapes", b'"\\b\\f\\n\\r\\t"'),
    ("line-separators", b'"\\u2028\\u2029"'),
    ("raw-tab-in-string", b'"a\tb"'),
    ("raw-newline-in-string", b'"a\nb"'),
    ("raw-control-in-string", b'"a\x01b"'),
    ("raw-del-in-string", b'"a\x7fb"'),
    ("raw-utf8", '"caf\u00e9 \u5546\u573a \U0001f600"'.encode()),
    ("truncated-utf8", b'"\xc3"'),
    ("overlong-slash", b'"\xc0\xaf"'),
    ("overlong-3", b'"\xe0\x80\xaf"'),
    ("raw-surrogate", b'"\xed\xa0\x80"'),
    ("above-max-code-point", b'"\xf4\x90\x80\x80"'),
    ("ff-byte", b'"\xff"'),
    ("continuation-alone", b'"\x80"'),
    ("unterminated-string", b'"abc'),
    ("unterminated-escape", b'"abc\\'),
    ("escaped-quote-unterminated", b'"abc\\"'),
    ("whitespace", b" \t\n\r[ 1 , 2 ]\r\n"),
    ("vertical-tab", b"\x0b[1]"),
    ("form-feed", b"\x0c[1]"),
    ("nbsp", b"\xc2\xa0[1]"),
    ("trailing-nul", b"[1]\x00"),
    ("trailing-garbage", b"[1] x"),
    ("two-values", b"[1][2]"),
    ("empty", b""),
    ("only-space", b" "),
    ("unclosed-array", b"[1"),
    ("unclosed-object", b'{"a":1'),
    ("depth-32", b"[" * 32 + b"]" * 32),
    ("duplicate-key", b'{"a":1,"a":1}'),
    ("duplicate-nested", b'{"x":{"a":1,"a":2}}'),
    ("duplicate-by-escape", b'{"a":1,"\\u0061":2}'),
    ("escaped-key", b'{"\\u0062":1,"a":2}'),
    (
        "utf16-order",
        b'{"\\ud83d\\ude00":1,"\\ufb33":2,"\\u00e9":3,"e":4,"E":5,"":6,"\\uffff":7,'
        b'"\\ud800\\udc00":8,"\\ue000":9,"\\ud7ff":10}',
    ),
    ("key-with-escapes", b'{"a\\nb":1,"a\\u0001":2,"a\\"":3}'),
    ("long-string", b'"' + b"x" * 3000 + b'"'),
    ("many-members", ("{" + ",".join(f'"k{i}":{i}' for i in range(120)) + "}").encode()),
]

#: Where navign.jcs is deliberately stricter than the reference: (reference, navign.jcs).
DIVERGENCES: Final[dict[str, tuple[str, str]]] = {
    # CPython's json.loads decodes bytes with a BOM as utf-8-sig, and detects UTF-16/32.
    "bom": ("5b315d", "refused"),
    "utf16": ("5b315d", "refused"),
    # navign.jcs limits nesting to 32 levels; CPython's limit is its recursion limit...
    "depth-33": ("5b" * 33 + "5d" * 33, "refused"),
    # ...which it reports as RecursionError, not as invalid JSON (on 3.13 the parse succeeds
    # and the canonical form recurses).
    "depth-2000": ("error", "refused"),
}
DIVERGENT_INPUTS: Final[list[tuple[str, bytes]]] = [
    ("bom", b"\xef\xbb\xbf[1]"),
    ("utf16", "[1]".encode("utf-16-le")),
    ("depth-33", b"[" * 33 + b"]" * 33),
    ("depth-2000", b"[" * 2000 + b"]" * 2000),
]


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def reference(data: bytes) -> str:
    """The canonical bytes (hex), ``float``, ``refused``, or ``error`` when the reference
    recurses too deep, by navign_proto.canonical."""
    try:
        value = parse_json(data)
        if _has_float(value):
            return "float"
        return canonical_json(value).hex()
    except CanonicalJSONError:
        return "refused"
    except RecursionError:
        return "error"


def _random_string(rng: random.Random) -> str:
    pools = [
        (0x20, 0x7E),
        (0x00, 0x1F),
        (0x7F, 0x7FF),
        (0x800, 0xD7FF),
        (0xE000, 0xFFFF),
        (0x10000, 0x10FFFF),
    ]
    out = []
    for _ in range(rng.randrange(0, 12)):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)))
    if rng.random() < 0.3:
        out.append(rng.choice(['"', "\\", "/", "\u2028"]))
    return "".join(out)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if kind == 2:
        return rng.randint(-1000, 1000)
    if kind in (3, 4):
        return _random_string(rng)
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {_random_string(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))}


def random_inputs(count: int = 200, seed: int = 8785) -> list[tuple[str, bytes]]:
    """Random documents without floats, written in random (non-canonical) layouts."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        value = _random_value(rng)
        text = json.dumps(
            value,
            ensure_ascii=rng.random() < 0.5,
            indent=rng.choice([None, 0, 2]),
            separators=rng.choice([None, (",", ":"), (" , ", " : ")]),
        )
        out.append((f"random-{i}", text.encode("utf-8")))
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    path = tmp_path_factory.mktemp("jcs") / "inputs.jsonl"
    with path.open("w") as out:
        for name, data in [*INPUTS, *DIVERGENT_INPUTS, *random_inputs()]:
            out.write(json.dumps([name, data.hex()]) + "\n")
    result = unix.run(SCRIPT % (str(VECTORS / "canonical_json.json"), str(path)))
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {name: value for name, value in lines}


def test_float_cases_are_exactly_the_vectors_with_floats() -> None:
    valid = json.loads((VECTORS / "canonical_json.json").read_text())["valid"]
    with_floats = {c["name"] for c in valid if _has_float(json.loads(c["input"]))}
    assert with_floats == set(FLOAT_CASES)
    assert len(valid) - len(with_floats) >= 3


def test_vectors_valid(results: dict[str, str]) -> None:
    valid = json.loads((VECTORS / "canonical_json.json").read_text())["valid"]
    for case in valid:
        got = results["valid:" + case["name"]]
        if case["name"] in FLOAT_CASES:
            assert got == "float", case["name"]
        else:
            assert got == case["canonical_hex"], case["name"]


def test_vectors_rejected(results: dict[str, str]) -> None:
    rejected = json.loads((VECTORS / "canonical_json.json").read_text())["rejected"]
    assert len(rejected) >= 4
    assert {c["name"]: results["rejected:" + c["name"]] for c in rejected} == {
        c["name"]: "refused" for c in rejected
    }


def test_inputs_match_the_reference(results: dict[str, str]) -> None:
    expected = {name: reference(data) for name, data in INPUTS}
    kinds = list(expected.values())
    assert kinds.count("refused") >= 40
    assert kinds.count("float") >= 5
    assert len(kinds) - kinds.count("refused") - kinds.count("float") >= 20
    assert {name: results[name] for name, _ in INPUTS} == expected


def test_deliberate_divergences(results: dict[str, str]) -> None:
    assert {name: reference(data) for name, data in DIVERGENT_INPUTS} == {
        name: pair[0] for name, pair in DIVERGENCES.items()
    }
    assert {name: results[name] for name, _ in DIVERGENT_INPUTS} == {
        name: pair[1] for name, pair in DIVERGENCES.items()
    }


def test_random_documents_match_the_reference(results: dict[str, str]) -> None:
    inputs = random_inputs()
    expected = {name: reference(data) for name, data in inputs}
    assert all(v not in ("refused", "float") for v in expected.values())
    assert {name: results[name] for name, _ in inputs} == expected


OBJECTS_SCRIPT: Final = """
import json, binascii
from navign import jcs
def attempt(obj):
    try:
        return binascii.hexlify(jcs.canonical(obj)).decode()
    except ValueError as exc:
        return "ValueError"
deep = []
for _ in range(32):
    deep = [deep]
cases = [
    ("tuple", ("a", 1)),
    ("bools", {"t": True, "f": False, "n": None}),
    ("max-safe", 9007199254740991),
    ("above-max-safe", 9007199254740992),
    ("below-min-safe", -9007199254740992),
    ("float", 1.0),
    ("bytes", b"x"),
    ("int-key", {1: 2}),
    ("lone-surrogate", chr(0xD800)),
    ("lone-surrogate-key", {chr(0xDFFF): 1}),
    ("set", {1}),
    ("deep-33", deep),
    ("deep-32", deep[0]),
]
print(json.dumps({name: attempt(obj) for name, obj in cases}))
"""


def test_canonical_of_objects() -> None:
    result = unix.run(OBJECTS_SCRIPT)
    assert result.stderr == ""
    got = json.loads(result.stdout)
    assert got == {
        "tuple": b'["a",1]'.hex(),
        "bools": b'{"f":false,"n":null,"t":true}'.hex(),
        "max-safe": b"9007199254740991".hex(),
        "above-max-safe": "ValueError",
        "below-min-safe": "ValueError",
        "float": "ValueError",
        "bytes": "ValueError",
        "int-key": "ValueError",
        "lone-surrogate": "ValueError",
        "lone-surrogate-key": "ValueError",
        "set": "ValueError",
        "deep-33": "ValueError",
        "deep-32": (b"[" * 32 + b"]" * 32).hex(),
    }
