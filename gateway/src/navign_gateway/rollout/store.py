"""The rollout engine's tables (component ``rollouts``) and the one write that saves a step.

- ``rollouts``: one row per rollout (its policy as received, state, wave, hold);
- ``rollout_entries``: one row per (rollout, beacon);
- ``rollout_outbox``: reports for the server still to deliver, in order (path and JSON body).

:func:`save` writes the rollouts and entries a step changed, and the reports it produced, in one
transaction: after a crash the gateway resumes from a state that was whole, and never reports a
change it did not keep.

Public: :data:`COMPONENT`, :data:`MIGRATIONS`, :func:`load`, :func:`save`, :func:`outbox_head`,
:func:`outbox_drop`, :class:`OutboxItem`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import aiosqlite

from navign_gateway.db import Database
from navign_gateway.rollout.model import (
    Entry,
    EntryState,
    Policy,
    PolicyError,
    Rollout,
    RolloutState,
    parse_policy,
)

COMPONENT: Final = "rollouts"

MIGRATIONS: Final[list[str]] = [
    """
    CREATE TABLE rollouts (
        rollout_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        firmware_id TEXT NOT NULL,
        release TEXT NOT NULL,
        policy TEXT NOT NULL,
        state TEXT NOT NULL,
        state_reason TEXT NOT NULL,
        progress TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE rollout_entries (
        rollout_id TEXT NOT NULL REFERENCES rollouts (rollout_id) ON DELETE CASCADE,
        beacon_id TEXT NOT NULL,
        wave INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        failure_reason TEXT NOT NULL,
        bytes_transferred INTEGER NOT NULL,
        from_version TEXT NOT NULL,
        transport TEXT NOT NULL,
        updated_at REAL NOT NULL,
        deadline REAL,
        not_before REAL NOT NULL,
        PRIMARY KEY (rollout_id, beacon_id)
    ) WITHOUT ROWID;
    CREATE TABLE rollout_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
]


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    path: str
    body: dict[str, Any]


def _release_json(r: Rollout) -> str:
    return json.dumps(
        {
            "target": r.target,
            "kind": r.kind,
            "version": r.version,
            "device_type": r.device_type,
            "channel": r.channel,
            "manifest_sha256": r.manifest_sha256,
        }
    )


def _progress_json(r: Rollout) -> str:
    return json.dumps(
        {
            "current_wave": r.current_wave,
            "wave_count": r.wave_count,
            "hold_until": r.hold_until,
            "awaiting_approval": r.awaiting_approval,
            "resume_to": r.resume_to.value if r.resume_to else None,
            "wave_started_at": r.wave_started_at,
            "tolerated": r.tolerated,
        }
    )


