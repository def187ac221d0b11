"""Where vmctl keeps its state: the only module that knows platformdirs.

Layout (``VMCTL_HOME`` replaces all three roots with one directory when set):

- data:  ``machines/<name>/`` (one directory per machine, see docs/internals.md)
- cache: ``images/`` (built kernel + initramfs) and ``build/`` (package cache)
- state: ``accel.json`` (which accelerator works on this host, remembered)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vmctl.errors import VmctlError

# sun_path is 108 bytes on Linux and 104 on macOS (including the NUL); use the smaller.
MAX_SOCKET_PATH = 103

MACHINE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")
DEFAULT_MACHINE = "default"


@dataclass(frozen=True)
class Paths:
    data: Path
    cache: Path
    state: Path

    @classmethod
    def from_env(cls) -> Paths:
        home = os.environ.get("VMCTL_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(data=root, cache=root / "cache", state=root)
        import platformdirs

        return cls(
            data=Path(platformdirs.user_data_dir("vmctl", appauthor=False)),
            cache=Path(platformdirs.user_cache_dir("vmctl", appauthor=False)),
            state=Path(platformdirs.user_state_dir("vmctl", appauthor=False)),
        )

    @property
    def machines(self) -> Path:
        return self.data / "machines"

    @property
    def images(self) -> Path:
        return self.cache / "images"

    @property
    def build_cache(self) -> Path:
        return self.cache / "build"

    @property
    def accel_file(self) -> Path:
        return self.state / "accel.json"

    @property
    def qemu_version_file(self) -> Path:
        return self.cache / "qemu-version.json"

    def machine_dir(self, name: str) -> Path:
        check_machine_name(name)
        return self.machines / name


def check_machine_name(name: str) -> None:
    if not MACHINE_NAME_RE.match(name):
        raise VmctlError(
            f"invalid machine name {name!r}",
            hint="use 1-31 characters: lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit",
        )


def check_socket_path(path: Path) -> None:
    """Unix socket paths are short on every OS; fail early with a way out."""
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise VmctlError(
            f"socket path is too long for this OS ({len(str(path))} > {MAX_SOCKET_PATH} bytes): "
            f"{path}",
            hint="set VMCTL_HOME to a shorter directory, e.g. export VMCTL_HOME=~/.vmctl",
        )


class _File:
    """A file at a fixed name inside a machine directory."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def __get__(self, obj: MachineFiles, objtype: type | None = None) -> Path:
        return obj.dir / self.filename


@dataclass(frozen=True)
class MachineFiles:
    """Every file in a machine directory (docs/internals.md describes each one)."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    config = _File("config.json")
    disk = _File("disk.qcow2")
    client_key = _File("id_ed25519")
    host_key = _File("ssh_host_ed25519_key")
    known_hosts = _File("known_hosts")
    seed_config = _File("seed.conf")
    qmp_socket = _File("qmp.sock")
    engine_socket = _File("engine.sock")
    serial_log = _File("serial.log")
    qemu_log = _File("qemu.log")
    qemu_pid = _File("qemu.pid")
    hostagent_pid = _File("hostagent.pid")
    hostagent_log = _File("hostagent.log")
    hostagent_lock = _File("hostagent.lock")
    status = _File("status.json")

    @property
    def ssh_alias(self) -> str:
        """The name the pinned host key is filed under in known_hosts."""
        return f"vmctl-{self.name}"
