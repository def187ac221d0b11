"""State locations: VMCTL_HOME, platform defaults, names and socket path limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl.errors import VmctlError
from vmctl.paths import MachineFiles, Paths, check_machine_name, check_socket_path


def test_vmctl_home_overrides_everything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMCTL_HOME", str(tmp_path))
    paths = Paths.from_env()
    assert paths.machines == tmp_path / "machines"
    assert paths.images == tmp_path / "cache" / "images"
    assert paths.accel_file == tmp_path / "accel.json"
    assert paths.machine_dir("default") == tmp_path / "machines" / "default"


def test_platform_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VMCTL_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    paths = Paths.from_env()
    assert paths.machines == tmp_path / "data" / "vmctl" / "machines"
    assert paths.images == tmp_path / "cache" / "vmctl" / "images"
    assert paths.accel_file == tmp_path / "state" / "vmctl" / "accel.json"


@pytest.mark.parametrize("name", ["default", "dev-1", "a", "x_y", "a" * 31])
def test_good_names(name: str) -> None:
    check_machine_name(name)


@pytest.mark.parametrize("name", ["", "Dev", "-x", "a/b", "..", "a" * 32, "a b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(VmctlError, match="invalid machine name"):
        check_machine_name(name)


def test_socket_path_limit() -> None:
    check_socket_path(Path("/tmp/x/engine.sock"))
    with pytest.raises(VmctlError, match="too long") as e:
        check_socket_path(Path("/tmp/" + "d" * 120 + "/engine.sock"))
    assert "VMCTL_HOME" in e.value.hint


def test_machine_files_live_in_the_machine_dir() -> None:
    files = MachineFiles(Path("/m/dev"))
    assert files.engine_socket == Path("/m/dev/engine.sock")
    assert files.disk == Path("/m/dev/disk.qcow2")
    assert files.ssh_alias == "vmctl-dev"


def test_a_command_line_names_a_directory_exactly() -> None:
    from vmctl.procs import names_directory

    d = Path("/h/machines/a")
    assert names_directory("python -m vmctl.hostagent --dir /h/machines/a", d)
    assert names_directory("qemu -pidfile /h/machines/a/qemu.pid -m 1G", d)
    assert names_directory("qemu -chardev file,id=c,path=/h/machines/a/serial.log", d)
    assert not names_directory("python -m vmctl.hostagent --dir /h/machines/ab", d)
    assert not names_directory("qemu -pidfile /h/machines/ab/qemu.pid", d)
