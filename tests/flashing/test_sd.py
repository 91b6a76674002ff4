"""``flash.sh sd``: a small gateway-like image (MBR, FAT32 partition 1 holding ``config.txt``, a
Linux partition 2 with random bytes) written to sparse files and a loop device standing in for SD
cards, and the device-safety decision on injected facts."""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from navign_firmware.flashing import disks, sd, sdimage
from navign_proto.testing import issue

MIB = 1024 * 1024
IMAGE_SIZE = 64 * MIB
FAT_START = 1 * MIB
FAT_SECTORS = 98304  # 48 MiB: enough clusters for FAT32 with 512-byte clusters
LINUX_START = FAT_START + FAT_SECTORS * 512
TIMEOUT = 30
REPO = Path(__file__).resolve().parents[2]
TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mtype", "mdir", "mmd", "xz")
CONFIG = b"""# provisioned by flash.sh
server_url = "https://navign.example.com"
entity_id = "mall-riverside"
orchestrator_id = "gw-riverside-1"
enrollment_token = "enroll-0123456789"

[ble]
max_connections = 4
"""
KEYS = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0123456789abcdefghij tech@bench\n"


@dataclass(frozen=True, slots=True)
class Images:
    img: Path
    xz: Path
    data: bytes


def _sh(*argv: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    assert result.returncode == 0, f"{argv}: {result.stderr.decode(errors='replace')}"
    return result.stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    for tool in TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"missing capability: command `{tool}` (mtools, fdisk, dosfstools, xz)")
    root = tmp_path_factory.mktemp("image")
    img = root / "navign-gateway-0.1.0-arm64.img"
    with img.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    table = f"label: dos\nstart=2048, size={FAT_SECTORS}, type=c\n"
    table += f"start={LINUX_START // 512}, type=83\n"
    _sh("sfdisk", "-q", str(img), stdin=table.encode())
    _sh("mkfs.vfat", "-F", "32", "-s", "1", "--offset", "2048", str(img), str(FAT_SECTORS // 2))
    (root / "config.txt").write_bytes(b"arm_64bit=1\n")
    _sh("mcopy", "-i", f"{img}@@{FAT_START}", str(root / "config.txt"), "::/config.txt")
    noise = random.Random(7).randbytes(256 * 1024)
    with img.open("r+b") as f:
        f.seek(LINUX_START)
        f.write(noise)
        f.seek(IMAGE_SIZE - len(noise))
        f.write(noise[::-1])
    _sh("xz", "-T1", "-1", "-k", str(img))
    return Images(img, Path(f"{img}.xz"), img.read_bytes())


def _card(path: Path, size: int = IMAGE_SIZE + 8 * MIB) -> Path:
    """A sparse file standing in for a card, with recognisable bytes at its start and end."""
    with path.open("wb") as f:
        f.truncate(size)
        f.write(b"\xa5" * 4096)
        f.seek(size - 4096)
        f.write(b"\x5a" * 4096)
    return path


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flash.sh")
    sd.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["sd", *argv])


def _mtype(card: Path, name: str) -> bytes:
    return _sh("mtype", "-i", f"{card}@@{FAT_START}", f"::/{name}")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_bytes(CONFIG)
    return path


def _check_card(card: Path, images: Images) -> None:
    data = card.read_bytes()
    assert data[:FAT_START] == images.data[:FAT_START]
    assert data[LINUX_START:IMAGE_SIZE] == images.data[LINUX_START:]
    assert data[-4096:] == b"\x5a" * 4096  # beyond the image: untouched
    assert _mtype(card, "config.txt") == b"arm_64bit=1\n"
    assert _mtype(card, "navign/gateway.toml") == CONFIG


@pytest.mark.parametrize("kind", ["img", "xz"])
def test_writes_the_image_and_provisions_the_fat(
    images: Images, config: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    image = images.img if kind == "img" else images.xz
    card = _card(tmp_path / "card.bin")
    out = io.StringIO()
    extra: list[str] = []
    if kind == "xz":
        (tmp_path / "wifi.conf").write_bytes(b'network={\n  ssid="mall"\n  psk="secret12"\n}\n')
        (tmp_path / "keys").write_bytes(KEYS)
        extra = ["--wifi", str(tmp_path / "wifi.conf")]
        extra += ["--ssh-authorized-keys", str(tmp_path / "keys"), "--block-size", "1M"]
        tls = _tls_dir(tmp_path, clients=True)
        extra += ["--grpc-tls", str(tls)]
    assert sd.run(_args(str(image), str(card), "--config", str(config), *extra), out) == 0
    _check_card(card, images)
    summary = out.getvalue()
    assert summary.startswith(f"sd: wrote {image.name} (64.0 MiB) to {card} in ")
    assert f"verified sha256 {hashlib.sha256(images.data).hexdigest()[:12]}…" in summary
    assert "provisioned navign/gateway.toml" in summary
    assert "sd: write 64.0 MiB / 64.0 MiB (100 %)" in capsys.readouterr().err
    if kind == "xz":
        assert _mtype(card, "navign/wifi.conf").startswith(b"network={")
        assert _mtype(card, "ssh") == b""
        assert _mtype(card, "navign/authorized_keys") == KEYS
        for name in ("grpc.crt", "grpc.key", "clients.pem"):
            assert _mtype(card, f"navign/tls/{name}") == (tls / name).read_bytes()


def test_checks_the_published_sha256(images: Images, config: Path, tmp_path: Path) -> None:
    image = tmp_path / images.xz.name
    shutil.copyfile(images.xz, image)
    sidecar = Path(f"{image}.sha256")
    sidecar.write_text(f"{'0' * 64}  {image.name}\n")
    card = _card(tmp_path / "card.bin")
    before = _fingerprint(card)
    with pytest.raises(sdimage.ImageError, match=r"differs from .*sha256.*nothing written"):
        sd.run(_args(str(image), str(card), "--config", str(config)), io.StringIO())
    assert _fingerprint(card) == before
    sidecar.write_text(f"{hashlib.sha256(image.read_bytes()).hexdigest()}  {image.name}\n")
    assert sd.run(_args(str(image), str(card), "--config", str(config)), io.StringIO()) == 0
    _check_card(card, images)


@pytest.mark.needs_root
def test_a_loop_device_is_a_card(
    images: Images, config: Path, tmp_path: Path, require_capability: Callable[[str], None]
) -> None:
    require_capability("root")
    require_capability("cmd:losetup")
    card = _card(tmp_path / "card.bin")
    before = _fingerprint(card)
    loop = _sh("losetup", "--find", "--show", str(card)).decode().strip()
    try:
        assert loop.startswith("/dev/loop")
        # Nobody at a terminal to confirm (pytest's stdin), and no --yes: refused.
        with pytest.raises(sdimage.DeviceError, match=r"not a terminal.*--yes"):
            sd.run(_args(str(images.xz), loop, "--config", str(config)), io.StringIO())
        with pytest.raises(sdimage.DeviceError, match="not a terminal"):
            sd.run(_args(str(images.xz), loop, "--config", str(config), "--dry-run"), io.StringIO())
        assert _fingerprint(card) == before
        out = io.StringIO()
        assert sd.run(_args(str(images.xz), loop, "--config", str(config), "--yes"), out) == 0
        assert f"to {loop} in" in out.getvalue()
    finally:
        subprocess.run(["losetup", "-d", loop], timeout=TIMEOUT, check=False)
    _check_card(card, images)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CONFIG.replace(b"https://", b"http://"), "plain http"),
        (CONFIG + b"colour = 'blue'\n", "colour: unknown key"),
        (CONFIG.replace(b'entity_id = "mall-riverside"\n', b""), "entity_id: required key"),
        (CONFIG + b"[ble\n", "not valid TOML"),
        (CONFIG.replace(b"enroll-0123456789", b"short"), "enrollment_token"),
    ],
)
def test_an_invalid_gateway_toml_writes_nothing(
    images: Images, tmp_path: Path, text: bytes, message: str
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_bytes(text)
    card = _card(tmp_path / "card.bin")
    before = _fingerprint(card)
    with pytest.raises(sdimage.InputError, match=message):
        sd.run(_args(str(images.img), str(card), "--config", str(config)), io.StringIO())
    assert _fingerprint(card) == before


def test_device_paths_in_the_config_are_the_gateways(images: Images, tmp_path: Path) -> None:
    """``ca_bundle`` and the gRPC port's TLS files name files on the gateway, not on this host:
    not checked here."""
    config = tmp_path / "gateway.toml"
    config.write_bytes(
        CONFIG.replace(b"[ble]", b'ca_bundle = "/etc/navign/ca.pem"\n[ble]')
        + b'[grpc]\ntls_cert = "/etc/navign/tls/grpc.crt"\ntls_key = "/etc/navign/tls/grpc.key"\n'
    )
    card = _card(tmp_path / "card.bin")
    out = io.StringIO()
    sd.run(_args(str(images.img), str(card), "--config", str(config), "--dry-run"), out)
    assert "ca_bundle /etc/navign/ca.pem (on the gateway) not checked here" in out.getvalue()
    assert (
        "grpc tls_cert /etc/navign/tls/grpc.crt, tls_key /etc/navign/tls/grpc.key "
        "(on the gateway) not checked here"
    ) in out.getvalue()


def _tls_dir(tmp_path: Path, *, clients: bool = False) -> Path:
    """A folder as --grpc-tls takes it: grpc.crt, grpc.key and, if asked, clients.pem."""
    folder = tmp_path / "tls"
    folder.mkdir()
    made = issue(tmp_path, "port")
    shutil.copy(made.cert, folder / "grpc.crt")
    shutil.copy(made.key, folder / "grpc.key")
    if clients:
        shutil.copy(issue(tmp_path, "towers", ca=True).cert, folder / "clients.pem")
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("mismatch", "does not match the certificate"),
        ("no-key", "grpc.key: no such file"),
        ("bad-ca", "not a PEM CA bundle"),
    ],
)
def test_an_unusable_grpc_tls_folder_writes_nothing(
    images: Images, config: Path, tmp_path: Path, damage: str, message: str
) -> None:
    tls = _tls_dir(tmp_path)
    if damage == "mismatch":
        shutil.copy(issue(tmp_path, "other").key, tls / "grpc.key")
    elif damage == "no-key":
        (tls / "grpc.key").unlink()
    else:
        (tls / "clients.pem").write_text("not a CA\n")
    card = _card(tmp_path / "card.bin")
    before = _fingerprint(card)
    with pytest.raises(sdimage.InputError, match=message):
        sd.run(
            _args(str(images.img), str(card), "--config", str(config), "--grpc-tls", str(tls)),
            io.StringIO(),
        )
    assert _fingerprint(card) == before


