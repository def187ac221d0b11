"""The agent's logging: opened at once, set up on first use, nothing dropped after that."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from agent.logsetup import configure_logging, debug_enabled, get_logger
log = get_logger("agent.demo")
configure_logging(sys.argv[1], sys.argv[2])
assert "logging" not in sys.modules  # opening the log does not import logging
print(debug_enabled())
log.info("first record")
import logging
logging.getLogger("agent.other").warning("a module using logging directly")
log.debug("debug record")
"""


def run(log_file: Path, level: str) -> str:
    result = subprocess.run(
        [sys.executable, "-S", "-c", SCRIPT, str(log_file), level],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return result.stdout.strip()


def test_records_reach_the_file_once_logging_is_used(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "agent.log"  # the parent is created
    assert run(log_file, "info") == "False"
    text = log_file.read_text()
    assert "INFO agent.demo[MainThread]: first record" in text
    assert "WARNING agent.other[MainThread]: a module using logging directly" in text
    assert "debug record" not in text


def test_debug_level(tmp_path: Path) -> None:
    log_file = tmp_path / "agent.log"
    assert run(log_file, "DEBUG") == "True"
    assert "DEBUG agent.demo[MainThread]: debug record" in log_file.read_text()


def test_a_log_that_cannot_be_opened_fails_at_once(tmp_path: Path) -> None:
    from agent.logsetup import configure_logging

    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        configure_logging(str(tmp_path / "file" / "agent.log"))
