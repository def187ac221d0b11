"""The QEMU command line for every accelerator and option, without running QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl.config import MachineConfig, Mount
from vmctl.errors import VmctlError
from vmctl.paths import MachineFiles
from vmctl.qemu import KERNEL_CMDLINE, BootImage, build_argv, escape, seed_items

FILES = MachineFiles(Path("/h/machines/dev"))
IMAGE = BootImage(kernel=Path("/img/vmlinux"), initrd=Path("/img/initrd.img"))


def argv_for(accel: str = "tcg", host_os: str = "linux", **config: object) -> list[str]:
    cfg = MachineConfig(name="dev", **config)  # type: ignore[arg-type]
    return build_argv(cfg, FILES, IMAGE, accel, 2222, host_os, qmp_port=4444)


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize(
    ("accel", "expected"),
    [
        ("kvm", ["-accel", "kvm", "-cpu", "host"]),
        ("hvf", ["-accel", "hvf", "-cpu", "host"]),
        ("whpx", ["-accel", "whpx,kernel-irqchip=off"]),
        ("tcg", ["-accel", "tcg,thread=multi", "-cpu", "max,-erms"]),
    ],
)
def test_accelerators(accel: str, expected: list[str]) -> None:
    argv = argv_for(accel)
    start = argv.index("-accel")
    assert argv[start : start + len(expected)] == expected
    assert argv.count("-accel") == 1


def test_unknown_accelerator() -> None:
    with pytest.raises(VmctlError, match="unknown accelerator"):
        argv_for("turbo")


def test_cpus_memory_and_boot_files() -> None:
    argv = argv_for(cpus=3, memory_mib=1536)
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-smp") == ["3"]
    assert option(argv, "-m") == ["1536M"]
    assert option(argv, "-kernel") == ["/img/vmlinux"]
    assert option(argv, "-initrd") == ["/img/initrd.img"]
    assert option(argv, "-append") == [KERNEL_CMDLINE]
    assert "cgroup_no_v1=all" in KERNEL_CMDLINE
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_serial_qmp_pidfile_on_unix() -> None:
    argv = argv_for()
    assert option(argv, "-chardev") == ["file,id=console,path=/h/machines/dev/serial.log"]
    assert option(argv, "-qmp") == ["unix:/h/machines/dev/qmp.sock,server=on,wait=off"]
    assert option(argv, "-pidfile") == ["/h/machines/dev/qemu.pid"]


def test_qmp_is_tcp_loopback_on_windows() -> None:
    argv = argv_for("whpx", host_os="windows")
    assert option(argv, "-qmp") == ["tcp:127.0.0.1:4444,server=on,wait=off"]


def test_data_disk_and_ssh_forward_on_loopback_only() -> None:
    argv = argv_for(disk_gib=7)
    (drive,) = option(argv, "-drive")
    assert drive.startswith("if=none,id=data,file=/h/machines/dev/disk.qcow2,format=qcow2")
    assert "virtio-blk-pci,drive=data,serial=vmctl-data" in option(argv, "-device")
    (netdev,) = option(argv, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    assert "0.0.0.0" not in " ".join(argv)


def test_shares_become_9p_devices(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    argv = argv_for(mounts=(Mount(str(a)), Mount(str(b), writable=False)))
    assert option(argv, "-fsdev") == [
        f"local,id=fs0,path={a},security_model=none",
        f"local,id=fs1,path={b},security_model=none,readonly=on",
    ]
    devices = option(argv, "-device")
    assert "virtio-9p-pci,fsdev=fs0,mount_tag=share0" in devices
    assert "virtio-9p-pci,fsdev=fs1,mount_tag=share1" in devices


def test_no_shares_on_windows(tmp_path: Path) -> None:
    with pytest.raises(VmctlError, match="not supported"):
        argv_for("whpx", host_os="windows", mounts=(Mount(str(tmp_path)),))


def test_seed_goes_through_fw_cfg() -> None:
    argv = argv_for()
    fw = option(argv, "-fw_cfg")
    assert fw == [f"name=opt/vmctl/{k},file={v}" for k, v in seed_items(FILES).items()]
    assert any("ssh_host_ed25519_key" in f for f in fw)


def test_commas_in_paths_are_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    argv = argv_for(mounts=(Mount(str(odd)),))
    assert f"path={tmp_path}/a,,b," in option(argv, "-fsdev")[0]
    assert escape("x,y,,z") == "x,,y,,,,z"


def test_bad_ssh_port() -> None:
    cfg = MachineConfig(name="dev")
    with pytest.raises(VmctlError, match="out of range"):
        build_argv(cfg, FILES, IMAGE, "tcg", 0, "linux")
