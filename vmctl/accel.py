"""Which accelerator a machine boots with, and why.

A hardware accelerator can exist and still fail (QEMU aborts) or hang (nested KVM on
some hosts stops after the firmware). The host agent's boot watchdog falls back to tcg
and records the failure here, so the next start goes straight to tcg; the record is
keyed by the QEMU version and the host kernel, so an upgrade of either tries again.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmctl.atomic import write_atomic

HARDWARE = {"linux": "kvm", "darwin": "hvf", "windows": "whpx"}


@dataclass(frozen=True)
class Choice:
    accel: str
    reason: str


def host_os() -> str:
    system = platform.system().lower()
    return {"linux": "linux", "darwin": "darwin", "windows": "windows"}.get(system, system)


def host_fingerprint(qemu_version: str) -> str:
    return f"qemu {qemu_version}; {platform.system()} {platform.release()} {platform.machine()}"


def hardware_available(os_name: str) -> tuple[bool, str]:
    """Whether the OS offers a hardware accelerator to this user, and why (not)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False, f"the host CPU is {platform.machine()}, the guest is x86_64"
    if os_name == "linux":
        if not os.path.exists("/dev/kvm"):
            return False, "/dev/kvm does not exist (no KVM module loaded, or no VT-x/AMD-V)"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return False, "/dev/kvm is not writable by this user (add yourself to group kvm)"
        return True, "/dev/kvm is usable"
    if os_name == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "kern.hv_support"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out == "1":
            return True, "kern.hv_support is 1"
        return False, "Hypervisor.framework is not supported here (kern.hv_support != 1)"
    if os_name == "windows":
        return True, "WHPX is assumed; enable 'Windows Hypervisor Platform' if it fails"
    return False, f"no hardware accelerator is known for {os_name}"


class AccelMemory:
    """accel.json: the outcome of booting with each hardware accelerator on this host."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def failure(self, accel: str, fingerprint: str) -> str | None:
        entry = self._load().get(accel)
        if entry and entry.get("fingerprint") == fingerprint and not entry.get("works"):
            return str(entry.get("reason", "failed before"))
        return None

    def record(self, accel: str, fingerprint: str, works: bool, reason: str) -> None:
        data = self._load()
        data[accel] = {
            "works": works,
            "reason": reason,
            "fingerprint": fingerprint,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_atomic(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def entries(self) -> dict[str, dict[str, Any]]:
        return self._load()


def plan(requested: str, os_name: str, memory: AccelMemory, fingerprint: str) -> list[Choice]:
    """The accelerators to try, in order, each with the reason it is (or is last) tried.

    tcg always ends the list unless the user asked for a specific accelerator.
    """
    if requested not in ("auto", "tcg"):
        return [Choice(requested, "requested in the machine config")]
    hardware = HARDWARE.get(os_name)
    if requested == "tcg" or hardware is None:
        return [
            Choice(
                "tcg",
                "requested in the machine config"
                if requested == "tcg"
                else f"no hardware accelerator for {os_name}",
            )
        ]
    ok, why = hardware_available(os_name)
    if not ok:
        return [Choice("tcg", f"{hardware} unavailable: {why}")]
    failed = memory.failure(hardware, fingerprint)
    if failed:
        return [Choice("tcg", f"{hardware} failed on this host before: {failed}")]
    return [Choice(hardware, why), Choice("tcg", f"fallback after {hardware} failed")]
