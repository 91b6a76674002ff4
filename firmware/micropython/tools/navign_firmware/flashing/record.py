"""``flash.sh beacon --record-server ENTITY``: record each flashed beacon in the mall's plan on the
central server, with ``navign-admin`` (installed next to this Python) as a subprocess.

Before any board is touched, :func:`check_server` asks for the entity (``navign-admin entity
show``): a server that cannot be reached, a refused token or an unknown entity stop the command
there. After the boards, :func:`record_on_server` runs ``navign-admin beacon provisioned`` for each
PASS board (its MAC, major, minor and chip) and returns one line per beacon it could not record.

The connection is navign-admin's: ``NAVIGN_ADMIN_SERVER`` and ``NAVIGN_ADMIN_TOKEN`` from the
environment, or ``--admin-server`` and ``--admin-token-file`` passed through.

Public: :class:`RecordError`, :class:`Connection`, :func:`check_server`,
:func:`record_on_server`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from navign_firmware.flashing import tools

if TYPE_CHECKING:
    from navign_firmware.flashing.beacon import BoardResult

ADMIN: Final = "navign-admin"
#: Seconds navign-admin waits for each answer of the server (its ``--timeout``).
REQUEST_TIMEOUT: Final = 20.0
#: Seconds one navign-admin run may take in all (a few requests, a retried read).
CALL_TIMEOUT: Final = 120.0
_PREFIX: Final = f"{ADMIN}: "


class RecordError(RuntimeError):
    """The server cannot record the beacons (said before any board is touched)."""


@dataclass(frozen=True, slots=True)
class Connection:
    """How navign-admin reaches the server; unset parts come from its environment variables."""

    server: str | None = None
    token_file: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Connection:
        return cls(getattr(args, "admin_server", None), getattr(args, "admin_token_file", None))

    def argv(self) -> list[str]:
        out = ["--timeout", f"{REQUEST_TIMEOUT:g}"]
        if self.server is not None:
            out += ["--server", self.server]
        if self.token_file is not None:
            out += ["--token-file", str(self.token_file)]
        return out


def _admin(conn: Connection, command: Sequence[str], ids: Sequence[str]) -> tools.ToolResult:
    """``navign-admin COMMAND... CONNECTION -- IDS...`` (an id is never read as an option)."""
    argv = [tools.executable(ADMIN), *command, *conn.argv(), "--", *ids]
    return tools.run_tool(argv, timeout=CALL_TIMEOUT)


def _reason(result: tools.ToolResult) -> str:
    """navign-admin's one error line (its prefix removed), or what else went wrong."""
    if result.timed_out:
        return f"{ADMIN} gave no answer within {CALL_TIMEOUT:g} s"
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(_PREFIX):
            return line.removeprefix(_PREFIX)
    return lines[-1] if lines else f"{ADMIN} exited with code {result.code}"


def check_server(entity: str, conn: Connection) -> None:
    """Raise :class:`RecordError` unless navign-admin can read ``entity`` on the server."""
    try:
        result = _admin(conn, ["entity", "show"], [entity])
    except tools.ToolError as exc:
        raise RecordError(f"--record-server: {exc}") from None
    if result.code != 0 or result.timed_out:
        raise RecordError(f"--record-server {entity}: {_reason(result)}")


def _mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def record_on_server(
    entity: str, results: Sequence[BoardResult], chip: str, conn: Connection
) -> list[str]:
    """Record every PASS board's MAC, major, minor and ``chip`` in ``entity``'s plan; one
    ``record: <beacon_id> on the server: <reason>`` line per beacon that was not recorded.

    After a navign-admin run that timed out, the remaining beacons are not tried (each would
    wait as long again)."""
    failures: list[str] = []
    stalled = ""
    for result in results:
        ident = result.identity
        if not result.ok or ident is None or result.mac is None:
            continue
        if stalled:
            failures.append(f"record: {ident.beacon_id} on the server: not tried ({stalled})")
            continue
        command = ["beacon", "provisioned", "--mac", _mac(result.mac), "--device", chip]
        command += ["--major", str(ident.major), "--minor", str(ident.minor)]
        try:
            done = _admin(conn, command, [entity, ident.beacon_id])
        except tools.ToolError as exc:
            failures.append(f"record: {ident.beacon_id} on the server: {exc}")
            continue
        if done.code == 0 and not done.timed_out:
            continue
        if done.timed_out:
            stalled = f"{ADMIN} timed out for {ident.beacon_id}"
        failures.append(f"record: {ident.beacon_id} on the server: {_reason(done)}")
    return failures
