from __future__ import annotations

import pytest

from navign_proto.canonical import canonical_json, is_canonical, parse_json
from navign_proto.errors import CanonicalJSONError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
        ([1.0, 0.5, -0.0, 1e21, 1e-7], b"[1,0.5,0,1e+21,1e-7]"),
        ({"s": "é\n\u2028\x1f"}, '{"s":"é\\n\u2028\\u001f"}'.encode()),
        ({"nested": {"z": [], "a": {}}}, b'{"nested":{"a":{},"z":[]}}'),
        (None, b"null"),
        (True, b"true"),
    ],
)
def test_canonical_forms(value: object, expected: bytes) -> None:
    assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), 2**53, -(2**53), {1: "x"}, b"bytes", {"k": object()}]
)
def test_values_without_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_json(value)


def test_utf16_key_order_differs_from_code_point_order() -> None:
    # U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16, after it in code points.
    assert canonical_json({"\ufb33": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb33":1}'.encode()


@pytest.mark.parametrize(
    "text", ['{"a": 1, "a": 2}', "[NaN]", "[-Infinity]", "{", '{"a": 1} x', b"\xff\xfe"]
)
def test_parse_json_is_strict(text: str | bytes) -> None:
    with pytest.raises(CanonicalJSONError):
        parse_json(text)


def test_is_canonical() -> None:
    assert is_canonical(b'{"a":1,"b":[true]}')
    assert not is_canonical(b'{"b":[true],"a":1}')
    assert not is_canonical(b'{"a": 1}')
    assert not is_canonical(b'{"a":1.0}')
    assert not is_canonical(b"not json")


@pytest.mark.parametrize(
    "text",
    [
        "[9007199254740992]",
        "[-9007199254740992]",
        '{"n": 28762037858378947324841551120564224}',
        "[1e400]",
        "[-1e400]",
        '["\\ud800"]',
        '{"\\udfff": 1}',
        '["a\\uDBFFb"]',
        '["\\ud800"]'.encode("utf-16"),
    ],
)
def test_parse_json_refuses_what_has_no_canonical_form(text: str | bytes) -> None:
    """Whatever parse_json accepts, canonical_json can write (found by the API fuzzer: such
    values reached the server's storage and failed there, with a 500)."""
    with pytest.raises(CanonicalJSONError):
        parse_json(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[9007199254740991, -9007199254740991]", [2**53 - 1, -(2**53 - 1)]),
        ("[1e300, 1e-400]", [1e300, 0.0]),
        ('["\\ud83d\\ude00", "\\\\ud800"]', ["\U0001f600", "\\ud800"]),
        ('["\\ud83d\\ude00"]'.encode("utf-16"), ["\U0001f600"]),
    ],
)
def test_parse_json_keeps_what_has_one(text: str | bytes, value: object) -> None:
    assert parse_json(text) == value
    canonical_json(value)
