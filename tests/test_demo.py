"""`make demo`'s script, run for real: it must keep working as the project grows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAVIGN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", str(ROOT / "demo" / "run.sh"), str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert out.count("refused as expected") == 6
    assert "refers to unknown area 'area-nowhere'" in out
    assert "SHA-256 does not match the manifest" in out
    assert "0 valid signature(s) by trusted release keys" in out
    assert "is older than 1.2.0" in out
    assert "global                  sha256:" in out
    assert "-----BEGIN PUBLIC KEY-----" in out
    assert "imported 27 documents into mall-riverside" in out
    assert "assigned to mall-riverside" in out
    assert "FIRMWARE_SIGNATURE_INVALID" in out
    assert "rollout of fw-esp32-1.1.0-" in out
    assert "confirmed on 12 of 12 beacons" in out
    assert f"Everything above ran for real in {tmp_path / 'demo'}" in out.strip().splitlines()[-1]