async def load(db: Database, *, max_attempts: int) -> list[Rollout]:
    """Every rollout with its entries, oldest first. A rollout whose stored policy no longer
    parses (it parsed when it was stored) keeps the defaults and says so in its reason."""
    rollouts: dict[str, Rollout] = {}
    async with db.reader.execute(
        "SELECT rollout_id, seq, firmware_id, release, policy, state, state_reason, progress,"
        " created_at, updated_at FROM rollouts ORDER BY seq, rollout_id"
    ) as cursor:
        rows = await cursor.fetchall()
    for row in rows:
        release, raw_policy, progress = json.loads(row[3]), json.loads(row[4]), json.loads(row[7])
        reason = str(row[6])
        try:
            policy = parse_policy(raw_policy, max_attempts=max_attempts)
        except PolicyError as exc:
            policy, reason = Policy(max_attempts=max_attempts), f"stored policy unreadable: {exc}"
        rollout = Rollout(
            rollout_id=str(row[0]),
            seq=int(row[1]),
            firmware_id=str(row[2]),
            target=release["target"],
            kind=release["kind"],
            version=release["version"],
            device_type=release["device_type"],
            channel=release["channel"],
            manifest_sha256=release["manifest_sha256"],
            policy=policy,
            raw_policy=raw_policy,
            state=RolloutState(row[5]),
            state_reason=reason,
            current_wave=int(progress["current_wave"]),
            wave_count=int(progress["wave_count"]),
            hold_until=progress["hold_until"],
            awaiting_approval=bool(progress["awaiting_approval"]),
            resume_to=RolloutState(progress["resume_to"]) if progress["resume_to"] else None,
            wave_started_at=progress.get("wave_started_at"),
            tolerated=int(progress.get("tolerated", 0)),
            created_at=float(row[8]),
            updated_at=float(row[9]),
        )
        rollouts[rollout.rollout_id] = rollout
    async with db.reader.execute(
        "SELECT rollout_id, beacon_id, wave, state, attempts, failure_reason, bytes_transferred,"
        " from_version, transport, updated_at, deadline, not_before FROM rollout_entries"
    ) as cursor:
        entry_rows = await cursor.fetchall()
    for row in entry_rows:
        owner = rollouts.get(str(row[0]))
        if owner is None:
            continue
        owner.entries[str(row[1])] = Entry(
            beacon_id=str(row[1]),
            wave=int(row[2]),
            state=EntryState(row[3]),
            attempts=int(row[4]),
            failure_reason=str(row[5]),
            bytes_transferred=int(row[6]),
            from_version=str(row[7]),
            transport=str(row[8]),
            updated_at=float(row[9]),
            deadline=None if row[10] is None else float(row[10]),
            not_before=float(row[11]),
        )
    return list(rollouts.values())


async def save(
    conn: aiosqlite.Connection,
    rollouts: Iterable[Rollout],
    entries: Iterable[tuple[str, Entry]],
    reports: Iterable[tuple[str, dict[str, Any]]],
    now: float,
) -> None:
    """Within the caller's transaction: upsert rollouts and entries, append reports."""
    await conn.executemany(
        "INSERT INTO rollouts (rollout_id, seq, firmware_id, release, policy, state,"
        " state_reason, progress, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (rollout_id) DO UPDATE SET release = excluded.release,"
        " state = excluded.state, state_reason = excluded.state_reason,"
        " progress = excluded.progress, updated_at = excluded.updated_at",
        [
            (
                r.rollout_id,
                r.seq,
                r.firmware_id,
                _release_json(r),
                json.dumps(r.raw_policy),
                r.state.value,
                r.state_reason,
                _progress_json(r),
                r.created_at,
                r.updated_at,
            )
            for r in rollouts
        ],
    )
    await conn.executemany(
        "INSERT INTO rollout_entries (rollout_id, beacon_id, wave, state, attempts,"
        " failure_reason, bytes_transferred, from_version, transport, updated_at, deadline,"
        " not_before) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (rollout_id, beacon_id) DO UPDATE SET wave = excluded.wave,"
        " state = excluded.state, attempts = excluded.attempts,"
        " failure_reason = excluded.failure_reason,"
        " bytes_transferred = excluded.bytes_transferred, from_version = excluded.from_version,"
        " transport = excluded.transport, updated_at = excluded.updated_at,"
        " deadline = excluded.deadline, not_before = excluded.not_before",
        [
            (
                rollout_id,
                e.beacon_id,
                e.wave,
                e.state.value,
                e.attempts,
                e.failure_reason,
                e.bytes_transferred,
                e.from_version,
                e.transport,
                e.updated_at,
                e.deadline,
                e.not_before,
            )
            for rollout_id, e in entries
        ],
    )
    await conn.executemany(
        "INSERT INTO rollout_outbox (path, body, created_at) VALUES (?, ?, ?)",
        [(path, json.dumps(body), now) for path, body in reports],
    )


async def outbox_head(db: Database, limit: int = 50) -> list[OutboxItem]:
    async with db.reader.execute(
        "SELECT id, path, body FROM rollout_outbox ORDER BY id LIMIT ?", (limit,)
    ) as cursor:
        rows = await cursor.fetchall()
    return [OutboxItem(int(r[0]), str(r[1]), json.loads(r[2])) for r in rows]


async def outbox_drop(db: Database, up_to: int) -> None:
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM rollout_outbox WHERE id <= ?", (up_to,))
