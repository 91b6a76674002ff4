"""Faults the ROM-loader simulator (:mod:`.romloader`) injects, for tests of retries and error
messages: lost answers, checksum errors, commands never answered, a device that dies. Faults are
given as text (``--fault SPEC``, :func:`parse_fault`) and counted per command and in all
(:class:`FaultBook`).

Public: :class:`Fault`, :data:`FaultKind`, :func:`parse_fault` and :class:`FaultBook`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

from navign_firmware.devsim.loaderwire import Op

FaultKind = Literal["drop", "bad_checksum", "silent", "die"]


@dataclass(frozen=True, slots=True)
class Fault:
    """``drop``: the ``nth`` answer to ``command`` is lost (the command took effect);
    ``bad_checksum``: the ``nth`` is answered with a checksum error and not carried out;
    ``silent``: from the ``nth`` on, that command is never answered (nor carried out);
    ``die``: from the ``nth`` on, the device answers nothing at all.
    ``command`` ``None`` counts every command."""

    kind: FaultKind
    command: str | None
    nth: int
    #: ``drop`` and ``bad_checksum`` hit every occurrence from the ``nth`` on, not just that one.
    onwards: bool = False

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``KIND:COMMAND:N[+]``, e.g. ``drop:SYNC:1``, ``die:FLASH_DEFL_DATA:5``,
        ``bad_checksum:FLASH_DATA:2+``; COMMAND ``*`` is any command."""
        parts = spec.split(":")
        if len(parts) != 3 or parts[0] not in get_args(FaultKind):
            raise ValueError(
                f"fault {spec!r}: want KIND:COMMAND:N, KIND one of {', '.join(get_args(FaultKind))}"
            )
        kind, command, nth = parts
        onwards = nth.endswith("+")
        nth = nth.removesuffix("+")
        if command != "*" and command not in Op.__members__:
            raise ValueError(f"fault {spec!r}: unknown command {command!r}")
        if not nth.isdigit() or int(nth) < 1:
            raise ValueError(f"fault {spec!r}: N must be a positive integer")
        return cls(cast(FaultKind, kind), None if command == "*" else command, int(nth), onwards)


def parse_fault(spec: str) -> Fault:
    return Fault.parse(spec)


class FaultBook:
    """The commands a loader received, by name (:attr:`commands`) and in all (:attr:`frames`),
    and which of ``faults`` hits each."""

    def __init__(self, faults: Sequence[Fault] = ()) -> None:
        self.faults = tuple(faults)
        self.commands: Counter[str] = Counter()
        self.frames = 0

    def count(self, name: str) -> FaultKind | None:
        """Count one more command ``name``; the kind of the first fault that hits it, if any."""
        self.frames += 1
        self.commands[name] += 1
        for f in self.faults:
            if f.command is not None and f.command != name:
                continue
            n = self.frames if f.command is None else self.commands[name]
            if n == f.nth or (n > f.nth and (f.onwards or f.kind in ("silent", "die"))):
                return f.kind
        return None
