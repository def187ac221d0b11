"""Following the serial console log as it grows."""

from __future__ import annotations

from pathlib import Path

from vmctl.console import ConsoleLog, clean


def test_new_lines_are_incremental_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    console = ConsoleLog(path)
    assert console.new_lines() == []
    path.write_bytes(b"one\r\ntw")
    assert console.new_lines() == ["one"]
    with open(path, "ab") as f:
        f.write(b"o\nthree\n")
    assert console.new_lines() == ["two", "three"]
    assert console.new_lines() == []


def test_clean_strips_escapes() -> None:
    assert clean(b"\x1bc\x1b[?7l\x1b[2JBooting\r") == "Booting"
    assert clean(b"\x00bell\x07") == "bell"


def test_tail(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    assert ConsoleLog(path).tail() == "(no console output)"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert ConsoleLog(path).tail(3) == "line 97\nline 98\nline 99"
