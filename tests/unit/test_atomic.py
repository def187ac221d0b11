"""vmctl.atomic.write_atomic: whole files, their mode, and nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmctl.atomic import write_atomic


def test_writes_text_and_bytes_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "config.json"  # the directory is created
    write_atomic(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomic(target, b"secret", 0o600, durable=True)
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["config.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pid"
    write_atomic(target, "1\n")

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "2\n")
    assert target.read_text() == "1\n"
    assert os.listdir(tmp_path) == ["pid"]
