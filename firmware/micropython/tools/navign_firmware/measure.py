"""Measurements of the beacon firmware on the MicroPython unix port, for the benchmarks.

:func:`signature_verification_ms` times ``navign.p256.verify`` on a golden vector (the first
signature of the ``app-esp32c3`` release in ``proto/vectors/manifests.json``), timed inside
MicroPython with ``time.ticks_us`` so that process start-up is not counted; :func:`host_cpu` names
the processor the numbers were measured on.

Public: :func:`signature_verification_ms`, :func:`host_cpu`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
from pathlib import Path
from typing import Final

from navign_firmware import unix

#: ``proto/vectors`` in a checkout.
VECTORS: Final = unix.FIRMWARE_ROOT.parents[1] / "proto" / "vectors"

_SCRIPT: Final = """
import binascii, json, time
from navign import p256
point = binascii.unhexlify(%r)
digest = binascii.unhexlify(%r)
sig = binascii.unhexlify(%r)
if not p256.verify(point, digest, sig):  # warm-up: computes the table of multiples of G once
    raise SystemExit("the golden vector does not verify")
times = []
for _ in range(%d):
    t = time.ticks_us()
    ok = p256.verify(point, digest, sig)
    times.append(time.ticks_diff(time.ticks_us(), t) / 1000)
    if not ok:
        raise SystemExit("the golden vector does not verify")
print(json.dumps(times))
"""


def _golden_vector() -> tuple[bytes, bytes, bytes]:
    """(point, SHA-256 of the PAE, raw signature) of the app-esp32c3 manifest vector."""
    keys = json.loads((VECTORS / "keys.json").read_text())["keys"]
    points = {k["keyid"]: bytes.fromhex(k["public_point_hex"]) for k in keys}
    case = json.loads((VECTORS / "manifests.json").read_text())["valid"][0]
    envelope = json.loads(case["envelope"])
    signature = envelope["signatures"][0]
    pae = bytes.fromhex(case["pae_hex"])
    return (
        points[signature["keyid"]],
        hashlib.sha256(pae).digest(),
        base64.b64decode(signature["sig"]),
    )


def signature_verification_ms(repeats: int = 20) -> list[float]:
    """Verify the golden vector ``repeats`` times in one MicroPython process (96 KiB heap,
    after one untimed warm-up call) and return each verification's time in milliseconds.

    Raises :class:`~navign_firmware.unix.MicroPythonError` if the vector does not verify.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    point, digest, sig = _golden_vector()
    result = unix.run(_SCRIPT % (point.hex(), digest.hex(), sig.hex(), repeats))
    times = json.loads(result.stdout.strip().splitlines()[-1])
    return [float(t) for t in times]


def host_cpu() -> str:
    """The host processor's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"
