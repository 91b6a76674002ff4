"""Release versions: Semantic Versioning 2.0.0 strings compared by SemVer precedence.

``1.2.3`` < ``1.10.0``; a pre-release sorts before its release (``2.0.0-rc.1`` < ``2.0.0``);
build metadata (``+build.5``) is refused in release versions because SemVer ignores it for
precedence, which would let two different builds claim the same version.
"""

from __future__ import annotations

import semver

MAX_VERSION_LENGTH = 64


class VersionError(ValueError):
    """Not a SemVer 2.0.0 version we accept."""


def parse_version(text: str) -> semver.Version:
    if len(text) > MAX_VERSION_LENGTH:
        raise VersionError(f"version longer than {MAX_VERSION_LENGTH} characters")
    try:
        version = semver.Version.parse(text)
    except (ValueError, TypeError) as exc:
        raise VersionError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)") from exc
    if version.build is not None:
        raise VersionError(f"{text!r}: build metadata (+...) is not allowed in release versions")
    return version


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` precedes, equals or follows ``b``."""
    return int(parse_version(a).compare(parse_version(b)))


def validate_version(text: str) -> str:
    parse_version(text)
    return text
