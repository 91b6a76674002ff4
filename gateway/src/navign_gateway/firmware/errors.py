"""The firmware cache's exceptions: one base, :class:`FirmwareCacheError`, and a subclass per
cause, each carrying the ``code`` a status report sends to the server.

Callers branch on the type: a rejected release is not retried like a full disk, and a release
that does not fit the budget is not downloaded at all.
"""

from __future__ import annotations


class FirmwareCacheError(Exception):
    """Base of the cache's errors. ``code`` is what a status report carries."""

    code = "cache_error"

    def __init__(self, message: str, firmware_id: str | None = None) -> None:
        super().__init__(message)
        self.firmware_id = firmware_id


class FirmwareRejected(FirmwareCacheError):  # noqa: N818 - the domain's word for it
    """The release failed verification (§6.5); nothing of it was kept. ``reason``:
    ``envelope_malformed``, ``signature_invalid``, ``metadata_mismatch``, ``expired``,
    ``size_mismatch`` or ``sha256_mismatch``; ``part`` names the failing file for the last two."""

    def __init__(
        self, firmware_id: str, reason: str, message: str, part: str | None = None
    ) -> None:
        super().__init__(f"release {firmware_id} rejected ({reason}): {message}", firmware_id)
        self.reason = reason
        self.part = part
        self.code = reason


class CacheBudgetError(FirmwareCacheError):
    """The release does not fit: larger than the whole budget, or pinned releases fill it."""

    code = "cache_budget"

    def __init__(self, firmware_id: str, message: str, size: int, budget: int) -> None:
        super().__init__(f"release {firmware_id}: {message}", firmware_id)
        self.size = size
        self.budget = budget


class DiskFullError(FirmwareCacheError):
    """The file system is full (ENOSPC or EDQUOT); the partial file was removed."""

    code = "disk_full"


class NotCachedError(FirmwareCacheError, KeyError):
    """The release is not in the cache (pin, unpin)."""

    code = "not_cached"

    def __str__(self) -> str:
        return str(self.args[0])