def test_a_truncated_xz_is_refused_before_writing(
    images: Images, config: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "cut.img.xz"
    truncated.write_bytes(images.xz.read_bytes()[: images.xz.stat().st_size // 2])
    card = _card(tmp_path / "card.bin")
    before = _fingerprint(card)
    out = io.StringIO()
    with pytest.raises(sdimage.ImageError, match="not a complete xz file"):
        sd.run(_args(str(truncated), str(card), "--config", str(config)), out)
    assert _fingerprint(card) == before
    assert out.getvalue() == ""


def test_a_corrupt_xz_says_the_card_is_partial(
    images: Images, config: Path, tmp_path: Path
) -> None:
    """Corruption inside the compressed data (the index intact) shows only while streaming."""
    data = bytearray(images.xz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt = tmp_path / "bad.img.xz"
    corrupt.write_bytes(bytes(data))
    card = _card(tmp_path / "card.bin")
    out = io.StringIO()
    with pytest.raises(sdimage.ImageError, match="partial image: write it again"):
        sd.run(_args(str(corrupt), str(card), "--config", str(config)), out)
    assert "sd: wrote" not in out.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\0" * 4096, "no MBR"),
        (b"\0" * 510 + b"\x55\xaa" + b"\0" * 3584, "partition 1 is not FAT"),
    ],
)
def test_not_a_gateway_image(config: Path, tmp_path: Path, content: bytes, message: str) -> None:
    image = tmp_path / "other.img"
    image.write_bytes(content)
    card = _card(tmp_path / "card.bin")
    with pytest.raises(sdimage.ImageError, match=message):
        sd.run(_args(str(image), str(card), "--config", str(config)), io.StringIO())
    with pytest.raises(sdimage.ImageError, match="no such file"):
        sd.run(_args(str(tmp_path / "gone.img"), str(card), "--config", str(config)), io.StringIO())


def test_a_card_smaller_than_the_image_is_refused(
    images: Images, config: Path, tmp_path: Path
) -> None:
    card = _card(tmp_path / "card.bin", IMAGE_SIZE - MIB)
    before = _fingerprint(card)
    for force in ([], ["--force"]):
        with pytest.raises(sdimage.DeviceError, match=r"is smaller .* than the image"):
            sd.run(_args(str(images.xz), str(card), "--config", str(config), *force), io.StringIO())
    assert _fingerprint(card) == before


def test_dry_run_writes_nothing(images: Images, config: Path, tmp_path: Path) -> None:
    card = _card(tmp_path / "card.bin")
    before = _fingerprint(card)
    out = io.StringIO()
    args = _args(str(images.xz), str(card), "--config", str(config), "--dry-run")
    assert sd.run(args, out) == 0
    assert _fingerprint(card) == before
    plan = out.getvalue()
    for expected in ("dry run", "image:", "64.0 MiB", "partition 1 FAT32 (LBA) at byte 1048576",
                     "entity mall-riverside", "regular file", "decision: proceed",
                     "navign/gateway.toml (", "sha256:"):  # fmt: skip
        assert expected in plan
    small = _card(tmp_path / "small.bin", MIB)
    with pytest.raises(sdimage.DeviceError, match="smaller"):
        sd.run(_args(str(images.xz), str(small), "--config", str(config), "--dry-run"), out)


def test_a_write_error_names_the_device_and_offset(
    images: Images, config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = _card(tmp_path / "card.bin")
    real_write = os.write
    state = {"blocks": 0}

    def full_after_two_blocks(fd: int, data: bytes | memoryview) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == str(card):
            state["blocks"] += 1
            if state["blocks"] > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_two_blocks)
    out = io.StringIO()
    args = _args(str(images.img), str(card), "--config", str(config), "--block-size", "1M")
    with pytest.raises(
        sdimage.WriteError, match=rf"^{card}: write failed at byte {2 * MIB}: No space"
    ):
        sd.run(args, out)
    assert out.getvalue() == ""


def test_the_real_cli(images: Images, config: Path, tmp_path: Path) -> None:
    script = REPO / "flash.sh"
    card = _card(tmp_path / "card.bin")
    ok = subprocess.run(
        [str(script), "sd", str(images.xz), str(card), "--config", str(config)],
        capture_output=True, text=True, timeout=TIMEOUT * 2, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("sd: wrote ")
    _check_card(card, images)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"server_url = 3\n")
    failed = subprocess.run(
        [str(script), "sd", str(images.xz), str(card), "--config", str(bad)],
        capture_output=True, text=True, timeout=TIMEOUT * 2, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert failed.returncode == 1
    assert failed.stderr.startswith("flash.sh: error: ")
    assert failed.stderr.count("\n") == 1


# --- the decision, on injected facts ----------------------------------------------------------

CARD = disks.DeviceFacts(
    path="/dev/sdb", kind="block", size=32 * 1024 * MIB, node_type="disk", removable=True,
    transport="usb", model="SD Card Reader",
)  # fmt: skip
ROOT_DISK = disks.DeviceFacts(
    path="/dev/nvme0n1", kind="block", size=512 * 1024 * MIB, node_type="disk",
    mounts=("/dev/nvme0n1p2 on /",), system_uses=("/ on /dev/nvme0n1p2",),
)  # fmt: skip


def _with(facts: disks.DeviceFacts, **changes: object) -> disks.DeviceFacts:
    fields = {name: getattr(facts, name) for name in disks.DeviceFacts.__slots__}
    return disks.DeviceFacts(**{**fields, **changes})


@pytest.mark.parametrize(
    ("facts", "force", "proceed", "reason"),
    [
        (CARD, False, True, None),
        (_with(CARD, removable=False, hotplug=True, transport=None), False, True, None),
        (_with(CARD, removable=False, transport="mmc"), False, True, None),
        (_with(CARD, mounts=("/dev/sdb1 on /media/boot",)), False, False, "is mounted"),
        (_with(CARD, mounts=("/dev/sdb1 on /media/boot",)), True, False, "is mounted"),
        (ROOT_DISK, True, False, "holds this system's / on /dev/nvme0n1p2"),
        (_with(CARD, mounts=(), system_uses=("swap on /dev/sdb2",)), True, False, "swap"),
        (_with(CARD, removable=False, transport="sata"), False, False, "non-removable"),
        (_with(CARD, removable=False, transport="sata"), True, True, None),
        (_with(CARD, node_type="part", parent_disk="/dev/sdb"), False, False, "whole disk, /dev/"),
        (_with(CARD, node_type="part", parent_disk="/dev/sdb"), True, False, "whole disk, /dev/"),
        (_with(CARD, size=IMAGE_SIZE - 1), False, False, "smaller"),
        (_with(CARD, size=IMAGE_SIZE - 1), True, False, "smaller"),
        (_with(CARD, size=0), True, False, "no medium"),
        (_with(CARD, read_only=True), True, False, "read-only"),
        (_with(CARD, node_type="loop", removable=False, transport=None), False, True, None),
        (disks.DeviceFacts(path="/dev/tty0", kind="char"), True, False, "character device"),
        (disks.DeviceFacts(path="/tmp", kind="other"), True, False, "neither"),
        (disks.DeviceFacts(path="/dev/sdz", kind="missing"), True, False, "does not exist"),
        (disks.DeviceFacts(path="card.img", kind="file", size=IMAGE_SIZE), False, True, None),
        (disks.DeviceFacts(path="x.img", kind="file", size=IMAGE_SIZE, is_image=True), True,
         False, "the image itself"),
        (disks.DeviceFacts(path="c.img", kind="file", size=IMAGE_SIZE,
                           loop_devices=("/dev/loop3",)), True, False, "backs loop device"),
    ],
)  # fmt: skip
def test_decide(facts: disks.DeviceFacts, force: bool, proceed: bool, reason: str | None) -> None:
    decision = disks.decide(facts, IMAGE_SIZE, force)
    assert decision.proceed is proceed, decision.explain()
    if reason is None:
        assert decision.explain().startswith("proceed")
    else:
        assert reason in decision.explain()
    if force and proceed and decision.refusals:
        assert "--force overrides" in decision.explain()


LSBLK = {
    "blockdevices": [
        {"name": "sda", "path": "/dev/sda", "type": "disk", "size": 500107862016, "rm": False,
         "hotplug": False, "tran": "sata", "mountpoints": [None], "pkname": None, "ro": False,
         "model": "Samsung SSD",
         "children": [
             {"name": "sda1", "path": "/dev/sda1", "type": "part", "size": 536870912, "rm": False,
              "hotplug": False, "tran": None, "mountpoints": ["/boot/efi"], "pkname": "sda"},
             {"name": "sda2", "path": "/dev/sda2", "type": "part", "size": 499570991104,
              "rm": False, "hotplug": False, "tran": None, "mountpoints": [None], "pkname": "sda",
              "children": [
                  {"name": "vg-root", "path": "/dev/mapper/vg-root", "type": "lvm",
                   "size": 499570991104, "rm": False, "hotplug": False, "tran": None,
                   "mountpoints": ["/"], "pkname": "sda2"}]}]},
        {"name": "sdb", "path": "/dev/sdb", "type": "disk", "size": "31914983424", "rm": "1",
         "hotplug": "1", "tran": "usb", "mountpoint": None, "pkname": None, "model": "SD Reader ",
         "children": [
             {"name": "sdb1", "path": "/dev/sdb1", "type": "part", "size": "268435456", "rm": "1",
              "hotplug": "1", "tran": None, "mountpoint": "/media/u/bootfs", "pkname": "sdb"}]},
        {"name": "mmcblk0", "path": "/dev/mmcblk0", "type": "disk", "size": 15931539456,
         "rm": False, "hotplug": False, "tran": None, "mountpoints": [None], "pkname": None},
    ]
}  # fmt: skip


def test_block_facts_from_lsblk() -> None:
    nodes = disks.parse_lsblk(json.dumps(LSBLK), resolve=lambda path: path)
    system = disks.block_facts("/dev/sda", "/dev/sda", nodes, swaps=["/dev/sda3"])
    assert system.model == "Samsung SSD"
    assert not system.removable
    assert "/ on /dev/mapper/vg-root" in system.system_uses
    assert "/boot/efi on /dev/sda1" in system.system_uses
    assert "/dev/sda1 on /boot/efi" in system.mounts
    assert not disks.decide(system, IMAGE_SIZE, force=True).proceed
    part = disks.block_facts("/dev/sda1", "/dev/sda1", nodes)
    assert part.node_type == "part"
    assert part.parent_disk == "/dev/sda"
    reader = disks.block_facts("/dev/sdb", "/dev/sdb", nodes, mounts=[("/dev/sdb1", "/mnt/x")])
    assert reader.removable
    assert reader.transport == "usb"
    assert reader.model == "SD Reader"
    assert reader.size == 31914983424
    assert reader.mounts == ("/dev/sdb1 on /media/u/bootfs", "/dev/sdb1 on /mnt/x")
    assert "is mounted" in disks.decide(reader, IMAGE_SIZE, force=True).explain()
    builtin = disks.block_facts("/dev/disk/by-id/x", "/dev/mmcblk0", nodes)
    assert builtin.path == "/dev/disk/by-id/x (= /dev/mmcblk0)"
    assert builtin.transport == "mmc"
    assert disks.decide(builtin, IMAGE_SIZE, force=False).proceed
    unknown = disks.block_facts("/dev/sdq", "/dev/sdq", nodes)
    assert "not listed by lsblk" in disks.decide(unknown, IMAGE_SIZE, force=True).explain()


def test_this_machines_root_disk_is_refused() -> None:
    """The real gathering: whatever holds / here is refused even with --force."""
    root = os.stat("/").st_dev
    disk = Path(f"/sys/dev/block/{os.major(root)}:{os.minor(root)}")
    if not disk.exists():
        pytest.skip("/ is not on a block device here (overlay, tmpfs)")
    device = f"/dev/{disk.resolve().name}"
    if not Path(device).exists():
        pytest.skip(f"{device} has no device node here")
    facts = disks.gather(device)
    decision = disks.decide(facts, IMAGE_SIZE, force=True)
    assert not decision.proceed
    assert "mounted" in decision.explain() or "holds this system" in decision.explain()


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _args("--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--wifi", "--ssh-authorized-keys", "--grpc-tls", "--force",
                   "--dry-run", "--yes", "--block-size", "IMAGE", "DEVICE"):  # fmt: skip
        assert option in text
