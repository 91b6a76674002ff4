"""The shared log set-up: one JSON object per line, extras kept; quiet loggers held at WARNING."""

from __future__ import annotations

import json
import logging

import pytest

from navign_proto import logs


def test_json_lines_carry_extras_and_exceptions(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json", quiet=("chatty",))
    log = logging.getLogger("navign.test")
    log.info("synced %d documents", 27, extra={"entity": "mall-x"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logging.getLogger("chatty").info("not shown")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "synced 27 documents"
    assert lines[0]["entity"] == "mall-x"
    assert lines[0]["level"] == "info"
    assert lines[0]["time"].endswith("Z")
    assert "ValueError: boom" in lines[1]["exception"]
    assert len(lines) == 2


def test_journald_lines_leave_the_time_to_journald(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    logs.configure("info", "text")
    logging.getLogger("navign.test").warning("disk nearly full")
    assert capsys.readouterr().err == "WARNING navign.test: disk nearly full\n"
