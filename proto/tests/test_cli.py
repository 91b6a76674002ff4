"""navign-proto's command line: success paths and one-line refusals (exit 1), in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from navign_proto.cli import main

EXAMPLE_MALL = Path(__file__).resolve().parents[1] / "examples" / "sample-mall.json"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("print('beacon')\n")
    key = tmp_path / "release.pem"
    assert run(capsys, "release", "keygen", "--out", str(key))[0] == 0
    manifest = tmp_path / "manifest.json"
    code, _, err = run(
        capsys,
        "release",
        "manifest",
        "--name",
        "app",
        "--version",
        "1.0.0",
        "--target",
        "esp32c3",
        "--secure-version",
        "1",
        "--app-dir",
        str(app),
        "--out",
        str(manifest),
    )
    assert code == 0, err
    envelope = tmp_path / "release.dsse.json"
    assert (
        run(capsys, "release", "sign", str(manifest), "--key", str(key), "--out", str(envelope))[0]
        == 0
    )
    return envelope


def test_release_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    envelope = release(tmp_path, capsys)
    code, out, _ = run(
        capsys,
        "release",
        "verify",
        str(envelope),
        "--trust",
        str(tmp_path / "release.pem.pub"),
        "--artifact",
        str(tmp_path / "app"),
    )
    assert code == 0
    assert out.startswith("OK: app 1.0.0 (app, esp32c3, secure_version 1)")


def test_keygen_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k.pem"
    assert run(capsys, "release", "keygen", "--out", str(key))[0] == 0
    before = key.read_bytes()
    code, _, err = run(capsys, "release", "keygen", "--out", str(key))
    assert code == 1
    assert "refusing to overwrite" in err
    assert key.read_bytes() == before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.write_text("{not json"), "malformed JSON"),
        (lambda p: p.write_text(json.dumps({"payloadType": "x"})), "exactly payloadType"),
        (lambda p: p.unlink(), "No such file"),
    ],
)
def test_verify_refusals_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: object, message: str
) -> None:
    envelope = release(tmp_path, capsys)
    mutate(envelope)  # type: ignore[operator]
    code, out, err = run(
        capsys, "release", "verify", str(envelope), "--trust", str(tmp_path / "release.pem.pub")
    )
    assert code == 1
    assert out == ""
    assert message in err
    assert err.startswith("navign-proto: ")
    assert err.count("\n") == 1


def test_bad_trust_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    envelope = release(tmp_path, capsys)
    bogus = tmp_path / "bogus.pub"
    bogus.write_text("hello")
    code, _, err = run(capsys, "release", "verify", str(envelope), "--trust", str(bogus))
    assert code == 1
    assert "P-256" in err


def test_invalid_manifest_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("x")
    code, _, err = run(
        capsys,
        "release",
        "manifest",
        "--name",
        "app",
        "--version",
        "1.0",
        "--target",
        "esp32",
        "--secure-version",
        "0",
        "--app-dir",
        str(tmp_path / "app"),
        "--out",
        str(tmp_path / "m.json"),
    )
    assert code == 1
    assert "invalid version" in err
    assert not (tmp_path / "m.json").exists()


def test_mall_check_and_checksum_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "mall", "check", str(EXAMPLE_MALL), "--json")
    assert code == 0
    checked = json.loads(out)
    # The same documents, as a sync response would carry them, give the same checksums.
    from navign_proto.mall import MallData

    served = tmp_path / "full.json"
    served.write_text(json.dumps({"data": MallData.from_file(EXAMPLE_MALL).documents()}))
    code, out, _ = run(capsys, "mall", "checksum", str(served), "--json")
    assert code == 0
    assert json.loads(out) == checked


def test_mall_check_rejects_an_invalid_mall(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mall = json.loads(EXAMPLE_MALL.read_text())
    mall["beacons"][1]["major"] = mall["beacons"][0]["major"]
    mall["beacons"][1]["minor"] = mall["beacons"][0]["minor"]
    path = tmp_path / "mall.json"
    path.write_text(json.dumps(mall))
    code, _, err = run(capsys, "mall", "check", str(path))
    assert code == 1
    assert "is used by more than one beacon" in err
