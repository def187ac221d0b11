"""The QEMU command line for a machine: a pure function of its config and files.

Kept free of I/O so every accelerator and option can be unit-tested on any host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vmctl.config import MachineConfig
from vmctl.errors import VmctlError
from vmctl.paths import MachineFiles

# The data disk's virtio serial: the guest finds its disk by this, not by probing.
DATA_DISK_SERIAL = "vmctl-data"
# fw_cfg names the guest reads under /sys/firmware/qemu_fw_cfg/by_name/.
FW_CFG_PREFIX = "opt/vmctl"

# quiet: every console byte costs a VM exit, and under tcg that is slow; the guest's own
# "vmctl-*" lines mark boot progress. cgroup_no_v1=all: the unified v2 hierarchy only.
# panic=-1 with -no-reboot: a guest panic ends QEMU at once, so a failed boot is noticed.
# initcall_blacklist=crypto_kdf108_init: that initcall only self-tests the SP800-108 KDF
# (a library for keyctl's Diffie-Hellman; failing, it would only warn outside FIPS mode),
# and its test asks for a kernel module, which waits for the whole initramfs to be
# unpacked: the kernel's start stood still for most of that unpack (~0.3 s under tcg)
# instead of going on beside it.
KERNEL_CMDLINE = (
    "console=ttyS0 quiet panic=-1 rdinit=/init cgroup_no_v1=all "
    "initcall_blacklist=crypto_kdf108_init"
)
QEMU_INSTALL_HINT = (
    "install QEMU: apt-get install qemu-system-x86 qemu-utils (macOS: brew install qemu)"
)


@dataclass(frozen=True)
class BootImage:
    kernel: Path  # the uncompressed ELF vmlinux: QEMU boots it via PVH, no decompression
    initrd: Path


def qemu_binary(host_arch: str = "x86_64") -> str:
    """The guest is x86_64 for now, whatever the host."""
    return "qemu-system-x86_64"


def escape(value: str) -> str:
    """QEMU option values use ',' as a separator; a literal comma is written twice."""
    return value.replace(",", ",,")


def accel_args(accel: str, host_os: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "hvf":
        return ["-accel", "hvf", "-cpu", "host"]
    if accel == "whpx":
        # WHPX's in-kernel irqchip breaks some guests; the userspace one always works.
        return ["-accel", "whpx,kernel-irqchip=off"]
    if accel == "tcg":
        # max: every CPU feature QEMU can emulate, so images built for newer x86 run too;
        # but not ERMS: with it the kernel and glibc copy and clear memory with `rep movsb`,
        # which tcg runs one byte per iteration; without it they move 8 or more bytes per
        # step (unpacking the initramfs alone goes from ~1.2 s to ~0.6 s).
        return ["-accel", "tcg,thread=multi", "-cpu", "max,-erms"]
    raise VmctlError(f"unknown accelerator {accel!r}")


def build_argv(
    config: MachineConfig,
    files: MachineFiles,
    image: BootImage,
    accel: str,
    ssh_port: int,
    host_os: str,
    qmp_port: int = 0,
) -> list[str]:
    """The full argv. host_os is 'linux', 'darwin' or 'windows'.

    On Windows QMP listens on TCP (qmp_port on 127.0.0.1) since QEMU there has no unix
    sockets, and there is no virtio-9p, so shared folders are refused.
    """
    if not 1 <= ssh_port <= 65535:
        raise VmctlError(f"ssh port {ssh_port} is out of range")
    argv = [
        qemu_binary(),
        "-name",
        f"vmctl-{config.name}",
        "-machine",
        "q35",
        *accel_args(accel, host_os),
        "-smp",
        str(config.cpus),
        "-m",
        f"{config.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-rtc",
        "base=utc",
        "-kernel",
        escape(str(image.kernel)),
        "-initrd",
        escape(str(image.initrd)),
        "-append",
        KERNEL_CMDLINE,
        "-chardev",
        f"file,id=console,path={escape(str(files.serial_log))}",
        "-serial",
        "chardev:console",
        "-pidfile",
        escape(str(files.qemu_pid)),
    ]
    if host_os == "windows":
        if not qmp_port:
            raise VmctlError("a QMP port is needed on Windows")
        argv += ["-qmp", f"tcp:127.0.0.1:{qmp_port},server=on,wait=off"]
    else:
        argv += ["-qmp", f"unix:{escape(str(files.qmp_socket))},server=on,wait=off"]
    argv += [
        "-drive",
        f"if=none,id=data,file={escape(str(files.disk))},format=qcow2,"
        "discard=unmap,detect-zeroes=unmap",
        "-device",
        f"virtio-blk-pci,drive=data,serial={DATA_DISK_SERIAL}",
        # User-mode network: no host privileges; the only way in is this forward,
        # bound to the host's loopback.
        "-netdev",
        f"user,id=net0,ipv6=off,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
    ]
    if config.mounts and host_os == "windows":
        raise VmctlError(
            "shared folders are not supported with QEMU on Windows (it has no virtio-9p)",
            hint="create the machine with --no-mount",
        )
    for i, mount in enumerate(config.mounts):
        readonly = "" if mount.writable else ",readonly=on"
        argv += [
            "-fsdev",
            f"local,id=fs{i},path={escape(mount.path)},security_model=none{readonly}",
            "-device",
            f"virtio-9p-pci,fsdev=fs{i},mount_tag={share_tag(i)}",
        ]
    for item, path in seed_items(files).items():
        argv += ["-fw_cfg", f"name={FW_CFG_PREFIX}/{item},file={escape(str(path))}"]
    return argv


def share_tag(index: int) -> str:
    return f"share{index}"


def seed_items(files: MachineFiles) -> dict[str, Path]:
    """What the guest reads at boot through fw_cfg, by name."""
    return {
        "config": files.seed_config,
        "authorized_keys": files.client_key.with_suffix(".pub"),
        "ssh_host_ed25519_key": files.host_key,
    }
