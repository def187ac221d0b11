"""The agent's logging: opened at once, set up on first use, nothing dropped after that."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from agent.logsetup import apply, configure_logging, debug_enabled, get_logger
log = get_logger("agent.demo")
configure_logging(sys.argv[1], sys.argv[2])
assert "logging" not in sys.modules  # opening the log does not import logging
print(debug_enabled())
log.info("first record")
apply()  # what the engine's opener does first
import logging
logging.getLogger("agent.other").warning("a module using logging directly")
log.debug("debug record")
"""


def run_script(script: str, *args: str) -> str:
    """``script`` in a fresh interpreter (no logging imported yet); its stdout."""
    result = subprocess.run(
        [sys.executable, "-S", "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return result.stdout.strip()


def run(log_file: Path, level: str) -> str:
    return run_script(SCRIPT, str(log_file), level)


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


HELD_SCRIPT = """
import sys, threading, time
from agent.logsetup import apply, configure_logging, get_logger
log = get_logger("agent.demo")
configure_logging(sys.argv[1], "INFO")
def answer():
    log.info("answered %s in %d ms", "/_ping", 3)
worker = threading.Thread(target=answer, name="conn-1")
worker.start()
worker.join()
log.debug("below the level")
log.warning("%d%% held", 100)
assert "logging" not in sys.modules  # held: the answering thread did not import it
with open(sys.argv[1]) as f:
    assert f.read() == ""  # nothing written yet
time.sleep(0.2)
if sys.argv[2] == "apply":
    apply()
    log.error("after")
"""


def run_held(log_file: Path, how: str) -> list[str]:
    run_script(HELD_SCRIPT, str(log_file), how)
    return log_file.read_text().splitlines()


def test_records_are_held_until_logging_is_set_up(tmp_path: Path) -> None:
    lines = run_held(tmp_path / "agent.log", "apply")
    assert [line.split(" ", 2)[2] for line in lines] == [
        "INFO agent.demo[conn-1]: answered /_ping in 3 ms",  # its own thread's name
        "WARNING agent.demo[MainThread]: 100% held",
        "ERROR agent.demo[MainThread]: after",
    ]
    # each with the time it was logged, not the time it was written
    held_at, written_at = lines[1].split(" ")[1], lines[2].split(" ")[1]
    assert held_at < written_at


def test_held_records_are_written_when_the_process_ends(tmp_path: Path) -> None:
    lines = run_held(tmp_path / "agent.log", "exit")
    assert [line.split(" ", 2)[2] for line in lines] == [
        "INFO agent.demo[conn-1]: answered /_ping in 3 ms",
        "WARNING agent.demo[MainThread]: 100% held",
    ]


ORDER_SCRIPT = """
import sys, threading, time
import agent.logsetup as logsetup
from agent.logsetup import apply, configure_logging, get_logger
log = get_logger("agent.demo")
configure_logging(sys.argv[1], "INFO")

class SlowStream:  # writing the held records takes a while
    def __init__(self, inner):
        self.inner = inner
    def write(self, text):
        time.sleep(0.01)
        return self.inner.write(text)
    def flush(self):
        self.inner.flush()

logsetup._stream = SlowStream(logsetup._stream)
for i in range(20):
    log.info("held %d", i)
setting_up = threading.Thread(target=apply)
setting_up.start()
time.sleep(0.05)  # apply() is writing the held records now
log.info("logged meanwhile")
setting_up.join()
"""


def test_a_record_logged_while_held_ones_are_written_comes_after_them(tmp_path: Path) -> None:
    log_file = tmp_path / "agent.log"
    run_script(ORDER_SCRIPT, str(log_file))
    messages = [line.split(": ", 1)[1] for line in log_file.read_text().splitlines()]
    assert messages == [f"held {i}" for i in range(20)] + ["logged meanwhile"]
