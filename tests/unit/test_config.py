"""Machine config: validation, sizes, mounts, the stored JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmctl.config import (
    MIN_MEMORY_MIB,
    MachineConfig,
    Mount,
    guest_path_for,
    load_config,
    parse_mount,
    parse_size_gib,
    parse_size_mib,
    save_config,
)
from vmctl.errors import VmctlError


def test_defaults_validate() -> None:
    MachineConfig(name="default").validate()


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("2048", 2048),
        ("2048M", 2048),
        ("2G", 2048),
        ("1.5G", 1536),
        ("2GiB", 2048),
        ("1T", 1048576),
    ],
)
def test_parse_size_mib(text: str, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "2X", "-1G", "1..2G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(VmctlError, match="cannot read size"):
        parse_size_mib(text)


def test_parse_size_gib() -> None:
    assert parse_size_gib("20") == 20
    assert parse_size_gib("20G") == 20
    assert parse_size_gib("1T") == 1024
    with pytest.raises(VmctlError, match="whole number of GiB"):
        parse_size_gib("1536M")


def test_memory_too_small_says_how_much() -> None:
    with pytest.raises(VmctlError, match="too small to boot") as e:
        MachineConfig(name="m", memory_mib=MIN_MEMORY_MIB - 1).validate()
    assert f"{MIN_MEMORY_MIB} MiB" in e.value.hint


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpus", 0, "cpus must be"),
        ("cpus", "2", "cpus must be"),
        ("cpus", True, "cpus must be"),
        ("disk_gib", 0, "disk size"),
        ("ssh_port", 70000, "ssh port"),
        ("accel", "fast", "unknown accelerator"),
        ("name", "Bad Name", "invalid machine name"),
        ("memory_mib", 1.5, "whole number of MiB"),
    ],
)
def test_bad_values(field: str, value: object, message: str) -> None:
    config = MachineConfig(name="m")
    with pytest.raises(VmctlError, match=message):
        MachineConfig(**{**config.__dict__, field: value}).validate()


def test_mount_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(VmctlError, match="does not exist"):
        MachineConfig(name="m", mounts=(Mount(str(missing)),)).validate()
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(VmctlError, match="is not a directory"):
        MachineConfig(name="m", mounts=(Mount(str(a_file)),)).validate()


def test_mount_may_not_cover_guest_system_paths() -> None:
    with pytest.raises(VmctlError, match="would cover the guest's own"):
        MachineConfig(name="m", mounts=(Mount("/"),)).validate()
    with pytest.raises(VmctlError, match="would cover the guest's own"):
        MachineConfig(name="m", mounts=(Mount("/usr"),)).validate()


def test_mount_twice_is_refused(tmp_path: Path) -> None:
    mounts = (Mount(str(tmp_path)), Mount(str(tmp_path), writable=False))
    with pytest.raises(VmctlError, match="shared twice"):
        MachineConfig(name="m", mounts=mounts).validate()


def test_parse_mount(tmp_path: Path) -> None:
    assert parse_mount(f"{tmp_path}:ro") == Mount(str(tmp_path), writable=False)
    assert parse_mount(f"{tmp_path}:rw") == Mount(str(tmp_path), writable=True)
    assert parse_mount(str(tmp_path)) == Mount(str(tmp_path), writable=True)


def test_guest_paths() -> None:
    assert guest_path_for("/home/me") == "/home/me"
    assert guest_path_for("C:\\Users\\me") == "/c/Users/me"


def test_round_trip(tmp_path: Path) -> None:
    machine_dir = tmp_path / "dev"
    machine_dir.mkdir()
    config = MachineConfig(name="dev", cpus=4, memory_mib=4096, mounts=(Mount(str(tmp_path)),))
    save_config(machine_dir / "config.json", config)
    assert load_config(machine_dir / "config.json") == config


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"version": 99, "name": "dev"}', "config version"),
        ('{"version": 1, "name": "dev", "colour": "red"}', "unknown keys: colour"),
        ('{"version": 1, "name": "dev", "cpus": "many"}', "cpus must be"),
        ('{"version": 1, "name": "other"}', "names machine 'other'"),
    ],
)
def test_corrupt_config_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    machine_dir = tmp_path / "dev"
    machine_dir.mkdir()
    (machine_dir / "config.json").write_text(content)
    with pytest.raises(VmctlError, match="corrupt config") as e:
        load_config(machine_dir / "config.json")
    assert message in e.value.message
    assert "vmctl machine rm --force dev" in e.value.hint


def test_saved_json_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    save_config(path, MachineConfig(name="x"))
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["memory_mib"] == 2048


@pytest.mark.parametrize(
    "path",
    ["/usr/lib", "/etc/ssh", "/var/lib/vmctl/x", "/tmp/../usr", "/bin", "/tmp", "/var", "/"],
)
def test_shares_may_not_cover_the_guest_system(path: str) -> None:
    with pytest.raises(VmctlError, match="would cover the guest's own"):
        MachineConfig(name="m", mounts=(Mount(path),)).validate(check_folders=False)


@pytest.mark.parametrize("path", ["/home/me", "/root", "/tmp/share", "/var/www", "/srv/x"])
def test_shares_anywhere_else_are_fine(path: str) -> None:
    MachineConfig(name="m", mounts=(Mount(path),)).validate(check_folders=False)


def test_a_vanished_folder_is_not_a_corrupt_config(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    machine_dir = tmp_path / "dev"
    machine_dir.mkdir()
    save_config(machine_dir / "config.json", MachineConfig(name="dev", mounts=(Mount(str(share)),)))
    share.rmdir()
    config = load_config(machine_dir / "config.json")  # reading it still works
    with pytest.raises(VmctlError, match="does not exist") as e:
        config.validate()  # what start checks
    assert "config.json" in e.value.hint
