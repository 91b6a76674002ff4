"""``navign-admin`` commands for malls: entities, bulk import, documents, tasks, config pushes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from navign_proto.mall import COLLECTIONS, Entity, MallData
from navign_proto.wire import Priority, TaskLocation, TaskType
from navign_server.admin_cli_http import AdminApi, ServerError, api_path
from navign_server.admin_cli_input import (
    CommandError,
    key_value,
    positive_int,
    read_json_object,
    read_model,
    task_location,
)
from navign_server.admin_cli_output import Output, shown

#: ``entities`` reads each entity's sequence and counts (one request each) up to this many.
ENTITY_STATES_MAX: Final = 50

_DOCUMENT_COLUMNS: Final = {
    "areas": ("id", "name", "floor", "beacon_code"),
    "beacons": ("id", "name", "area_id", "type", "device", "mac", "major", "minor"),
    "merchants": ("id", "name", "area_id", "type"),
    "connections": ("id", "name", "type", "connected_areas"),
}


def cmd_entities(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    entities: list[dict[str, Any]] = api.get(api_path("entities")).body["entities"]
    states: dict[str, dict[str, Any]] = {}
    if len(entities) <= ENTITY_STATES_MAX:
        for entity in entities:
            try:
                state = api.get(api_path("entities", str(entity["id"]))).body
            except ServerError as exc:
                if exc.status != 404:  # deleted meanwhile: listed without its state
                    raise
                continue
            states[entity["id"]] = {"seq": state.get("seq"), "counts": state.get("counts", {})}
    if out.as_json:
        out.json({"entities": entities, "states": states})
        return
    rows = []
    for entity in entities:
        state = states.get(entity["id"], {})
        counts = state.get("counts", {})
        rows.append(
            [
                entity.get("id"),
                entity.get("name"),
                entity.get("type"),
                entity.get("city"),
                *(counts.get(name) for name in COLLECTIONS),
                state.get("seq"),
            ]
        )
    out.table(["id", "name", "type", "city", *COLLECTIONS, "seq"], rows, title="entities")
    if len(entities) > ENTITY_STATES_MAX:
        out.line(f"(counts shown by `navign-admin entity show ID`: {len(entities)} entities)")


def cmd_entity_show(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    body = api.get(api_path("entities", args.entity)).body
    if out.as_json:
        out.json(body)
        return
    entity = body.get("entity", {})
    counts = body.get("counts", {})
    place = ", ".join(shown(entity[k]) for k in ("city", "region", "nation") if entity.get(k))
    out.fields(
        [
            ("id", entity.get("id")),
            ("name", entity.get("name")),
            ("type", entity.get("type")),
            ("place", place or None),
            ("tags", ", ".join(shown(t) for t in entity.get("tags", [])) or None),
            ("seq", body.get("seq")),
            ("history from", body.get("history_floor")),
            *((name, counts.get(name, 0)) for name in COLLECTIONS),
            ("checksum", body.get("checksums", {}).get("global")),
        ]
    )


def cmd_entity_create(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    entity, raw = read_model(args.file, Entity, "entity file")
    body = api.request("POST", api_path("entities"), data=raw, content_type="application/json").body
    if out.as_json:
        out.json(body)
        return
    out.line(f"created entity {shown(entity.id)} ({shown(entity.name)})")


def cmd_import(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    # Validated here first: a mistake is one readable line and nothing is sent.
    mall, raw = read_model(args.file, MallData, "mall file")
    if mall.entity.id != args.entity:
        raise CommandError(f"{args.file} describes entity {mall.entity.id!r}, not {args.entity!r}")
    body = api.request(
        "POST",
        api_path("entities", args.entity, "import"),
        query={"prune": args.prune},
        data=raw,
        content_type="application/json",
    ).body
    if out.as_json:
        out.json(body)
        return
    pruned = " (documents absent from the file deleted)" if args.prune else ""
    out.line(
        f"imported {body.get('documents')} documents into {shown(args.entity)}: "
        f"{body.get('changes')} changes, seq {shown(body.get('seq'))}{pruned}"
    )


def cmd_docs(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    body = api.get(
        api_path("entities", args.entity, args.collection), after=args.after, limit=args.limit
    ).body
    if out.as_json:
        out.json(body)
        return
    columns = _DOCUMENT_COLUMNS[args.collection]
    rows = []
    for doc in body.get("documents", []):
        row = [doc.get(c) for c in columns]
        if args.collection == "connections":
            row[-1] = ", ".join(shown(a.get("area_id")) for a in doc.get("connected_areas", []))
        rows.append(row)
    out.table(list(columns), rows, title=f"{args.collection} of {shown(args.entity)}")
    if body.get("next_after"):
        out.line(f"more: --after {shown(body['next_after'])}")


def cmd_task_create(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    try:
        for location in (*args.source, *args.terminal):
            TaskLocation.model_validate(location)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise CommandError(f"invalid task location: {where}: {problem['msg']}") from None
    request: dict[str, Any] = {
        "type": args.type,
        "priority": args.priority,
        "sources": args.source,
        "terminals": args.terminal,
        "metadata": dict(args.meta),
    }
    if args.task_id:
        request["task_id"] = args.task_id
    body = api.post(api_path("entities", args.entity, "tasks"), request).body
    if out.as_json:
        out.json(body)
        return
    out.line(
        f"task {shown(body.get('task_id'))} ({shown(args.type)}, {args.priority}) sent to "
        f"{shown(args.entity)} as event {shown(body.get('seq'))}"
    )


def cmd_config_push(api: AdminApi, out: Output, args: argparse.Namespace) -> None:
    config = read_json_object(args.file, "a configuration")
    body = api.post(
        api_path("entities", args.entity, "config"), {"type": args.type, "config": config}
    ).body
    if out.as_json:
        out.json(body)
        return
    out.line(
        f"config {shown(args.type)} pushed to {shown(args.entity)} "
        f"as event {shown(body.get('seq'))}"
    )


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parents = [common]
    p = commands.add_parser("entities", parents=parents, help="list entities (malls) with counts")
    p.set_defaults(func=cmd_entities)

    entity = commands.add_parser("entity", help="one entity: show, create")
    sub = entity.add_subparsers(dest="entity_command", required=True, metavar="COMMAND")
    p = sub.add_parser("show", parents=parents, help="an entity with its sequence and counts")
    p.add_argument("entity", metavar="ID")
    p.set_defaults(func=cmd_entity_show)
    p = sub.add_parser("create", parents=parents, help="create an entity from a JSON file")
    p.add_argument("file", type=Path, metavar="FILE.json")
    p.set_defaults(func=cmd_entity_create)

    p = commands.add_parser(
        "import",
        parents=parents,
        help="bulk import a mall file (validated locally first; all or nothing)",
    )
    p.add_argument("entity", metavar="ID")
    p.add_argument("file", type=Path, metavar="FILE.json")
    p.add_argument("--prune", action="store_true", help="delete documents absent from the file")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("docs", parents=parents, help="list documents of one collection")
    p.add_argument("entity", metavar="ID")
    p.add_argument("collection", choices=list(COLLECTIONS))
    p.add_argument("--after", help="start after this document id (next page)")
    p.add_argument("--limit", type=positive_int, default=100, help="at most 1000")
    p.set_defaults(func=cmd_docs)

    task = commands.add_parser("task", help="tasks for the mall's robots")
    sub = task.add_subparsers(dest="task_command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "create",
        parents=parents,
        help="send a task to the entity's gateway",
        description="Locations are AREA:X:Y or AREA:X:Y:FLOOR (repeat for several).",
    )
    p.add_argument("entity", metavar="ENTITY")
    p.add_argument("--type", default=TaskType.DELIVERY.value, help="delivery, patrol, ...")
    p.add_argument("--priority", choices=[p.value for p in Priority], default="normal")
    where = "AREA:X:Y[:FLOOR]"
    p.add_argument("--source", type=task_location, action="append", required=True, metavar=where)
    p.add_argument("--terminal", type=task_location, action="append", required=True, metavar=where)
    p.add_argument("--meta", type=key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task-id", help="default: chosen by the server")
    p.set_defaults(func=cmd_task_create)

    config = commands.add_parser("config", help="configuration pushed to gateways")
    sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = sub.add_parser("push", parents=parents, help="push a JSON configuration object")
    p.add_argument("entity", metavar="ENTITY")
    p.add_argument("type", metavar="TYPE")
    p.add_argument("file", type=Path, metavar="FILE.json")
    p.set_defaults(func=cmd_config_push)
