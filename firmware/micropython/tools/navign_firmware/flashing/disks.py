"""Is it safe to overwrite this device with an SD card image? Facts about a device, and a pure
decision on them.

:func:`gather` collects the facts (``lsblk --json``, ``findmnt``, ``/proc/mounts``,
``/proc/swaps``, ``/sys/block/*/removable``, the loop devices' backing files);
:func:`decide` turns facts into a :class:`Decision` without touching the system, so every rule is
unit-testable with injected facts.

The rules (``--force`` overrides only the first):

* a disk that is neither removable nor hot-pluggable nor on USB/MMC is refused unless ``--force``
  (a card reader inside a laptop can look like that; a system's second SSD looks exactly like it);
* always refused, even with ``--force``: a device that is mounted or has a mounted partition
  (writing under a mounted file system corrupts both, and unmounting is one command); one that
  holds this system's root, boot or swap, or is the disk of such a partition; a partition, an LVM
  volume or anything else that is not a whole disk (the message names the disk to use); a device
  smaller than the image; a read-only one; a character device, a directory or a missing path; a
  regular file that is the image itself or backs a loop device.

Loop devices are whole disks backed by files (the tests use them): the removable rule does not
apply to them, every other rule does. A regular file stands in for a card of its size (create it
with ``truncate -s 2G card.img``); it needs no confirmation.

Public: :class:`DiskError`, :class:`BlockNode`, :class:`DeviceFacts`, :class:`Refusal`,
:class:`Decision`, :func:`parse_lsblk`, :func:`block_facts`, :func:`decide`, :func:`gather`,
:func:`human_size`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

DeviceKind = Literal["block", "file", "char", "missing", "other"]

LSBLK_COLUMNS: Final = "NAME,PATH,TYPE,SIZE,RM,HOTPLUG,TRAN,MOUNTPOINTS,PKNAME,MODEL,RO"
#: util-linux before 2.37 has MOUNTPOINT (one) instead of MOUNTPOINTS.
LSBLK_COLUMNS_OLD: Final = LSBLK_COLUMNS.replace("MOUNTPOINTS", "MOUNTPOINT")
COMMAND_TIMEOUT: Final = 15.0
#: Mount points that make a device part of this system (lsblk shows swap as ``[SWAP]``).
SYSTEM_MOUNTS: Final = frozenset(
    {"/", "/boot", "/boot/efi", "/boot/firmware", "/usr", "/var", "/home", "[SWAP]"}
)
REMOVABLE_TRANSPORTS: Final = frozenset({"usb", "mmc"})
WHOLE_DISK_TYPES: Final = frozenset({"disk", "loop"})


class DiskError(Exception):
    """The facts about a device cannot be gathered (lsblk missing or failing)."""


@dataclass(frozen=True, slots=True)
class BlockNode:
    """One row of ``lsblk``, its path resolved, with the name of the device it sits on."""

    name: str
    path: str
    type: str
    size: int
    removable: bool
    hotplug: bool
    transport: str | None
    read_only: bool
    model: str | None
    mountpoints: tuple[str, ...]
    parent: str | None
    children: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What :func:`decide` needs to know about a device (all gathered before any decision)."""

    path: str
    kind: DeviceKind
    size: int = 0
    #: lsblk's TYPE (disk, part, loop, lvm, crypt, rom, ...); None for a regular file.
    node_type: str | None = None
    #: The whole disk a partition (or volume) sits on.
    parent_disk: str | None = None
    model: str | None = None
    removable: bool = False
    hotplug: bool = False
    transport: str | None = None
    read_only: bool = False
    #: "SOURCE on TARGET" for the device and everything on it that is mounted.
    mounts: tuple[str, ...] = ()
    #: "/ on /dev/vda1", "swap /dev/sda3": this system's root, boot and swap on the device.
    system_uses: tuple[str, ...] = ()
    #: Loop devices backed by this regular file.
    loop_devices: tuple[str, ...] = ()
    #: The regular file is the image being written.
    is_image: bool = False

    def describe(self) -> str:
        """One line: the path, then :meth:`details`."""
        return f"{self.path}: {self.details()}"

    def details(self) -> str:
        """Kind, size, removable/transport, model, mounts."""
        if self.kind != "block":
            words = {"file": "regular file", "char": "character device", "missing": "missing"}
            base = words.get(self.kind, "not a device or file")
            return base + (f", {human_size(self.size)}" if self.size else "")
        parts = [self.node_type or "block device", human_size(self.size)]
        if self.removable or self.hotplug:
            parts.append("removable")
        if self.transport:
            parts.append(self.transport)
        if self.model:
            parts.append(repr(self.model))
        parts.append("mounted: " + ", ".join(self.mounts) if self.mounts else "not mounted")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    #: ``--force`` overrides it.
    overridable: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    refusals: tuple[Refusal, ...] = field(default_factory=tuple)
    force: bool = False

    @property
    def proceed(self) -> bool:
        return not self.blocking

    @property
    def blocking(self) -> tuple[Refusal, ...]:
        """The refusals that stand (all of them without ``--force``)."""
        return tuple(r for r in self.refusals if not (self.force and r.overridable))

    @property
    def overridden(self) -> tuple[Refusal, ...]:
        return tuple(r for r in self.refusals if self.force and r.overridable)

    def explain(self) -> str:
        if self.proceed:
            overridden = "; ".join(r.reason for r in self.overridden)
            return f"proceed (--force overrides: {overridden})" if overridden else "proceed"
        return "refuse: " + "; ".join(r.reason for r in self.blocking)


