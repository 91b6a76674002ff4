"""``navign-admin`` commands for firmware releases: publish (build, sign, upload), list, withdraw.

``release publish`` builds the manifest from the bytes it uploads (so the manifest, the signature
and the artifact cannot disagree), signs it locally with the release key(s) as
``navign-proto release sign`` does, and uploads the envelope and then the artifact. The artifact
of an app release is its files' bytes concatenated in manifest order; of an image release, the
image.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from navign_proto import keys
from navign_proto.errors import KeyFormatError, ManifestFormatError
from navign_proto.mall import Chip
from navign_proto.manifest import ReleaseBuild, collect_app, collect_image, sign_manifest
from navign_proto.manifest import build_release as build
from navign_server.admin_cli_http import AdminApi, AdminApiError, ServerError, api_path
from navign_server.admin_cli_input import (
    CommandError,
    positive_int,
    read_file,
)
from navign_server.admin_cli_output import Output, shown

CHANNELS: Final = ("stable", "beta", "canary")


def _invalid(exc: ValidationError, what: str) -> CommandError:
    problem = exc.errors()[0]
    where = ".".join(str(p) for p in problem["loc"]) or what
    message = str(problem["msg"]).removeprefix("Value error, ")
    return CommandError(f"invalid {what}: {where}: {message}")


def build_release(args: argparse.Namespace, now: datetime) -> ReleaseBuild:
    created = now.astimezone(UTC).replace(microsecond=0)
    try:
        return build(
            name=args.name,
            version=args.version,
            target=args.target,
            secure_version=args.secure_version,
            min_previous_version=args.min_previous_version,
            created_at=created,
            expires_at=created + timedelta(days=args.expires_in_days)
            if args.expires_in_days
            else None,
            app_dir=args.app_dir,
            image=args.image,
        )
    except ManifestFormatError as exc:
        raise CommandError(str(exc)) from None
    except ValidationError as exc:
        raise _invalid(exc, "release") from None


def _signers(paths: list[Path]) -> list[ec.EllipticCurvePrivateKey]:
    signers = []
    for path in paths:
        try:
            signers.append(keys.load_private_key_pem(read_file(path, limit=16 * 1024)))
        except KeyFormatError as exc:
            raise CommandError(f"{path}: {exc}") from None
    return signers


def _release_id(body: Any) -> str:
    for key in ("release_id", "id", "firmware_id"):
        if isinstance(body, dict) and isinstance(body.get(key), str):
            return str(body[key])
    raise CommandError("the server did not say which id it gave the release")


def cmd_publish(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    signers = _signers(args.key)
    build = build_release(args, datetime.now(UTC))
    envelope = sign_manifest(build.manifest, signers)
    request = {
        "envelope": envelope,
        "channel": args.channel,
        "device_type": args.device_type,
        "changelog": args.changelog,
        "compatible_hardware": args.compatible_hardware,
    }
    created = api.post(api_path("releases"), request).body
    release_id = _release_id(created)
    uploaded = upload_artifact(api, release_id, build.artifact)
    if out.as_json:
        out.json({"release": created, "artifact": uploaded})
        return
    manifest = build.manifest
    out.line(
        f"published {manifest.name} {manifest.version} for {manifest.target} "
        f"({manifest.kind}, {len(build.artifact)} bytes) on {args.channel} "
        f"as release {shown(release_id)}"
    )


def upload_artifact(api: AdminApi, release_id: str, artifact: bytes) -> Any:
    try:
        return api.request(
            "PUT",
            api_path("releases", release_id, "artifact"),
            data=artifact,
            content_type="application/octet-stream",
        ).body
    except ServerError as exc:
        message = f"release {release_id} is created but its artifact was refused: {exc.message}"
        raise ServerError(
            exc.status, exc.code, message, request_id=exc.request_id, envelope=exc.envelope
        ) from None
    except AdminApiError as exc:
        raise CommandError(
            f"release {release_id} is created but its artifact is not uploaded ({exc}); "
            f"retry with `navign-admin release upload {release_id}`"
        ) from None


def cmd_upload(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    """Upload (again) the artifact of a created release, e.g. after a dropped connection."""
    try:
        if args.app_dir is not None:
            _, artifact = collect_app(args.app_dir)
        else:
            _, artifact = collect_image(args.image)
    except ManifestFormatError as exc:
        raise CommandError(str(exc)) from None
    body = upload_artifact(api, args.release, artifact)
    if out.as_json:
        out.json(body)
        return
    out.line(f"artifact of release {shown(args.release)} uploaded ({len(artifact)} bytes)")


def cmd_releases(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    body = api.get(
        api_path("releases"),
        target=args.target,
        channel=args.channel,
        device_type=args.device_type,
    ).body
    if out.as_json:
        out.json(body)
        return
    rows = [
        [
            _release_id(r),
            r.get("name"),
            r.get("version"),
            r.get("target"),
            r.get("device_type"),
            r.get("channel"),
            r.get("kind"),
            r.get("status"),
            r.get("artifact_size", r.get("size_bytes")),
            r.get("created_at"),
        ]
        for r in body.get("releases", [])
    ]
    columns = ["id", "name", "version", "target", "device", "channel", "kind", "status"]
    out.table([*columns, "bytes", "created"], rows, title="releases")


def cmd_withdraw(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    body = api.post(api_path("releases", args.release, "withdraw")).body
    if out.as_json:
        out.json(body)
        return
    out.line(f"release {shown(args.release)}: {shown(body.get('status'))}")


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parents = [common]
    release = commands.add_parser("release", help="firmware releases")
    sub = release.add_subparsers(dest="release_command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "publish",
        parents=parents,
        help="build, sign (locally) and upload a release",
        description=(__doc__ or "").split("\n\n")[1],
    )
    p.add_argument(
        "--key", type=Path, action="append", required=True, help="release private key (PEM)"
    )
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True, help="SemVer, e.g. 1.4.0")
    p.add_argument("--target", required=True, choices=[c.value for c in Chip])
    p.add_argument("--secure-version", type=int, required=True)
    p.add_argument("--min-previous-version")
    p.add_argument("--expires-in-days", type=positive_int)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--app-dir", type=Path, help="directory of the app bundle")
    source.add_argument("--image", type=Path, help="full firmware image file")
    p.add_argument("--channel", required=True, choices=CHANNELS)
    p.add_argument("--device-type", default="beacon")
    p.add_argument("--changelog", action="append", default=[], help="one entry (repeat)")
    p.add_argument("--compatible-hardware", action="append", default=[], help="repeat")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "upload",
        parents=parents,
        help="upload the artifact of a created release again (after a failed publish)",
    )
    p.add_argument("release", metavar="RELEASE_ID")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--app-dir", type=Path, help="directory of the app bundle")
    source.add_argument("--image", type=Path, help="full firmware image file")
    p.set_defaults(func=cmd_upload)

    p = commands.add_parser("releases", parents=parents, help="list releases")
    p.add_argument("--target", choices=[c.value for c in Chip])
    p.add_argument("--channel", choices=CHANNELS)
    p.add_argument("--device-type")
    p.set_defaults(func=cmd_releases)

    p = sub.add_parser("withdraw", parents=parents, help="stop offering a release")
    p.add_argument("release", metavar="RELEASE_ID")
    p.set_defaults(func=cmd_withdraw)
