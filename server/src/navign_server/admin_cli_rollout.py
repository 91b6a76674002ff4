"""``navign-admin`` commands for rollouts: assign a release to an entity, watch its progress as
the gateways report it, and pause, resume, abort or approve a rollout (heartbeat commands)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from navign_proto.wire import Priority, RolloutState
from navign_server.admin_cli_http import AdminApi, ServerError, api_path
from navign_server.admin_cli_input import (
    CommandError,
    fraction,
    positive_int,
    read_json_object,
)
from navign_server.admin_cli_output import Output, age, one_line, parse_time, shown
from navign_server.api.rollout import RolloutPolicyInput

_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
REASON_MAX: Final = 1000
#: Seconds a rollout command waits for its gateway's heartbeat (the server allows up to 7 days).
COMMAND_TTL_DEFAULT: Final = 86_400


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
    # The rollouts first: an unknown entity is refused there (404) before anything is printed.
    path = api_path("entities", args.entity, "rollouts")
    reply = api.get(path, state=args.state, limit=args.limit)
    reported: list[dict[str, Any]] = reply.body["rollouts"]
    body = api.get(api_path("entities", args.entity, "firmware-assignments")).body
    if out.as_json:
        out.json({**body, "rollouts": reported})
        return
    keys = ("seq", "assignment_id", "release_id", "priority", "created_at", "created_by")
    rows = [[*(a.get(k) for k in keys), a.get("policy") or None] for a in body["assignments"]]
    columns = ["seq", "assignment", "release", "priority", "created", "by", "policy"]
    out.table(columns, rows, title=f"firmware assignments of {shown(args.entity)}")
    out.line()
    now = reply.server_time
    rows = [
        [
            r.get("rollout_id"),
            r.get("firmware_id"),
            r.get("state"),
            f"{shown(r.get('current_wave'))}/{shown(r.get('wave_count'))}",
            _progress(r.get("counts")),
            one_line(str(r.get("state_reason") or ""), 120) or None,
            age(parse_time(r.get("at")), now),
            r.get("reported_by"),
        ]
        for r in reported
    ]
    columns = ["rollout", "release", "state", "wave", "confirmed/failed/rolled_back", "reason"]
    out.table(
        [*columns, "updated", "gateway"],
        rows,
        title=f"rollouts reported by the gateways of {shown(args.entity)}",
    )


def _progress(counts: Any) -> str:
    """``confirmed/failed/rolled_back of total``."""
    if not isinstance(counts, dict):
        return "-"
    done = "/".join(shown(counts.get(k)) for k in ("confirmed", "failed", "rolled_back"))
    return f"{done} of {shown(counts.get('total'))}"


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


def _rollout_id(text: str) -> str:
    if not _ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rollout id (1-64 characters of letters, digits and ._:-)"
        )
    return text


def _reason(text: str) -> str:
    if len(text) > REASON_MAX:
        raise argparse.ArgumentTypeError(
            f"--reason is {len(text)} characters, at most {REASON_MAX}"
        )
    return text


def _command_ttl(text: str) -> int:
    value = positive_int(text)
    if not 60 <= value <= 7 * 86_400:
        raise argparse.ArgumentTypeError("--ttl must be 60 to 604800 seconds (at most 7 days)")
    return value


def cmd_rollout_control(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    """Queue ``rollout_<action>`` for every active gateway of the entity."""
    command_type = f"rollout_{args.action}"
    params: dict[str, Any] = {"rollout_id": args.rollout, "reason": args.reason}
    if args.action == "approve":
        params["wave"] = args.wave
    # An unknown entity is refused here (404), before anything is queued.
    reported = api.get(api_path("entities", args.entity, "rollouts"), limit=1000).body
    known = any(r.get("rollout_id") == args.rollout for r in reported["rollouts"])
    listed = api.get(api_path("orchestrators"), entity_id=args.entity).body["orchestrators"]
    gateways = [g for g in listed if g.get("entity_id") == args.entity]
    active = [str(g["orchestrator_id"]) for g in gateways if g.get("status") == "active"]
    skipped = [
        {"orchestrator_id": g.get("orchestrator_id"), "status": g.get("status")}
        for g in gateways
        if g.get("status") != "active"
    ]
    if not active:
        raise CommandError(
            f"entity {shown(args.entity)} has no active gateway: {command_type} was not queued"
        )
    request = {"type": command_type, "params": params, "ttl_seconds": args.ttl}
    queued: list[dict[str, Any]] = []
    for orchestrator_id in active:
        path = api_path("orchestrators", args.entity, orchestrator_id, "commands")
        try:
            body = api.post(path, request).body
        except ServerError as exc:
            if not queued:
                raise
            sent = ", ".join(shown(q["orchestrator_id"]) for q in queued)
            raise CommandError(
                f"{exc} (gateway {shown(orchestrator_id)}; already queued for {sent})"
            ) from None
        queued.append(
            {
                "orchestrator_id": orchestrator_id,
                "id": body.get("id"),
                "expires_at": body.get("expires_at"),
            }
        )
    if out.as_json:
        out.json(
            {
                "entity_id": args.entity,
                "type": command_type,
                "params": params,
                "reported": known,
                "queued": queued,
                "skipped": skipped,
            }
        )
        return
    out.line(
        f"{command_type} of rollout {shown(args.rollout)} queued for {len(queued)} "
        f"gateway{'s' if len(queued) != 1 else ''} of {shown(args.entity)}, "
        "delivered with their next heartbeat:"
    )
    for q in queued:
        out.line(
            f"  {shown(q['orchestrator_id'])}  {shown(q['id'])}  expires {shown(q['expires_at'])}"
        )
    for g in skipped:
        out.line(f"not sent to {shown(g['orchestrator_id'])}: {shown(g['status'])}")
    if not known:
        out.line(f"note: no gateway has reported rollout {shown(args.rollout)} yet")


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
        "--state", choices=[s.value for s in RolloutState], help="only rollouts in this state"
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        default=100,
        help="at most this many rollouts, or recent reports with --release (at most 1000)",
    )
    p.set_defaults(func=cmd_rollouts)

    rollout = commands.add_parser(
        "rollout", help="pause, resume, abort or approve a rollout on the entity's gateways"
    )
    sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    for action, text in (
        ("pause", "pause a running or holding rollout"),
        ("resume", "resume a paused or halted rollout"),
        ("abort", "abort a rollout (beacons already updating finish)"),
        ("approve", "let a rollout held for approval start its next wave"),
    ):
        p = sub.add_parser(action, parents=parents, help=text)
        p.add_argument("entity", metavar="ENTITY")
        p.add_argument(
            "rollout",
            type=_rollout_id,
            metavar="ROLLOUT_ID",
            help="the assignment id (fwa-...) or the gateway's ro-<seq>",
        )
        if action == "approve":
            p.add_argument(
                "--wave",
                type=positive_int,
                required=True,
                metavar="N",
                help="the wave to start (the one after the current wave)",
            )
        p.add_argument(
            "--reason",
            type=_reason,
            default="",
            help="why: audit-logged; a paused or aborted rollout reports it",
        )
        p.add_argument(
            "--ttl",
            type=_command_ttl,
            default=COMMAND_TTL_DEFAULT,
            help=f"seconds the command waits for a heartbeat (default {COMMAND_TTL_DEFAULT})",
        )
        p.set_defaults(func=cmd_rollout_control, action=action)

    p = commands.add_parser("beacons", parents=parents, help="beacon status reported by gateways")
    p.add_argument("entity", metavar="ENTITY")
    p.set_defaults(func=cmd_beacons)