def human_size(size: int) -> str:
    """Binary units with one decimal: ``1.2 GiB``, ``512 B``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns


def decide(facts: DeviceFacts, image_size: int, force: bool) -> Decision:
    """Whether ``facts.path`` may receive an image of ``image_size`` bytes (see the module doc)."""
    refusals: list[Refusal] = []
    if facts.kind == "missing":
        refusals.append(Refusal("does not exist (a file standing in for a card: truncate -s)"))
    elif facts.kind == "char":
        refusals.append(Refusal("is a character device, not a block device or a regular file"))
    elif facts.kind == "other":
        refusals.append(Refusal("is neither a block device nor a regular file"))
    if facts.kind not in ("block", "file"):
        return Decision(tuple(refusals), force)
    if facts.kind == "block" and facts.node_type not in WHOLE_DISK_TYPES:
        what = "a partition" if facts.node_type == "part" else f"a {facts.node_type} device"
        if facts.node_type in (None, "unknown"):
            refusals.append(Refusal("is not listed by lsblk, so it cannot be checked"))
        elif facts.parent_disk:
            disk = facts.parent_disk
            refusals.append(Refusal(f"is {what} of {disk}: give the whole disk, {disk}"))
        else:
            refusals.append(Refusal(f"is {what}, not a whole disk"))
    if facts.mounts:
        refusals.append(Refusal("is mounted (unmount it first): " + ", ".join(facts.mounts)))
    if facts.system_uses:
        refusals.append(Refusal("holds this system's " + ", ".join(facts.system_uses)))
    if facts.is_image:
        refusals.append(Refusal("is the image itself"))
    if facts.loop_devices:
        devices = ", ".join(facts.loop_devices)
        refusals.append(Refusal(f"backs loop device {devices} (detach it first: losetup -d)"))
    if facts.read_only:
        hint = " (is the card's lock switch on?)" if facts.kind == "block" else ""
        refusals.append(Refusal(f"is read-only{hint}"))
    if facts.size == 0 and facts.kind == "block":
        refusals.append(Refusal("has no medium (size 0): is a card in the reader?"))
    elif facts.size < image_size:
        refusals.append(
            Refusal(
                f"is smaller ({human_size(facts.size)}, {facts.size} bytes) than the image "
                f"({human_size(image_size)}, {image_size} bytes)"
            )
        )
    if (
        facts.kind == "block"
        and facts.node_type == "disk"
        and not (facts.removable or facts.hotplug or facts.transport in REMOVABLE_TRANSPORTS)
    ):
        refusals.append(
            Refusal(
                "is a non-removable disk (not removable, not hot-pluggable, not on USB or MMC); "
                "pass --force if it really is the card",
                overridable=True,
            )
        )
    return Decision(tuple(refusals), force)


def _flag(value: Any) -> bool:
    """lsblk prints booleans as true/false (new) or "0"/"1" (old)."""
    if isinstance(value, str):
        return value.strip() not in ("", "0", "false")
    return bool(value)


def parse_lsblk(
    text: str,
    resolve: Callable[[str], str] = os.path.realpath,
    removable: Mapping[str, bool] | None = None,
) -> tuple[BlockNode, ...]:
    """Every node of ``lsblk --json`` output (the tree flattened; paths resolved by ``resolve``;
    ``removable`` from ``/sys/block/NAME/removable`` ORed into lsblk's RM)."""
    try:
        tree = json.loads(text)["blockdevices"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DiskError(f"cannot parse lsblk's output: {exc}") from None
    sysfs = removable or {}
    nodes: list[BlockNode] = []

    def walk(items: Iterable[dict[str, Any]], parent: str | None, depth: int) -> None:
        for item in items:
            if depth > 16 or not isinstance(item, dict):
                continue
            name = str(item.get("name", ""))
            points = item.get("mountpoints")
            if points is None:
                points = [item.get("mountpoint")]
            children = item.get("children") or []
            size = item.get("size") or 0
            nodes.append(
                BlockNode(
                    name=name,
                    path=resolve(str(item.get("path") or f"/dev/{name}")),
                    type=str(item.get("type") or ""),
                    size=int(size),
                    removable=_flag(item.get("rm")) or sysfs.get(name, False),
                    hotplug=_flag(item.get("hotplug")),
                    transport=(item.get("tran") or None)
                    or ("mmc" if name.startswith("mmcblk") else None),
                    read_only=_flag(item.get("ro")),
                    model=(str(item["model"]).strip() or None) if item.get("model") else None,
                    mountpoints=tuple(str(p) for p in points if p),
                    parent=parent or (str(item["pkname"]) if item.get("pkname") else None),
                    children=tuple(str(c.get("name", "")) for c in children if isinstance(c, dict)),
                )
            )
            walk(children, name, depth + 1)

    walk(tree if isinstance(tree, list) else [], None, 0)
    return tuple(nodes)


def block_facts(
    path: str,
    resolved: str,
    nodes: Sequence[BlockNode],
    mounts: Sequence[tuple[str, str]] = (),
    swaps: Sequence[str] = (),
) -> DeviceFacts:
    """The facts about block device ``resolved`` (``path`` as the user gave it) from lsblk's
    ``nodes`` and the mount table (``mounts``: resolved source, target; ``swaps``: resolved
    swap devices). Pure."""
    by_name = {n.name: n for n in nodes}
    node = next((n for n in nodes if n.path == resolved), None)
    if node is None:
        return DeviceFacts(path=path, kind="block", node_type="unknown")
    subtree: list[BlockNode] = []
    pending = [node.name]
    while pending and len(subtree) < 4096:
        name = pending.pop()
        for candidate in (n for n in nodes if n.name == name):
            subtree.append(candidate)
            pending.extend(candidate.children)
    paths = {n.path for n in subtree}
    mounted: dict[str, None] = {}
    system: dict[str, None] = {}
    for n in subtree:
        for point in n.mountpoints:
            if point != "[SWAP]":
                mounted[f"{n.path} on {point}"] = None
            if point in SYSTEM_MOUNTS:
                system[f"{'swap' if point == '[SWAP]' else point} on {n.path}"] = None
    for source, target in mounts:
        if source in paths:
            mounted[f"{source} on {target}"] = None
            if target in SYSTEM_MOUNTS:
                system[f"{target} on {source}"] = None
    for swap in swaps:
        if swap in paths:
            system[f"swap on {swap}"] = None
    disk = node
    hops = 0
    while disk.type not in WHOLE_DISK_TYPES and disk.parent in by_name and hops < 16:
        disk = by_name[disk.parent]
        hops += 1
    return DeviceFacts(
        path=path if path == resolved else f"{path} (= {resolved})",
        kind="block",
        size=node.size,
        node_type=node.type,
        parent_disk=disk.path if disk is not node else None,
        model=disk.model,
        removable=disk.removable,
        hotplug=disk.hotplug,
        transport=disk.transport,
        read_only=node.read_only,
        mounts=tuple(mounted),
        system_uses=tuple(system),
    )


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise DiskError(f"`{argv[0]}` is not installed (util-linux)") from None
    except subprocess.TimeoutExpired:
        raise DiskError(f"`{' '.join(argv)}` did not answer in {COMMAND_TIMEOUT:.0f} s") from None


def _lsblk_nodes() -> tuple[BlockNode, ...]:
    removable: dict[str, bool] = {}
    for entry in sorted(Path("/sys/block").glob("*"))[:4096]:
        try:
            removable[entry.name] = (entry / "removable").read_text().strip() == "1"
        except OSError:
            continue
    result = _run(["lsblk", "--json", "-b", "-o", LSBLK_COLUMNS])
    if result.returncode != 0:
        result = _run(["lsblk", "--json", "-b", "-o", LSBLK_COLUMNS_OLD])
    if result.returncode != 0:
        raise DiskError(f"lsblk failed: {result.stderr.strip()[:200]}")
    return parse_lsblk(result.stdout, removable=removable)


def _source(text: str) -> str:
    """A mount source as a resolved path (btrfs shows ``/dev/sda2[/@]``)."""
    text = text.split("[", 1)[0].replace("\\040", " ")
    return os.path.realpath(text) if text.startswith("/") else text


def _mount_table() -> list[tuple[str, str]]:
    table: list[tuple[str, str]] = []
    try:
        for line in Path("/proc/mounts").read_text().splitlines()[:100_000]:
            fields = line.split()
            if len(fields) >= 2:
                table.append((_source(fields[0]), fields[1].replace("\\040", " ")))
    except OSError:
        pass
    try:
        result = _run(["findmnt", "--json", "--list", "-o", "SOURCE,TARGET"])
        found = json.loads(result.stdout)["filesystems"] if result.returncode == 0 else []
    except (DiskError, ValueError, KeyError):
        found = []
    for entry in found if isinstance(found, list) else []:
        if isinstance(entry, dict) and entry.get("source") and entry.get("target"):
            table.append((_source(str(entry["source"])), str(entry["target"])))
    return table


def _swaps() -> list[str]:
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:4097]
    except OSError:
        return []
    return [_source(line.split()[0]) for line in lines if line.split()]


def _loop_devices_of(resolved: str) -> tuple[str, ...]:
    found: list[str] = []
    for entry in sorted(Path("/sys/block").glob("loop*"))[:4096]:
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if os.path.realpath(backing.removesuffix(" (deleted)")) == resolved:
            found.append(f"/dev/{entry.name}")
    return tuple(found)


def gather(device: str, image: Path | None = None) -> DeviceFacts:
    """The facts about ``device`` on this system (reads only). Raises :class:`DiskError` when a
    block device's facts cannot be gathered."""
    resolved = os.path.realpath(device)
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        return DeviceFacts(path=device, kind="missing")
    except OSError as exc:
        raise DiskError(f"{device}: cannot inspect: {exc.strerror or exc}") from None
    if stat.S_ISREG(info.st_mode):
        swapped = resolved in _swaps()
        is_image = False
        if image is not None:
            try:
                is_image = os.path.samefile(resolved, image)
            except OSError:
                is_image = False
        return DeviceFacts(
            path=device,
            kind="file",
            size=info.st_size,
            read_only=not os.access(resolved, os.W_OK),
            system_uses=(f"swap on {resolved}",) if swapped else (),
            loop_devices=_loop_devices_of(resolved),
            is_image=is_image,
        )
    if stat.S_ISCHR(info.st_mode):
        return DeviceFacts(path=device, kind="char")
    if not stat.S_ISBLK(info.st_mode):
        return DeviceFacts(path=device, kind="other")
    return block_facts(device, resolved, _lsblk_nodes(), _mount_table(), _swaps())
