"""The shared capability hook: skips locally, fails under NAVIGN_REQUIRE_ALL_TESTS=1."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SUITE = """
import pytest

@pytest.mark.requires("cmd:navign-no-such-program-xyz")
def test_needs_missing_program():
    pass

@pytest.mark.requires("cmd:sh")
def test_needs_present_program():
    pass

def test_skips_for_another_reason():
    pytest.skip("MongoDB URL not configured")

def test_fixture_requires(require_capability):
    require_capability("file:/nonexistent/navign/path")
"""


def _run(pytester: pytest.Pytester, require_all: str | None) -> pytest.RunResult:
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(test_suite=SUITE)
    if require_all is None:
        pytester._monkeypatch.delenv("NAVIGN_REQUIRE_ALL_TESTS", raising=False)
    else:
        pytester._monkeypatch.setenv("NAVIGN_REQUIRE_ALL_TESTS", require_all)
    return pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider")


def test_missing_capability_skips_with_reason(pytester: pytest.Pytester) -> None:
    result = _run(pytester, None)
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["*missing capability: command `navign-no-such-program-xyz`*"])


def test_missing_capability_fails_when_all_tests_required(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "1")
    # Both capability skips fail (the marker's in setup, reported as an error; the fixture's in
    # the call); the unrelated skip stays a skip.
    result.assert_outcomes(passed=1, skipped=1, failed=1, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*NAVIGN_REQUIRE_ALL_TESTS is set*"])


def test_zero_means_not_required(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "0")
    result.assert_outcomes(passed=1, skipped=3)
