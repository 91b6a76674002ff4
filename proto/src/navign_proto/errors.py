"""Exceptions raised by navign-proto: one base class, subclasses by cause, carrying fields."""

from __future__ import annotations


class ProtoError(Exception):
    """Base class of every error navign-proto raises."""


class CanonicalJSONError(ProtoError, ValueError):
    """A value has no canonical JSON form (NaN, infinity, an integer beyond 2**53, ...)."""


class KeyFormatError(ProtoError, ValueError):
    """A key is not a well-formed ECDSA P-256 key in a form we accept."""


class SignatureError(ProtoError):
    """A signature could not be verified. Subclasses say why."""


class SignatureMissingError(SignatureError):
    """A header or field that must carry signature material is absent."""

    def __init__(self, what: str) -> None:
        super().__init__(f"missing {what}")
        self.what = what


class SignatureMalformedError(SignatureError):
    """Signature material is present but not in the expected encoding."""


class SignatureInvalidError(SignatureError):
    """The signature does not verify against the key for this exact message."""


class TimestampSkewError(SignatureError):
    """A signed request's timestamp is too far from the verifier's clock."""

    def __init__(self, timestamp: int, now: int, max_skew: int) -> None:
        super().__init__(
            f"request timestamp {timestamp} is {timestamp - now:+d} s from server time "
            f"(allowed ±{max_skew} s)"
        )
        self.timestamp = timestamp
        self.now = now
        self.max_skew = max_skew


class ManifestError(ProtoError):
    """A release manifest or its envelope is malformed or refused. Subclasses say why."""


class ManifestFormatError(ManifestError, ValueError):
    """The manifest or envelope does not have the documented shape."""


class ManifestSignatureError(ManifestError):
    """No signature on the envelope verifies with a trusted release key."""


class ManifestPolicyError(ManifestError):
    """The manifest is authentic but must not be installed here (target, downgrade, expiry)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ArtifactMismatchError(ManifestError):
    """A file or image does not match the size or SHA-256 the manifest declares."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
