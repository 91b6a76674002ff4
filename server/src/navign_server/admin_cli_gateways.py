"""``navign-admin`` commands for gateways: enrollment, keys, approval, commands; the audit log."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from navign_proto import keys
from navign_proto.errors import KeyFormatError
from navign_server.admin_cli_http import AdminApi, api_path
from navign_server.admin_cli_input import CommandError, param, positive_int, read_file
from navign_server.admin_cli_output import Output, age, parse_time, shown

#: A gateway is offline after this many missed heartbeat intervals (as the server judges it).
MISSED_HEARTBEATS_OFFLINE: Final = 3
GATEWAY_CONFIG: Final = "/etc/navign/gateway.toml"


def _ttl(text: str) -> int:
    value = positive_int(text)
    if not 60 <= value <= 86_400:
        raise argparse.ArgumentTypeError("--ttl must be 60 to 86400 seconds (at most 24 h)")
    return value


def _online(gateway: dict[str, Any], now: datetime) -> bool:
    last = parse_time(gateway.get("last_heartbeat_at"))
    interval = gateway.get("heartbeat_interval")
    if last is None or not isinstance(interval, int | float):
        return False
    return now - last <= timedelta(seconds=MISSED_HEARTBEATS_OFFLINE * interval)


def cmd_enroll(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    request = {
        "entity_id": args.entity,
        "orchestrator_id": args.orchestrator,
        "ttl_seconds": args.ttl,
    }
    body = api.post(api_path("enrollment-tokens"), request).body
    if out.as_json:
        out.json(body)
        return
    token = str(body["token"])
    out.line(
        f"enrollment token for gateway {shown(body.get('orchestrator_id'))} of "
        f"{shown(body.get('entity_id'))}: single use, expires {shown(body.get('expires_at'))}"
    )
    out.line(f"in the gateway's {GATEWAY_CONFIG} (wiped there after the first registration):")
    out.line(f"  server_url = {json.dumps(api.base_url)}")
    out.line(f"  entity_id = {json.dumps(args.entity)}")
    out.line(f"  orchestrator_id = {json.dumps(args.orchestrator)}")
    out.line('  enrollment_token = "<the token on the next line>"')
    out.line(shown(token))  # last line: `... | tail -n 1` captures it


def cmd_prekey(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    data = read_file(args.key_file, limit=16 * 1024)
    if b"PRIVATE KEY" in data:
        raise CommandError(
            f"{args.key_file} holds a private key: give the gateway's public key "
            "(navign-gateway show-key prints it); a private key never leaves the gateway"
        )
    try:
        public = keys.load_public_key(data)
    except KeyFormatError as exc:
        raise CommandError(f"{args.key_file}: {exc}") from None
    request = {
        "entity_id": args.entity,
        "orchestrator_id": args.orchestrator,
        "public_key": keys.public_key_to_pem(public),
    }
    body = api.post(api_path("preregistered-keys"), request).body
    if out.as_json:
        out.json(body)
        return
    out.line(
        f"key {shown(body.get('fingerprint'))} pre-registered for gateway "
        f"{shown(args.orchestrator)} of {shown(args.entity)}; it may now register without a token"
    )


def cmd_gateways(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    reply = api.get(api_path("orchestrators"), entity_id=args.entity)
    gateways: list[dict[str, Any]] = reply.body["orchestrators"]
    now = reply.server_time
    if out.as_json:
        out.json({"orchestrators": [{**g, "online": _online(g, now)} for g in gateways]})
        return
    rows = [
        [
            g.get("entity_id"),
            g.get("orchestrator_id"),
            g.get("status"),
            g.get("version"),
            age(parse_time(g.get("last_heartbeat_at")), now),
            _online(g, now),
        ]
        for g in gateways
    ]
    out.table(["entity", "id", "status", "version", "heartbeat", "online"], rows, title="gateways")


def cmd_gateway_show(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    reply = api.get(api_path("orchestrators", args.entity, args.orchestrator))
    body = reply.body
    if out.as_json:
        out.json(body)
        return
    last = body.get("last_heartbeat") or {}
    out.fields(
        [
            ("entity", body.get("entity_id")),
            ("id", body.get("orchestrator_id")),
            ("status", body.get("status")),
            ("online", body.get("online")),
            ("version", body.get("version")),
            ("key id", body.get("key_id")),
            ("capabilities", ", ".join(shown(c) for c in body.get("capabilities", [])) or None),
            ("local address", body.get("local_address")),
            ("heartbeat every", f"{shown(body.get('heartbeat_interval'))} s"),
            ("last heartbeat", age(parse_time(body.get("last_heartbeat_at")), reply.server_time)),
            ("reported status", last.get("status")),
            ("uptime", last.get("uptime_seconds")),
            ("created", body.get("created_at")),
            ("updated", body.get("updated_at")),
        ]
    )


def _transition(action: str) -> Callable[[AdminApi, Output, argparse.Namespace], None]:
    def command(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
        body = api.post(api_path("orchestrators", args.entity, args.orchestrator, action)).body
        if out.as_json:
            out.json(body)
            return
        out.line(
            f"gateway {shown(body.get('orchestrator_id'))} of {shown(body.get('entity_id'))}: "
            f"{shown(body.get('status'))}"
        )

    return command


def cmd_heartbeats(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    path = api_path("orchestrators", args.entity, args.orchestrator, "heartbeats")
    body = api.get(path, limit=args.limit).body
    if out.as_json:
        out.json(body)
        return
    rows = []
    for beat in body.get("heartbeats", []):
        metrics = beat.get("metrics") or {}
        rows.append(
            [
                beat.get("received_at"),
                beat.get("status"),
                beat.get("version"),
                beat.get("uptime_seconds"),
                beat.get("connected_robots"),
                f"{shown(beat.get('active_tasks'))}/{shown(beat.get('pending_tasks'))}",
                metrics.get("cpu_percent"),
                metrics.get("memory_used_mb"),
            ]
        )
    out.table(
        ["received", "status", "version", "uptime s", "robots", "tasks", "cpu %", "mem MB"],
        rows,
        title=f"heartbeats of {shown(args.orchestrator)}",
    )


def cmd_command(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    request = {"type": args.type, "params": dict(args.param), "ttl_seconds": args.ttl}
    path = api_path("orchestrators", args.entity, args.orchestrator, "commands")
    body = api.post(path, request).body
    if out.as_json:
        out.json(body)
        return
    out.line(
        f"queued {shown(body.get('type'))} as {shown(body.get('id'))} for gateway "
        f"{shown(args.orchestrator)}: delivered with its next heartbeat, "
        f"expires {shown(body.get('expires_at'))}"
    )


def cmd_audit(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    body = api.get(api_path("audit"), entity_id=args.entity, limit=args.limit).body
    if out.as_json:
        out.json(body)
        return
    rows = [
        [
            r.get("at"),
            r.get("actor"),
            r.get("action"),
            r.get("outcome"),
            r.get("entity_id"),
            r.get("details") or None,
        ]
        for r in body.get("records", [])
    ]
    out.table(["at", "actor", "action", "outcome", "entity", "details"], rows, title="audit log")


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parents = [common]

    def gateway_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("entity", metavar="ENTITY")
        p.add_argument("orchestrator", metavar="ID", help="the gateway's orchestrator id")

    p = commands.add_parser(
        "enroll", parents=parents, help="create a single-use enrollment token (printed last)"
    )
    gateway_args(p)
    p.add_argument("--ttl", type=_ttl, default=3600, help="seconds, at most 86400 (default 3600)")
    p.set_defaults(func=cmd_enroll)

    p = commands.add_parser("prekey", parents=parents, help="pre-register a gateway's public key")
    gateway_args(p)
    p.add_argument("key_file", type=Path, metavar="PUBLIC_KEY_FILE", help="PEM or hex point")
    p.set_defaults(func=cmd_prekey)

    p = commands.add_parser("gateways", parents=parents, help="list gateways")
    p.add_argument("--entity", help="only this entity's gateways")
    p.set_defaults(func=cmd_gateways)

    gateway = commands.add_parser("gateway", help="one gateway")
    sub = gateway.add_subparsers(dest="gateway_command", required=True, metavar="COMMAND")
    p = sub.add_parser("show", parents=parents, help="a gateway and its last heartbeat")
    gateway_args(p)
    p.set_defaults(func=cmd_gateway_show)

    for action, text in (
        ("approve", "approve a pending gateway (its key is pinned)"),
        ("disable", "disable a gateway (its tokens are refused at once)"),
        ("enable", "enable a disabled gateway again"),
    ):
        p = commands.add_parser(action, parents=parents, help=text)
        gateway_args(p)
        p.set_defaults(func=_transition(action))

    p = commands.add_parser("heartbeats", parents=parents, help="a gateway's recent heartbeats")
    gateway_args(p)
    p.add_argument("--limit", type=positive_int, default=20, help="at most 1000")
    p.set_defaults(func=cmd_heartbeats)

    p = commands.add_parser(
        "command",
        parents=parents,
        help="queue a command (resync, restart, ...) for a gateway's next heartbeat",
    )
    gateway_args(p)
    p.add_argument("type", metavar="TYPE")
    p.add_argument(
        "--param",
        type=param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a string parameter, or KEY:=JSON for a number, boolean, list or object",
    )
    p.add_argument("--ttl", type=positive_int, default=86_400, help="seconds (default 86400)")
    p.set_defaults(func=cmd_command)

    p = commands.add_parser("audit", parents=parents, help="the audit log, newest first")
    p.add_argument("--entity", help="only this entity")
    p.add_argument("--limit", type=positive_int, default=50, help="at most 1000")
    p.set_defaults(func=cmd_audit)
