"""A machine's configuration: what the user chose, validated, stored as config.json."""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vmctl.atomic import write_atomic
from vmctl.errors import VmctlError
from vmctl.paths import check_machine_name

CONFIG_VERSION = 1
ACCELERATORS = ("auto", "kvm", "hvf", "whpx", "tcg")

# The guest's RAM root (~64 MiB) and the kernel must fit with room to run containers.
# Measured under tcg: 224 MiB fails unpacking the initramfs, 256 MiB boots with nothing
# to spare, so 384 MiB is the least a machine may have.
MIN_MEMORY_MIB = 384
MAX_MEMORY_MIB = 1024 * 1024
MIN_DISK_GIB = 1
MAX_DISK_GIB = 64 * 1024
MAX_CPUS = 256

# Guest paths a share may not be, nor be below: the guest's own system.
GUEST_SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/vmctl",
)
# ... and paths a share may be below but not be (a folder under /tmp is fine, /tmp not).
GUEST_SYSTEM_DIRS = ("/", "/tmp", "/var", "/var/lib")


@dataclass(frozen=True)
class Mount:
    """A host folder shared into the guest at the same absolute path."""

    path: str
    writable: bool = True

    @property
    def guest_path(self) -> str:
        return guest_path_for(self.path)


@dataclass(frozen=True)
class MachineConfig:
    name: str
    cpus: int = 2
    memory_mib: int = 2048
    disk_gib: int = 20
    mounts: tuple[Mount, ...] = field(default_factory=tuple)
    accel: str = "auto"
    ssh_port: int = 0  # 0: pick a free port on 127.0.0.1 at each start
    insecure_registries: tuple[str, ...] = ()  # HOST[:PORT] the engine may reach over HTTP

    def to_json(self) -> str:
        data: dict[str, Any] = {"version": CONFIG_VERSION, **asdict(self)}
        data["mounts"] = [asdict(m) for m in self.mounts]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "config.json") -> MachineConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise VmctlError(f"{source} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise VmctlError(f"{source} must hold a JSON object")
        version = data.pop("version", None)
        if version != CONFIG_VERSION:
            raise VmctlError(f"{source} has config version {version!r}, expected {CONFIG_VERSION}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise VmctlError(f"{source} has unknown keys: {', '.join(unknown)}")
        try:
            mounts = tuple(Mount(**m) for m in data.pop("mounts", []))
            if isinstance(data.get("insecure_registries"), list):
                data["insecure_registries"] = tuple(data["insecure_registries"])
            config = cls(mounts=mounts, **data)
        except TypeError as e:
            raise VmctlError(f"{source} is malformed: {e}") from None
        config.validate(check_folders=False)
        return config

    def validate(self, check_folders: bool = True) -> None:
        """Everything about the config; with check_folders, also that shared folders exist
        on this host now (not when merely reading a stored config: a folder that went
        away is not a corrupt config)."""
        check_machine_name(self.name)
        _check_int("cpus", self.cpus, 1, MAX_CPUS, "e.g. --cpus 2")
        _check_int("disk size (GiB)", self.disk_gib, MIN_DISK_GIB, MAX_DISK_GIB, "e.g. --disk 20G")
        _check_int("ssh port", self.ssh_port, 0, 65535, "0 picks a free port at each start")
        if not isinstance(self.memory_mib, int) or isinstance(self.memory_mib, bool):
            raise VmctlError(
                f"memory must be a whole number of MiB, not {self.memory_mib!r}",
                hint="e.g. --memory 2G",
            )
        if self.memory_mib < MIN_MEMORY_MIB:
            raise VmctlError(
                f"memory {self.memory_mib} MiB is too small to boot the machine",
                hint=f"use at least {MIN_MEMORY_MIB} MiB, e.g. --memory 1G",
            )
        _check_int(
            "memory (MiB)", self.memory_mib, MIN_MEMORY_MIB, MAX_MEMORY_MIB, "e.g. --memory 2G"
        )
        if self.accel not in ACCELERATORS:
            raise VmctlError(
                f"unknown accelerator {self.accel!r}", hint=f"use one of {', '.join(ACCELERATORS)}"
            )
        for registry in self.insecure_registries:
            check_registry_name(registry)
        seen: set[str] = set()
        for m in self.mounts:
            if not isinstance(m.path, str) or not isinstance(m.writable, bool):
                raise VmctlError(
                    f"malformed mount {m!r}",
                    hint='write mounts as {"path": "/abs", "writable": true}',
                )
            check_mount_path(m.path)
            if check_folders:
                check_folder_exists(m.path)
            if m.guest_path in seen:
                raise VmctlError(f"folder {m.path} is shared twice", hint="share each folder once")
            seen.add(m.guest_path)


def _check_int(what: str, value: object, low: int, high: int, hint: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise VmctlError(
            f"{what} must be a whole number from {low} to {high}, not {value!r}", hint=hint
        )


_REGISTRY_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?"
)


def check_registry_name(name: object) -> None:
    if not isinstance(name, str) or not _REGISTRY_RE.fullmatch(name):
        raise VmctlError(
            f"invalid insecure registry {name!r}", hint="give HOST[:PORT], e.g. registry.lan:5000"
        )


def guest_path_for(host_path: str) -> str:
    """Host folders appear at the same path in the guest (C:\\Users\\x -> /c/Users/x)."""
    m = re.match(r"^([A-Za-z]):[\\/](.*)$", host_path)
    if m:
        rest = m.group(2).replace("\\", "/")
        return posixpath.normpath(str(PurePosixPath("/", m.group(1).lower(), rest)))
    return posixpath.normpath(host_path)


def check_mount_path(path: str) -> None:
    if not os.path.isabs(path):
        raise VmctlError(f"mount path {path!r} is not absolute", hint="give the full path")
    if any(ch in path for ch in "\n\r\0"):
        raise VmctlError(
            f"mount path {path!r} contains a line break or NUL", hint="rename the folder"
        )
    guest = guest_path_for(path)
    if guest in GUEST_SYSTEM_DIRS or any(
        guest == tree or guest.startswith(tree + "/") for tree in GUEST_SYSTEM_TREES
    ):
        raise VmctlError(
            f"mount path {path} would cover the guest's own {guest}",
            hint="share a folder elsewhere, such as your home directory",
        )


def check_folder_exists(path: str) -> None:
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise VmctlError(
            f"mount path {path} {what}",
            hint="create it, or share another folder (a machine's shares are in its config.json)",
        )


def parse_size_mib(text: str) -> int:
    """'2048', '2048M', '2G', '1.5G' -> MiB. A bare number means MiB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise VmctlError(f"cannot read size {text!r}", hint="write it like 2048, 2048M or 2G")
    number, unit = float(m.group(1)), m.group(2).upper()
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return int(number * factor)


def parse_size_gib(text: str) -> int:
    """'20', '20G', '512G', '1T' -> GiB. A bare number means GiB."""
    if re.fullmatch(r"\s*\d+\s*", text):
        return int(text)
    mib = parse_size_mib(text)
    if mib % 1024:
        raise VmctlError(f"disk size {text!r} must be a whole number of GiB", hint="e.g. 20G")
    return mib // 1024


def parse_mount(spec: str) -> Mount:
    """PATH[:ro|:rw] -> Mount."""
    path, writable = spec, True
    for suffix, flag in ((":ro", False), (":rw", True)):
        if spec.endswith(suffix):
            path, writable = spec[: -len(suffix)], flag
    path = os.path.abspath(os.path.expanduser(path))
    return Mount(path=path, writable=writable)


def load_config(path: Path) -> MachineConfig:
    try:
        text = path.read_text()
    except OSError as e:
        raise VmctlError(f"cannot read {path}: {e.strerror}") from None
    name = path.parent.name
    try:
        config = MachineConfig.from_json(text, source=str(path))
    except VmctlError as e:
        raise VmctlError(
            f"machine {name!r} has a corrupt config: {e.message}",
            hint=f"fix {path} by hand, or remove the machine with: vmctl machine rm --force {name}",
        ) from None
    if config.name != name:
        raise VmctlError(
            f"machine {name!r} has a corrupt config: it names machine {config.name!r}",
            hint=f"fix {path} by hand, or remove the machine with: vmctl machine rm --force {name}",
        )
    return config


def save_config(path: Path, config: MachineConfig) -> None:
    config.validate()
    write_atomic(path, config.to_json())
