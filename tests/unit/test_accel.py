"""Accelerator choice: hardware first when usable, tcg as the fallback, failures remembered."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl import accel
from vmctl.accel import AccelMemory, plan


@pytest.fixture
def memory(tmp_path: Path) -> AccelMemory:
    return AccelMemory(tmp_path / "accel.json")


def usable(monkeypatch: pytest.MonkeyPatch, ok: bool) -> None:
    monkeypatch.setattr(accel, "hardware_available", lambda os_name: (ok, "because"))


def test_hardware_then_tcg(monkeypatch: pytest.MonkeyPatch, memory: AccelMemory) -> None:
    usable(monkeypatch, True)
    assert [c.accel for c in plan("auto", "linux", memory, "fp")] == ["kvm", "tcg"]
    assert [c.accel for c in plan("auto", "darwin", memory, "fp")] == ["hvf", "tcg"]
    assert [c.accel for c in plan("auto", "windows", memory, "fp")] == ["whpx", "tcg"]


def test_unavailable_hardware_means_tcg_with_reason(
    monkeypatch: pytest.MonkeyPatch, memory: AccelMemory
) -> None:
    usable(monkeypatch, False)
    (choice,) = plan("auto", "linux", memory, "fp")
    assert choice.accel == "tcg" and "kvm unavailable: because" in choice.reason


def test_failure_is_remembered_per_fingerprint(
    monkeypatch: pytest.MonkeyPatch, memory: AccelMemory
) -> None:
    usable(monkeypatch, True)
    memory.record("kvm", "fp", False, "no boot progress within 15 s")
    (choice,) = plan("auto", "linux", memory, "fp")
    assert choice.accel == "tcg"
    assert "failed on this host before: no boot progress" in choice.reason
    # A different QEMU or host kernel tries the hardware again.
    assert plan("auto", "linux", memory, "other")[0].accel == "kvm"
    # Success overwrites the failure.
    memory.record("kvm", "fp", True, "booted")
    assert plan("auto", "linux", memory, "fp")[0].accel == "kvm"


def test_explicit_choice_has_no_fallback(memory: AccelMemory) -> None:
    assert [c.accel for c in plan("kvm", "linux", memory, "fp")] == ["kvm"]
    assert [c.accel for c in plan("tcg", "linux", memory, "fp")] == ["tcg"]


def test_unknown_os_gets_tcg(memory: AccelMemory) -> None:
    assert [c.accel for c in plan("auto", "plan9", memory, "fp")] == ["tcg"]


def test_corrupt_memory_file_is_ignored(memory: AccelMemory) -> None:
    memory.path.write_text("{broken")
    assert memory.failure("kvm", "fp") is None
    memory.record("kvm", "fp", False, "x")
    assert memory.failure("kvm", "fp") == "x"
