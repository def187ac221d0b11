"""The machine settings the guest reads at boot (fw_cfg opt/vmctl/config).

A shell fragment the guest's boot steps source: every value is shell-quoted, and
VMCTL_SHARES holds one "TAG MODE PATH" line per shared folder (PATH may hold spaces).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from vmctl.atomic import write_atomic
from vmctl.config import MachineConfig, guest_path_for
from vmctl.qemu import DATA_DISK_SERIAL, share_tag


def seed_config_text(config: MachineConfig) -> str:
    shares = "\n".join(
        f"{share_tag(i)} {'rw' if m.writable else 'ro'} {m.guest_path}"
        for i, m in enumerate(config.mounts)
    )
    values = {
        "VMCTL_MACHINE": config.name,
        "VMCTL_HOSTNAME": config.name,
        "VMCTL_DATA_SERIAL": DATA_DISK_SERIAL,
        "VMCTL_SHARES": shares,
        # the agent's registry options: plain-HTTP registries, the host's certs.d
        "VMCTL_INSECURE_REGISTRIES": " ".join(config.insecure_registries),
        "VMCTL_HOST_HOME": guest_path_for(str(Path.home())),
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def write_seed_config(path: Path, config: MachineConfig) -> None:
    write_atomic(path, seed_config_text(config))
