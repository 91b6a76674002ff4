"""Shared pytest hooks for every test suite in the repository.

System capabilities
-------------------
Some tests need what a newcomer's laptop may lack: root, network namespaces, qemu, mmdebstrap.
Such a test declares it with ``@pytest.mark.requires("root", "cmd:qemu-system-aarch64")``, or skips
itself with a reason starting with ``missing capability:`` (see :func:`skip_missing`).

* Normally the test is skipped, and pytest's summary shows the reason.
* With ``NAVIGN_REQUIRE_ALL_TESTS=1`` (set by ``.ci/run``) the same skip is turned into a failure,
  so CI can never pass while silently skipping the tests that need the machine it was given.

Other skips (``pytest.skip("MongoDB not configured")``) are not affected.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

MISSING_PREFIX = "missing capability:"
REQUIRE_ALL_ENV = "NAVIGN_REQUIRE_ALL_TESTS"


def _require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0", "false", "no")


def _have_root() -> str | None:
    return None if os.geteuid() == 0 else "root (run as root, e.g. in CI)"


def _have_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces (need root)"
    if shutil.which("ip") is None:
        return "network namespaces (`ip` from iproute2 is not installed)"
    return None


def _have_kvm() -> str | None:
    return None if os.access("/dev/kvm", os.R_OK | os.W_OK) else "KVM (/dev/kvm not usable)"


def _have_command(name: str) -> str | None:
    return None if shutil.which(name) else f"command `{name}` (not on PATH)"


def _have_file(path: str) -> str | None:
    return None if Path(path).exists() else f"file {path}"


_CHECKS: dict[str, Callable[[], str | None]] = {
    "root": _have_root,
    "netns": _have_netns,
    "kvm": _have_kvm,
}


def missing_capability(capability: str) -> str | None:
    """Return a description of what is missing for ``capability``, or None when it is present.

    Capabilities: ``root``, ``netns``, ``kvm``, ``cmd:<program>``, ``file:<path>``.
    """
    if capability.startswith("cmd:"):
        return _have_command(capability[4:])
    if capability.startswith("file:"):
        return _have_file(capability[5:])
    check = _CHECKS.get(capability)
    if check is None:
        raise ValueError(f"unknown capability {capability!r} in @pytest.mark.requires")
    return check()


def skip_missing(what: str) -> None:
    """Skip the running test because a system capability is missing (a failure in CI)."""
    pytest.skip(f"{MISSING_PREFIX} {what}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*capabilities): system capabilities the test needs "
        "(root, netns, kvm, cmd:<program>, file:<path>); a missing one skips the test, "
        f"or fails it when {REQUIRE_ALL_ENV}=1",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="requires"):
        for capability in marker.args:
            missing = missing_capability(str(capability))
            if missing is not None:
                skip_missing(missing)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and _require_all() and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if reason.removeprefix("Skipped: ").startswith(MISSING_PREFIX):
            report.outcome = "failed"
            report.longrepr = (
                f"{reason}\n{REQUIRE_ALL_ENV} is set: a test that needs a system capability "
                "must run here, not skip."
            )
    return report


@pytest.fixture
def require_capability() -> Callable[[str], None]:
    """Call with a capability name inside a test to skip (or fail in CI) when it is missing."""

    def require(capability: str) -> None:
        missing = missing_capability(capability)
        if missing is not None:
            skip_missing(missing)

    return require
