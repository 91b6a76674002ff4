"""``navign-admin`` commands for rollouts: assign a release to an entity, watch its progress."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from navign_proto.wire import Priority
from navign_server.admin_cli_http import AdminApi, api_path
from navign_server.admin_cli_input import (
    CommandError,
    fraction,
    positive_int,
    read_json_object,
)
from navign_server.admin_cli_output import Output, age, parse_time, shown
from navign_server.api.rollout import RolloutPolicyInput


def _invalid(exc: ValidationError) -> CommandError:
    problem = exc.errors()[0]
    where = ".".join(str(p) for p in problem["loc"]) or "policy"
    message = str(problem["msg"]).removeprefix("Value error, ")
    return CommandError(f"invalid rollout policy: {where}: {message}")


def rollout_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The policy file (if any) with the flags applied, checked as the server will check it."""
    policy = read_json_object(args.policy, "a rollout policy") if args.policy else {}
    if args.canary:
        number = args.canary.removesuffix("%")
        size = {"percent": float(number)} if args.canary.endswith("%") else {"count": int(number)}
        policy["canary_size"] = size
    if args.batch is not None:
        policy["batch_size"] = args.batch
    if args.failure_threshold is not None:
        policy["failure_threshold"] = args.failure_threshold
    try:
        RolloutPolicyInput.model_validate(policy)
    except ValidationError as exc:
        raise _invalid(exc) from None
    return policy


def _canary(text: str) -> str:
    number = text.removesuffix("%")
    try:
        if text.endswith("%"):
            percent = float(number)
            if not 0 < percent <= 100:
                raise ValueError
        else:
            positive_int(number)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected N beacons or P% (0 < P <= 100)"
        ) from None
    return text


def cmd_assign(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    policy = rollout_policy(args)
    request = {"release_id": args.release, "policy": policy, "priority": args.priority}
    body = api.post(api_path("entities", args.entity, "firmware-assignments"), request).body
    if out.as_json:
        out.json(body)
        return
    out.line(
        f"release {shown(args.release)} assigned to {shown(args.entity)} as "
        f"{shown(body.get('assignment_id'))} (firmware_update event {shown(body.get('seq'))}); "
        f"policy {shown(policy or None)}"
    )


def cmd_rollouts(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    if args.release is not None:
        _rollout_status(api, out, args)
        return
    body = api.get(api_path("entities", args.entity, "firmware-assignments")).body
    if out.as_json:
        out.json(body)
        return
    keys = ("seq", "assignment_id", "release_id", "priority", "created_at", "created_by")
    rows = [[*(a.get(k) for k in keys), a.get("policy") or None] for a in body["assignments"]]
    columns = ["seq", "assignment", "release", "priority", "created", "by", "policy"]
    out.table(columns, rows, title=f"firmware assignments of {shown(args.entity)}")


def _rollout_status(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    path = api_path("entities", args.entity, "firmware-status")
    body = api.get(path, firmware_id=args.release, limit=args.limit).body
    if out.as_json:
        out.json(body)
        return
    counts = body.get("counts", {})
    summary = ", ".join(f"{shown(k)} {shown(v)}" for k, v in sorted(counts.items()))
    out.line(f"release {shown(args.release)} on {shown(args.entity)}: {summary or 'no reports'}")
    rows = [
        [beacon, r.get("status"), r.get("error_code"), r.get("at"), r.get("message")]
        for beacon, r in sorted(body.get("beacons", {}).items())
    ]
    out.table(["beacon", "status", "error", "at", "message"], rows, title="beacons")


def cmd_beacons(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    reply = api.get(api_path("entities", args.entity, "beacon-status"))
    if out.as_json:
        out.json(reply.body)
        return
    now = reply.server_time
    keys = ("beacon_id", "mac", "firmware_version", "app_version", "ota_state", "rssi")
    rows = [
        [*(b.get(k) for k in keys), age(parse_time(b.get("last_seen")), now), b.get("reported_by")]
        for b in reply.body.get("beacons", [])
    ]
    columns = ["beacon", "mac", "firmware", "app", "ota", "rssi", "seen", "gateway"]
    out.table(columns, rows, title=f"beacons of {shown(args.entity)}")


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parents = [common]
    p = commands.add_parser(
        "assign", parents=parents, help="assign a release to an entity (emits firmware_update)"
    )
    p.add_argument("entity", metavar="ENTITY")
    p.add_argument("release", metavar="RELEASE_ID")
    p.add_argument(
        "--canary",
        type=_canary,
        metavar="N|P%",
        help="canary stage: N beacons, or P%% of the beacons",
    )
    p.add_argument("--batch", type=positive_int, help="beacons updated at a time")
    p.add_argument(
        "--failure-threshold", type=fraction, help="halt when this share fails: 5%% or 0.05"
    )
    p.add_argument("--priority", choices=[p.value for p in Priority], default="normal")
    p.add_argument(
        "--policy", type=Path, metavar="FILE.json", help="a rollout policy to start from"
    )
    p.set_defaults(func=cmd_assign)

    p = commands.add_parser(
        "rollouts", parents=parents, help="an entity's firmware assignments, or one's progress"
    )
    p.add_argument("entity", metavar="ENTITY")
    p.add_argument("--release", metavar="RELEASE_ID", help="per-beacon status of this release")
    p.add_argument(
        "--limit", type=positive_int, default=100, help="recent reports (with --release)"
    )
    p.set_defaults(func=cmd_rollouts)

    p = commands.add_parser("beacons", parents=parents, help="beacon status reported by gateways")
    p.add_argument("entity", metavar="ENTITY")
    p.set_defaults(func=cmd_beacons)
