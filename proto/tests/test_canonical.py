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
