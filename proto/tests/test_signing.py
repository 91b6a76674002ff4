from __future__ import annotations

import base64

import pytest

from navign_proto import keys
from navign_proto.errors import (
    SignatureInvalidError,
    SignatureMalformedError,
    SignatureMissingError,
    TimestampSkewError,
)
from navign_proto.signing import (
    MemoryNonceStore,
    canonical_query,
    canonical_request,
    sign_request,
    verify_request,
)

KEY = keys.private_key_from_scalar(0xC0FFEE)
NOW = 1_800_000_000
BODY = b'{"entity_id":"mall-1"}'


def signed() -> dict[str, str]:
    return sign_request(KEY, "POST", "/api/orchestrators/register", "", BODY, timestamp=NOW)


def test_round_trip() -> None:
    headers = sign_request(KEY, "POST", "/api/x", "b=2&a=1", BODY, timestamp=NOW)
    result = verify_request(KEY.public_key(), "post", "/api/x", "a=1&b=2", BODY, headers, now=NOW)
    assert result.timestamp == NOW
    assert result.nonce == headers["X-Nonce"]


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in signed().items()}
    verify_request(
        KEY.public_key(), "POST", "/api/orchestrators/register", "", BODY, headers, now=NOW
    )


@pytest.mark.parametrize(
    ("method", "path", "query", "body"),
    [
        ("PUT", "/api/orchestrators/register", "", BODY),
        ("POST", "/api/orchestrators/register2", "", BODY),
        ("POST", "/api/orchestrators/register", "x=1", BODY),
        ("POST", "/api/orchestrators/register", "", BODY + b" "),
        ("POST", "/api/orchestrators/register", "", b""),
    ],
)
def test_any_change_breaks_the_signature(method: str, path: str, query: str, body: bytes) -> None:
    with pytest.raises(SignatureInvalidError):
        verify_request(KEY.public_key(), method, path, query, body, signed(), now=NOW)


def test_other_key_refused() -> None:
    other = keys.private_key_from_scalar(0xBEEF).public_key()
    with pytest.raises(SignatureInvalidError):
        verify_request(other, "POST", "/api/orchestrators/register", "", BODY, signed(), now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, 10_000])
def test_skew_refused(offset: int) -> None:
    with pytest.raises(TimestampSkewError) as info:
        verify_request(
            KEY.public_key(),
            "POST",
            "/api/orchestrators/register",
            "",
            BODY,
            signed(),
            now=NOW + offset,
        )
    assert info.value.max_skew == 300


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_skew_within_window_accepted(offset: int) -> None:
    verify_request(
        KEY.public_key(),
        "POST",
        "/api/orchestrators/register",
        "",
        BODY,
        signed(),
        now=NOW + offset,
    )


@pytest.mark.parametrize("missing", ["X-Signature", "X-Timestamp", "X-Nonce"])
def test_missing_header(missing: str) -> None:
    headers = signed()
    del headers[missing]
    with pytest.raises(SignatureMissingError):
        verify_request(
            KEY.public_key(), "POST", "/api/orchestrators/register", "", BODY, headers, now=NOW
        )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Signature", "not base64!"),
        ("X-Signature", base64.b64encode(b"\x00" * 63).decode()),
        ("X-Timestamp", "12e3"),
        ("X-Timestamp", "-5"),
        ("X-Nonce", "short"),
        ("X-Nonce", "has space in it 0123456789"),
    ],
)
def test_malformed_headers(name: str, value: str) -> None:
    headers = signed()
    headers[name] = value
    with pytest.raises(SignatureMalformedError):
        verify_request(
            KEY.public_key(), "POST", "/api/orchestrators/register", "", BODY, headers, now=NOW
        )


def test_der_signature_refused() -> None:
    """Only raw r||s is accepted; a DER encoding of a valid signature is malformed."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    headers = signed()
    message = canonical_request(
        "POST", "/api/orchestrators/register", "", NOW, headers["X-Nonce"], BODY
    )
    der = KEY.sign(message, ec.ECDSA(hashes.SHA256()))
    headers["X-Signature"] = base64.b64encode(der).decode()
    with pytest.raises(SignatureMalformedError):
        verify_request(
            KEY.public_key(), "POST", "/api/orchestrators/register", "", BODY, headers, now=NOW
        )


def test_canonical_query_normalises_encoding_and_order() -> None:
    assert canonical_query("b=2&a=x%20y&a=1") == "a=1&a=x%20y&b=2"
    assert canonical_query("a=x+y") == canonical_query("a=x%20y")
    assert canonical_query("id=mall%2Ddemo") == canonical_query("id=mall-demo")
    assert canonical_query("") == ""
    assert canonical_query("flag") == "flag="


def test_canonical_request_layout() -> None:
    text = canonical_request("get", "/p", "", 5, "n" * 16, b"").decode()
    assert text.split("\n") == [
        "NAVIGN-REQUEST-V1",
        "GET",
        "/p",
        "",
        "5",
        "n" * 16,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ]


@pytest.mark.parametrize("path", ["relative", "/a\nb", "/a?b=1"])
def test_bad_path_refused(path: str) -> None:
    with pytest.raises(SignatureMalformedError):
        canonical_request("GET", path, "", 5, "n" * 16, b"")


def test_nonce_store_refuses_replay_until_window_passes() -> None:
    store = MemoryNonceStore(max_skew=300)
    assert store.remember("a" * 16, NOW, now=NOW)
    assert not store.remember("a" * 16, NOW, now=NOW + 599)
    # After 2 * skew no request with that nonce can pass the skew check, so it may go.
    assert store.remember("b" * 16, NOW, now=NOW + 600)
    assert len(store) == 1


def test_nonce_store_full_of_live_nonces_refuses() -> None:
    store = MemoryNonceStore(capacity=2)
    assert store.remember("a" * 16, NOW, now=NOW)
    assert store.remember("b" * 16, NOW, now=NOW)
    assert not store.remember("c" * 16, NOW, now=NOW + 1)
    assert store.remember("c" * 16, NOW, now=NOW + 601)


def test_query_with_non_utf8_escapes_is_refused() -> None:
    """%FF and %FE would both decode to U+FFFD and so share one signature: refuse them."""
    with pytest.raises(SignatureMalformedError):
        canonical_query("a=%FF")
    with pytest.raises(SignatureMalformedError):
        verify_request(KEY.public_key(), "GET", "/p", "a=%FE", b"", signed(), now=NOW)
