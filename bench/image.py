"""The gateway appliance image (issue 8, item 7): build time cold and warm, its sizes, how many
packages it holds, and the time from power-on to a registered gateway under QEMU.

* **Cold build**: ``image/build`` with an empty work folder (every package downloaded and
  configured under qemu-user emulation); **warm**: the same again (the cached base root is
  reused: only the app layer and the disk image are redone). Both without compression, which
  is timed on its own (``xz -T2 -6``).
* **Sizes**: the raw image, the blocks it really uses (it is sparse), the ``.img.xz``, and the
  root file system's content (``/`` without ``/var`` and the boot partition).
* **Boot to registered**: a copy of the image with a ``navign/gateway.toml`` on its boot
  partition, booted with ``qemu-system-aarch64 -M virt`` (its own kernel and initrd, TCG
  emulation on this machine's CPU, so a figure about emulation, not about a Pi), against a real
  server on loopback: from QEMU's start to the server having the gateway's first heartbeat.
* **The gateway's memory on the appliance** (aarch64, Debian's Python 3.13): after it
  registered and sat idle, its VmRSS and RssAnon, read over SSH; and, in the same boot, the
  appliance's Python importing only the gateway's libraries (``gateway_daemon.LIBRARIES``).

Needs root and the image tools (see image/build --help).

    uv run python bench/image.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as h
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway_daemon import LIBRARIES  # noqa: E402

from navign_server.testing import ServerProcess, free_port  # noqa: E402
from tests.conftest import ENTITY, EXAMPLE_MALL  # noqa: E402
from tests.image.qemu import SERVER_ADDRESS, BootedGateway, fat_write, ssh  # noqa: E402

NAME = "image"
BUILD_TIMEOUT = 3600
BOOT_TIMEOUT = 600.0
#: Seconds the registered gateway sits idle before its memory is read.
IDLE_SECONDS = 20.0
MEMORY_SCRIPT = (
    "pid=$(systemctl show -p MainPID --value navign-gateway.service); "
    "grep -E '^(VmRSS|RssAnon):' /proc/$pid/status; "
    '/opt/navign/venv/bin/python -c "$PROBE" & probe=$!; sleep 10; '
    "grep -E '^VmRSS:' /proc/$probe/status | sed 's/VmRSS/Libraries/'; kill $probe"
)


def build(work: Path, out: Path) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "image" / "build"), "--work", str(work), "--out", str(out), "--no-compress"],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"image/build failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.monotonic() - started


def appliance_memory(key: Path, port: int) -> dict[str, float]:
    """The gateway's VmRSS and RssAnon, and the libraries' floor, on the booted appliance (MB)."""
    probe = shlex.quote(LIBRARIES % 60)
    done = ssh(key, port, f"export PROBE={probe}; {MEMORY_SCRIPT}", timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"ssh: {done.stderr.strip()[-500:]}")
    text = done.stdout
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        found[name] = int(value.split()[0]) / 1024
    if set(found) != {"VmRSS", "RssAnon", "Libraries"}:
        raise RuntimeError(f"unexpected memory report: {text!r}")
    return found


def boot_to_registered(image: Path, scratch: Path) -> tuple[float, dict[str, float]]:
    server = ServerProcess(scratch / "server")
    server.start()
    try:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
            mall = json.loads(EXAMPLE_MALL.read_text())
            client.post(f"/api/admin/entities/{ENTITY}/import", json=mall).raise_for_status()
            token = client.post(
                "/api/admin/enrollment-tokens",
                json={"entity_id": ENTITY, "orchestrator_id": "gw-bench", "ttl_seconds": 3600},
            ).json()["token"]
            card = scratch / "card.img"
            subprocess.run(["cp", "--sparse=always", str(image), str(card)], check=True)
            config = (
                f'server_url = "http://{SERVER_ADDRESS}"\nallow_insecure_http = true\n'
                f'entity_id = "{ENTITY}"\norchestrator_id = "gw-bench"\n'
                f'enrollment_token = "{token}"\nheartbeat_interval = 10\n'
                "[ble]\nenabled = false\n[mdns]\nenabled = false\n"
            )
            fat_write(card, "navign/gateway.toml", config.encode(), scratch)
            key = scratch / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)  # fmt: skip
            fat_write(card, "ssh", b"", scratch)
            fat_write(card, "navign/authorized_keys", Path(f"{key}.pub").read_bytes(), scratch)
            ssh_port = free_port()
            gateway = BootedGateway(card, scratch / "qemu", server.port, ssh_port)
            try:
                while time.monotonic() - gateway.started < BOOT_TIMEOUT and gateway.running():
                    answer = client.get(f"/api/admin/orchestrators/{ENTITY}/gw-bench")
                    if answer.status_code == 200 and answer.json().get("last_heartbeat"):
                        registered = time.monotonic() - gateway.started
                        time.sleep(IDLE_SECONDS)
                        return registered, appliance_memory(key, ssh_port)
                    time.sleep(1)
            finally:
                gateway.power_off()
    finally:
        server.stop()
    raise RuntimeError(f"the gateway did not register within {BOOT_TIMEOUT:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=3, help="boots to time (median)")
    h.common_arguments(parser)
    args = parser.parse_args()
    # Inside the image folder, like image/build's own caches; removed first (a cold build).
    work = ROOT / "image" / "work-bench"
    out = ROOT / "image" / "out-bench"
    for folder in (work, out):
        shutil.rmtree(folder, ignore_errors=True)
    h.say("== cold build")
    cold = build(work, out)
    h.say(f"  {cold:.0f} s\n== warm build")
    warm = build(work, out)
    h.say(f"  {warm:.0f} s\n== xz")
    image = next(out.glob("*.img"))
    started = time.monotonic()
    subprocess.run(["xz", "-T2", "-6", "--keep", "--force", str(image)], check=True, timeout=1800)
    compress = time.monotonic() - started
    xz = image.with_suffix(".img.xz").stat().st_size
    rootfs = work / "rootfs"

    def du(path: Path) -> int:
        text = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
        return int(text.split()[0])

    root_content = du(rootfs) - du(rootfs / "var") - du(rootfs / "boot" / "firmware")
    manifest = next(out.glob("*.manifest")).read_text().splitlines()
    debs = sum(line.startswith("deb ") for line in manifest)
    pypi = sum(line.startswith("pypi ") for line in manifest)
    boots = []
    memory: list[dict[str, float]] = []
    for i in range(args.boots):
        with tempfile.TemporaryDirectory(prefix="navign-bench-image-") as tmp:
            registered, used = boot_to_registered(image, Path(tmp))
        boots.append(registered)
        memory.append(used)
        h.say(f"  boot {i + 1}: registered after {registered:.1f} s; memory {used}")
    mb = 1_000_000
    figures = [
        h.Figure(NAME, "build, cold (empty work folder)", round(cold), "s"),
        h.Figure(NAME, "build, warm (cached base root)", round(warm), "s"),
        h.Figure(NAME, "xz -T2 -6 of the image", round(compress), "s"),
        h.Figure(NAME, "image, raw", round(image.stat().st_size / mb), "MB"),
        h.Figure(NAME, "image, blocks used (sparse)", round(image.stat().st_blocks * 512 / mb),
                 "MB"),
        h.Figure(NAME, "image, .img.xz", round(xz / mb), "MB", "<= 350", xz <= 350 * mb,
                 goal=True),
        h.Figure(NAME, "root file system content", round(root_content / mb), "MB", "<= 1200",
                 root_content <= 1200 * mb, goal=True),
        h.Figure(NAME, "Debian packages installed", debs, "packages"),
        h.Figure(NAME, "Python packages in the gateway's venv", pypi, "packages"),
        h.Figure(NAME, f"boot to registered under QEMU TCG (median of {len(boots)})",
                 round(h.median(boots), 1), "s"),
        h.Figure(NAME, "appliance: gateway idle resident memory (VmRSS), median",
                 round(h.median([m["VmRSS"] for m in memory]), 1), "MB"),
        h.Figure(NAME, "appliance: gateway idle private memory (RssAnon), median",
                 round(h.median([m["RssAnon"] for m in memory]), 1), "MB"),
        h.Figure(NAME, "appliance: Python with only the gateway's libraries, idle (VmRSS)",
                 round(h.median([m["Libraries"] for m in memory]), 1), "MB"),
    ]  # fmt: skip
    h.emit(figures, args.json)
    for folder in (work, out):
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
