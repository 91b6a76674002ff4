"""``navign.semver`` on the real MicroPython interpreter: ``proto/vectors/versions.json`` (read by
MicroPython from the repository) and more forms, each compared with ``navign_proto.versions``
(the ``semver`` package), the reference the server and the gateway use."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Final

import pytest

from navign_firmware import unix
from navign_proto.versions import VersionError, compare_versions, parse_version

VECTORS: Final = Path(__file__).resolve().parents[3] / "proto" / "vectors"

#: Forms beyond the vectors, accepted and refused; what each must give is asked of the reference.
EXTRA: Final = [
    "0.0.0",
    "0.0.1",
    "1.2.3",
    "1.2.3-0",
    "1.2.3-0a",
    "1.2.3-00a",
    "1.2.3-a-b",
    "1.2.3--",
    "1.2.3-rc-1",
    "1.2.3-RC.1",
    "1.2.3-rc.1",
    "1.2.3-rc.01",
    "1.2.3-rc.1.2",
    "1.2.3-1.2",
    "1.2.3-alpha",
    "1.2.3-Alpha",
    "1.2.3-x.7.z.92",
    "99999999999999999999.0.0",
    "1." + "1" * 60 + ".0",
    "1." + "1" * 61 + ".0",
    "1.2.3-" + "a" * 58,
    "1.2.3-" + "a" * 59,
    "",
    "1",
    "1.2.",
    ".1.2",
    "1..2",
    "1.2.3.",
    "-1.2.3",
    "1.-2.3",
    "1.2.3-",
    "1.2.3-.",
    "1.2.3-a.",
    "1.2.3-.a",
    "1.2.3-a..b",
    "1.2.3-a+",
    "1.2.3+",
    "1.2.3-a_b",
    "1.2.3-a b",
    "1.2.3 ",
    "1.2.3\n",
    "\t1.2.3",
    "1.2.3-\u00e9",
    "\u0661.2.3",
    "\uff11.2.3",
    "1.2.3-\u0661",
    "00.1.2",
    "1.02.3",
    "1.2.03",
    "v1.2.3",
    "V1.2.3",
    "1.2.3-01",
    "1.2.3-rc.00",
    "a.b.c",
    "0x1.2.3",
    "1e3.0.0",
    "+1.2.3",
]

SCRIPT: Final = """
import json
from navign import semver
V = json.load(open(%r))
asc = V["ascending"]
print(json.dumps(["ascending", [[semver.compare(a, b) for b in asc] for a in asc]]))
def refused(v):
    try:
        semver.parse(v)
    except ValueError:
        return True
    return False
print(json.dumps(["rejected", [refused(v) for v in V["rejected"]]]))
extra = json.load(open(%r))
out = []
for v in extra:
    try:
        out.append(list(semver.triple(v)))
    except ValueError:
        out.append(None)
print(json.dumps(["extra", out]))
ok = [v for v, t in zip(extra, out) if t is not None]
print(json.dumps(["pairs", [[semver.compare(a, b) for b in ok] for a in ok]]))
bad = []
for v in (None, 1, b"1.2.3", ["1.2.3"]):
    try:
        semver.parse(v)
        bad.append("accepted")
    except ValueError:
        bad.append("ValueError")
print(json.dumps(["types", bad]))
print(json.dumps(["parse", [list(semver.parse("1.10.0-rc.2.x-y")), list(semver.parse("2.0.0"))]]))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    extra = tmp_path_factory.mktemp("semver") / "extra.json"
    extra.write_text(json.dumps(EXTRA))
    result = unix.run(SCRIPT % (str(VECTORS / "versions.json"), str(extra)))
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {name: value for name, value in lines}


def _reference(version: str) -> list[Any] | None:
    try:
        v = parse_version(version)
    except VersionError:
        return None
    return [v.major, v.minor, v.patch, v.prerelease is not None]


def test_vector_sequence_is_ascending(results: dict[str, Any]) -> None:
    ascending = json.loads((VECTORS / "versions.json").read_text())["ascending"]
    expected = [[(i > j) - (i < j) for j in range(len(ascending))] for i in range(len(ascending))]
    assert results["ascending"] == expected


def test_vector_rejected_forms_are_refused(results: dict[str, Any]) -> None:
    rejected = json.loads((VECTORS / "versions.json").read_text())["rejected"]
    assert len(rejected) >= 8
    assert results["rejected"] == [True] * len(rejected)


def test_extra_forms_match_the_reference(results: dict[str, Any]) -> None:
    expected = [_reference(v) for v in EXTRA]
    # Both outcomes are exercised.
    assert sum(e is None for e in expected) >= 30
    assert sum(e is not None for e in expected) >= 15
    assert dict(zip(EXTRA, results["extra"], strict=True)) == dict(
        zip(EXTRA, expected, strict=True)
    )


def test_extra_precedence_matches_the_reference(results: dict[str, Any]) -> None:
    accepted = [v for v in EXTRA if _reference(v) is not None]
    expected = [[compare_versions(a, b) for b in accepted] for a in accepted]
    assert results["pairs"] == expected
    # Not all equal: the comparison is exercised in both directions.
    flat = list(itertools.chain.from_iterable(expected))
    assert flat.count(-1) == flat.count(1) > 100


def test_non_strings_are_refused_with_value_error(results: dict[str, Any]) -> None:
    assert results["types"] == ["ValueError"] * 4


def test_parse_returns_numbers_and_identifiers(results: dict[str, Any]) -> None:
    assert results["parse"] == [[1, 10, 0, ["rc", 2, "x-y"]], [2, 0, 0, []]]
