"""docs/protocol.md must not drift from the golden vectors and the wire code.

The protocol document quotes digests, checksums and signatures from ``proto/vectors/*.json``,
shows JSON examples, and lists every error code with its HTTP status. These tests fail when a
vector is regenerated, an example stops being JSON, or an error code changes, and the document
was not updated with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Final

import pytest

from navign_proto.canonical import parse_json
from navign_proto.errors import CanonicalJSONError
from navign_proto.wire import HTTP_STATUS, ErrorCode

ROOT: Final = Path(__file__).resolve().parents[1]
PROTOCOL: Final = ROOT / "docs" / "protocol.md"
VECTORS: Final = ROOT / "proto" / "vectors"

# A run of 64 or more lowercase hex digits: a SHA-256, or a longer value such as a raw r||s.
HEX_RUN: Final = re.compile(r"(?<![0-9a-f])[0-9a-f]{64,}(?![0-9a-f])")
PREFIXED: Final = re.compile(r"sha256:[0-9a-f]{64}(?![0-9a-f])")
FENCE: Final = re.compile(r"^```(?P<lang>\S*)\s*$")

# Hex values the document may show even if no vector holds them, each with the reason. Keep this
# short: a value that can be copied from a vector belongs in the vectors.
ALLOWED_HEX: Final[dict[str, str]] = {
    # SHA-256 of the empty string: §2.2 gives it as the body hash of a request without a body. It is
    # a constant, not a vector value (today the GET vector's canonical string happens to end in it).
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855": "SHA-256 of b''",
}


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value: object keys, object values and list items."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _artifact_hashes(value: Any) -> Iterator[str]:
    """The bare hex of every ``"sha256": ...`` member (the artifact hashes in manifests)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "sha256" and isinstance(item, str):
                yield item
            yield from _artifact_hashes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _artifact_hashes(item)


@cache
def _vector_files() -> tuple[tuple[str, Any], ...]:
    files = tuple(
        (path.name, parse_json(path.read_bytes())) for path in sorted(VECTORS.glob("*.json"))
    )
    assert files, f"no vectors in {VECTORS}"
    return files


@cache
def _vector_text() -> str:
    """Every string of every vector file, one per line, for substring search."""
    return "\n".join(text for _, document in _vector_files() for text in _strings(document))


@cache
def _doc() -> str:
    return PROTOCOL.read_text(encoding="utf-8")


def _fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line number, language, body)`` of every fenced code block."""
    blocks: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        assert index < len(lines), f"protocol.md:{start + 1}: code block is never closed"
        blocks.append((start + 1, opening["lang"], "\n".join(body)))
        index += 1
    return blocks


def test_vectors_are_found() -> None:
    names = {name for name, _ in _vector_files()}
    assert {"checksums.json", "keys.json", "manifests.json", "request_signatures.json"} <= names


def test_every_hex_value_in_the_doc_comes_from_a_vector() -> None:
    vectors = _vector_text()
    stale = sorted(
        {
            value
            for value in HEX_RUN.findall(_doc())
            if value not in vectors and value not in ALLOWED_HEX
        }
    )
    assert not stale, "hex values in protocol.md that no vector holds:\n" + "\n".join(stale)


def test_every_prefixed_checksum_in_the_doc_comes_from_a_vector() -> None:
    vectors = _vector_text()
    # HTTP metadata writes an artifact's hash with the prefix; the manifest has it bare.
    artifacts = {
        f"sha256:{value}" for _, document in _vector_files() for value in _artifact_hashes(document)
    }
    stale = sorted(
        {
            value
            for value in PREFIXED.findall(_doc())
            if value not in vectors and value not in artifacts
        }
    )
    assert not stale, "sha256: checksums in protocol.md that no vector holds:\n" + "\n".join(stale)


def test_allowed_hex_values_are_still_used() -> None:
    doc = _doc()
    unused = sorted(value for value in ALLOWED_HEX if value not in doc)
    assert not unused, f"protocol.md no longer shows these; drop them from ALLOWED_HEX: {unused}"


def test_json_blocks_parse() -> None:
    blocks = [(line, body) for line, lang, body in _fenced_blocks(_doc()) if lang == "json"]
    assert len(blocks) >= 10, "expected the document's JSON examples"
    for line, body in blocks:
        try:
            parse_json(body)
        except CanonicalJSONError as exc:
            pytest.fail(
                f"protocol.md:{line}: ```json block is not JSON ({exc}); "
                "use another fence language if it is not meant to be"
            )


def _error_table(text: str) -> dict[str, int]:
    """``code -> HTTP status`` from the table whose header starts ``| Code | HTTP |``."""
    lines = text.splitlines()
    header = [
        index for index, line in enumerate(lines) if re.match(r"^\|\s*Code\s*\|\s*HTTP\s*\|", line)
    ]
    assert len(header) == 1, "expected exactly one error code table in protocol.md"
    table: dict[str, int] = {}
    # Skip the header and its |---| separator; the table ends at the first non-table line.
    for line in lines[header[0] + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        code = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        assert code is not None, f"error table row without a code: {line!r}"
        assert cells[1].isdigit(), f"error table row without an HTTP status: {line!r}"
        assert code[1] not in table, f"{code[1]} appears twice in the error table"
        table[code[1]] = int(cells[1])
    return table


def test_error_table_matches_http_status() -> None:
    table = _error_table(_doc())
    expected = {code.value: HTTP_STATUS[code] for code in ErrorCode}
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert table == expected
