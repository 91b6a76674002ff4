"""``navign-admin beacon provisioned``: record on the server what the bench flashed into a beacon.

The mall's plan (``navign-admin import``) already holds every beacon with its area, location and
name; the MAC (and often the iBeacon numbers and the chip) are only known once a board is flashed.
This command reads the beacon's document, sets ``mac`` (and ``major``/``minor``/``device`` when
given) and writes it back, validated by the server as any other document.

The plan's rule that MAC addresses and ``(major, minor)`` pairs are unique within an entity is
checked for a whole mall file on import, but not by the server for a single document: it is
checked here, against the entity's other beacons, before anything is written.
"""

from __future__ import annotations

import argparse
import re
from typing import Any, Final

from navign_proto.mall import Chip, normalize_mac
from navign_proto.mall.data import COLLECTION_MAX
from navign_proto.mall.models import IBEACON_MAX
from navign_proto.wire import ErrorCode
from navign_server.admin_cli_http import AdminApi, ServerError, api_path
from navign_server.admin_cli_input import CommandError
from navign_server.admin_cli_output import Output, shown

_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Documents per page when reading the entity's beacons (the server's largest page).
PAGE: Final = 1000


def identifier(text: str) -> str:
    """An entity or document id as the server's paths accept it."""
    if _ID_RE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: an id is 1-64 letters, digits and . _ : - characters"
        )
    return text


def mac_address(text: str) -> str:
    """A MAC as the plan stores it (``aa:bb:cc:dd:ee:ff``)."""
    try:
        return normalize_mac(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def ibeacon_number(text: str) -> int:
    """An iBeacon major or minor: 0..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= IBEACON_MAX:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and {IBEACON_MAX}")
    return value


def _read_beacon(api: AdminApi, entity: str, beacon_id: str) -> dict[str, Any]:
    try:
        body: dict[str, Any] = api.get(api_path("entities", entity, "beacons", beacon_id)).body
    except ServerError as exc:
        if exc.status == 404 and exc.code == ErrorCode.NOT_FOUND:
            raise CommandError(
                f"beacon {shown(beacon_id)} is not in the plan of {shown(entity)}: add it to the "
                "mall first (navign-admin import, with its area, location and name)"
            ) from None
        raise
    if not isinstance(body, dict):
        raise CommandError(f"the server's beacon {shown(beacon_id)} is not a JSON object")
    return body


def _other_beacons(api: AdminApi, entity: str, beacon_id: str) -> list[dict[str, Any]]:
    """Every beacon of ``entity`` but ``beacon_id``, page by page (bounded)."""
    found: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(COLLECTION_MAX // PAGE + 2):
        body = api.get(api_path("entities", entity, "beacons"), after=after, limit=PAGE).body
        found += [d for d in body.get("documents", []) if d.get("id") != beacon_id]
        after = body.get("next_after")
        if not after:
            return found
    raise CommandError(f"{shown(entity)} lists more beacons than a mall may hold")


def _check_unique(others: list[dict[str, Any]], document: dict[str, Any]) -> None:
    for other in others:
        other_id = shown(other.get("id"))
        if other.get("mac") == document["mac"]:
            raise CommandError(
                f"MAC {document['mac']} is already recorded for beacon {other_id}: "
                "correct that beacon first (a MAC is unique within an entity)"
            )
        if (other.get("major"), other.get("minor")) == (document["major"], document["minor"]):
            raise CommandError(
                f"major/minor {document['major']}/{document['minor']} belongs to beacon "
                f"{other_id}: an iBeacon's numbers are unique within an entity"
            )


def cmd_provisioned(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    document = _read_beacon(api, args.entity, args.beacon)
    document["mac"] = args.mac
    if args.major is not None:
        document["major"] = args.major
    if args.minor is not None:
        document["minor"] = args.minor
    if args.device is not None:
        document["device"] = args.device
    _check_unique(_other_beacons(api, args.entity, args.beacon), document)
    path = api_path("entities", args.entity, "beacons", args.beacon)
    body = api.request("PUT", path, json_body=document).body
    if out.as_json:
        out.json(body)
        return
    stored = body.get("document", document) if isinstance(body, dict) else document
    what = (
        f"mac {shown(stored.get('mac'))}, major {shown(stored.get('major'))} "
        f"minor {shown(stored.get('minor'))}, {shown(stored.get('device'))}"
    )
    if isinstance(body, dict) and body.get("changes"):
        out.line(
            f"beacon {shown(args.beacon)} of {shown(args.entity)} recorded: {what} "
            f"(seq {shown(body.get('seq'))})"
        )
    else:
        out.line(f"beacon {shown(args.beacon)} of {shown(args.entity)} already recorded: {what}")


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    beacon = commands.add_parser("beacon", help="beacons of a mall: record a flashed one")
    sub = beacon.add_subparsers(dest="beacon_command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "provisioned",
        parents=[common],
        help="record a flashed beacon's MAC (and iBeacon numbers, chip) in the plan",
        description=(
            "Set the MAC (and --major/--minor/--device when given) of a beacon the mall's plan "
            "already holds. MACs and major/minor pairs must stay unique within the entity."
        ),
    )
    p.add_argument("entity", type=identifier, metavar="ENTITY")
    p.add_argument("beacon", type=identifier, metavar="BEACON_ID")
    p.add_argument("--mac", type=mac_address, required=True, help="the board's MAC")
    p.add_argument("--major", type=ibeacon_number, metavar="N", help="iBeacon major")
    p.add_argument("--minor", type=ibeacon_number, metavar="N", help="iBeacon minor")
    p.add_argument("--device", choices=[c.value for c in Chip], help="the board's chip")
    p.set_defaults(func=cmd_provisioned)
