"""``navign-proto``: release keys and signed manifests, mall checksums, key inspection.

Operators use ``navign-proto release ...`` on the machine that holds the release key (ideally
offline) to sign the releases that beacons will accept. Every command prints one readable line
and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from navign_proto import keys
from navign_proto.canonical import canonical_json, parse_json
from navign_proto.checksums import COLLECTIONS, MallChecksums
from navign_proto.errors import ProtoError
from navign_proto.mall import MallData
from navign_proto.manifest import (
    ReleaseManifest,
    add_signatures,
    build_release,
    check_installable,
    envelope_bytes,
    open_envelope,
    sign_manifest,
    verify_bundle,
)

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A failure to report as one line and exit 1."""


def _read(path: Path, limit: int = 64 * 1024 * 1024) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise CommandError(f"{path}: larger than {limit} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from exc


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CommandError(f"{path}: {exc.strerror or exc}") from exc


def _private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return keys.load_private_key_pem(_read(path))


def _public_key(path: Path) -> ec.EllipticCurvePublicKey:
    data = _read(path)
    if b"PRIVATE KEY" in data:
        return keys.load_private_key_pem(data).public_key()
    return keys.load_public_key(data)


def cmd_keygen(args: argparse.Namespace) -> None:
    out: Path = args.out
    pub = out.with_name(out.name + ".pub")
    if out.exists() or pub.exists():
        raise CommandError(f"{out} or {pub} already exists; refusing to overwrite a key")
    key = keys.generate_private_key()
    try:
        keys.write_private_key(out, key)
    except OSError as exc:
        raise CommandError(f"{out}: {exc.strerror or exc}") from exc
    _write_atomic(pub, keys.public_key_to_pem(key.public_key()).encode("ascii"))
    print(f"wrote {out} (mode 0600) and {pub}; keyid {keys.key_id(key.public_key())}")


def cmd_show_key(args: argparse.Namespace) -> None:
    public = _public_key(args.key)
    print(f"keyid       {keys.key_id(public)}")
    print(f"fingerprint {keys.fingerprint(public)}")
    print(f"point       {keys.public_key_to_point(public).hex()}")
    print(keys.public_key_to_pem(public), end="")


def cmd_manifest(args: argparse.Namespace) -> None:
    created = datetime.now(UTC).replace(microsecond=0)
    build = build_release(
        name=args.name,
        version=args.version,
        target=args.target,
        secure_version=args.secure_version,
        min_previous_version=args.min_previous_version,
        created_at=created,
        expires_at=created + timedelta(days=args.expires_in_days) if args.expires_in_days else None,
        app_dir=args.app_dir,
        image=args.image,
    )
    manifest = build.manifest
    _write_atomic(args.out, manifest.to_bytes())
    print(
        f"wrote {args.out}: {manifest.name} {manifest.version} for {manifest.target}, "
        f"{manifest.kind}, {manifest.total_size} bytes"
    )


def cmd_sign(args: argparse.Namespace) -> None:
    signers = [_private_key(path) for path in args.key]
    document = parse_json(_read(args.manifest))
    if isinstance(document, dict) and "payloadType" in document:
        envelope = add_signatures(document, signers)  # another signature for key rotation
    else:
        envelope = sign_manifest(ReleaseManifest.model_validate(document), signers)
    _write_atomic(args.out, envelope_bytes(envelope))
    print(f"wrote {args.out} with {len(envelope['signatures'])} signature(s)")


def cmd_verify(args: argparse.Namespace) -> None:
    trusted = [_public_key(path) for path in args.trust]
    verified = open_envelope(_read(args.envelope), trusted, threshold=args.threshold)
    manifest = verified.manifest
    if args.current_version is not None:
        check_installable(
            manifest,
            target=args.target or manifest.target,
            current_version=args.current_version,
            current_secure_version=args.current_secure_version,
        )
    if args.artifact is not None:
        verify_bundle(manifest, args.artifact)
    checked = " and its artifact" if args.artifact is not None else ""
    print(
        f"OK: {manifest.name} {manifest.version} ({manifest.kind}, {manifest.target}, "
        f"secure_version {manifest.secure_version}) signed by "
        f"{', '.join(k[:16] for k in verified.signed_by)}; manifest sha256 "
        f"{verified.manifest_sha256}{checked} verified"
    )


def _print_checksums(data: dict[str, Any], as_json: bool) -> None:
    checksums = MallChecksums.of(data).checksums()
    if as_json:
        print(canonical_json(checksums).decode())
        return
    for name in (*COLLECTIONS, "global"):
        count = f"{len(data.get(name, [])):>5} docs" if name != "global" else " " * 10
        print(f"{name:<12}{count}  {checksums[name]}")


def cmd_mall_check(args: argparse.Namespace) -> None:
    """Validate a mall file (entity, areas, beacons, merchants, connections) and checksum it."""
    mall = MallData.model_validate_json(_read(args.file))
    if not args.json:
        print(f"{args.file}: valid mall {mall.entity.id!r} ({mall.entity.name})")
    _print_checksums(mall.documents(), args.json)


def cmd_checksum(args: argparse.Namespace) -> None:
    """Checksum documents as served (a sync/full response, or its ``data`` object)."""
    document = parse_json(_read(args.file))
    if not isinstance(document, dict):
        raise CommandError(f"{args.file}: expected an object with {', '.join(COLLECTIONS)}")
    data = document.get("data", document)
    for name in COLLECTIONS:
        items = data.get(name, [])
        if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
            raise CommandError(f"{args.file}: {name} must be a list of objects")
    _print_checksums(data, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="navign-proto", description=__doc__.split("\n\n")[0])
    groups = parser.add_subparsers(dest="group", required=True)

    release = groups.add_parser("release", help="release keys and signed manifests")
    rel = release.add_subparsers(dest="command", required=True)

    p = rel.add_parser("keygen", help="create a release key pair (KEY and KEY.pub)")
    p.add_argument("--out", type=Path, required=True, help="private key path (mode 0600)")
    p.set_defaults(func=cmd_keygen)

    p = rel.add_parser("manifest", help="describe an app bundle or image as an unsigned manifest")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True, help="SemVer, e.g. 1.4.0")
    p.add_argument("--target", required=True, choices=["esp32", "esp32c3", "esp32c6", "esp32s3"])
    p.add_argument("--secure-version", type=int, required=True)
    p.add_argument("--min-previous-version")
    p.add_argument("--expires-in-days", type=int, default=0)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--app-dir", type=Path, help="directory of the app bundle")
    source.add_argument("--image", type=Path, help="full firmware image file")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_manifest)

    p = rel.add_parser("sign", help="sign a manifest (or add a signature to an envelope)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--key", type=Path, action="append", required=True, help="release private key")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_sign)

    p = rel.add_parser("verify", help="verify an envelope, and optionally its artifact")
    p.add_argument("envelope", type=Path)
    p.add_argument("--trust", type=Path, action="append", required=True, help="release public key")
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--artifact", type=Path, help="app directory or image file to check")
    p.add_argument("--target")
    p.add_argument("--current-version", help="check installability against this version")
    p.add_argument("--current-secure-version", type=int, default=0)
    p.set_defaults(func=cmd_verify)

    key = groups.add_parser("key", help="inspect keys")
    kc = key.add_subparsers(dest="command", required=True)
    p = kc.add_parser("show", help="key id, fingerprint and public PEM of a key file")
    p.add_argument("key", type=Path)
    p.set_defaults(func=cmd_show_key)

    mall = groups.add_parser("mall", help="mall data")
    mc = mall.add_subparsers(dest="command", required=True)
    p = mc.add_parser("check", help="validate a mall file and print its checksums")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print only the checksums, as JSON")
    p.set_defaults(func=cmd_mall_check)
    p = mc.add_parser("checksum", help="checksums of documents as served by sync (no validation)")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_checksum)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        print(f"navign-proto: invalid {where or 'input'}: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except (CommandError, ProtoError, ValueError) as exc:
        print(f"navign-proto: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
