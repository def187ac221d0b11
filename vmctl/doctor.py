"""`vmctl machine doctor`: what vmctl depends on, what it chose, and why."""

from __future__ import annotations

import shutil
import subprocess

from vmctl import accel as accelmod
from vmctl.errors import VmctlError
from vmctl.hostagent import qemu_version
from vmctl.machine import Machine, State
from vmctl.paths import Paths
from vmctl.qemu import qemu_binary


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot run: {e}"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else f"exit code {out.returncode}"


def diagnose(paths: Paths, name: str) -> dict[str, list[str]]:
    report: dict[str, list[str]] = {}

    binary = qemu_binary()
    qemu = shutil.which(binary)
    qemu_img = shutil.which("qemu-img")
    report["QEMU"] = [
        f"{binary}: {qemu} ({first_line([qemu, '--version'])})"
        if qemu
        else f"{binary}: NOT FOUND (apt-get install qemu-system-x86 qemu-utils)",
        f"qemu-img: {qemu_img}" if qemu_img else "qemu-img: NOT FOUND (apt-get install qemu-utils)",
    ]

    os_name = accelmod.host_os()
    hardware = accelmod.HARDWARE.get(os_name, "none")
    ok, why = accelmod.hardware_available(os_name)
    version = qemu_version(qemu, paths.qemu_version_file) if qemu else "unknown"
    fingerprint = accelmod.host_fingerprint(version)
    memory = accelmod.AccelMemory(paths.accel_file)
    plan = accelmod.plan("auto", os_name, memory, fingerprint)
    lines = [
        f"host: {os_name}; hardware accelerator {hardware}: "
        f"{'available' if ok else 'unavailable'} ({why})",
        f"a machine with accel=auto boots with: {plan[0].accel} ({plan[0].reason})",
    ]
    for accel, entry in sorted(memory.entries().items()):
        verdict = "works" if entry.get("works") else "FAILED"
        current = (
            ""
            if entry.get("fingerprint") == fingerprint
            else " (another QEMU/kernel; will be tried again)"
        )
        lines.append(
            f"remembered: {accel} {verdict} at {entry.get('at')}: {entry.get('reason')}{current}"
        )
    if any(c.accel == "tcg" for c in plan[:1]):
        lines.append("tcg emulates the CPU in software: boots take seconds, builds run slower")
    report["Accelerator"] = lines

    try:
        from images.built import current_image

        built = current_image(paths.images)
    except Exception as e:  # a damaged image directory must not break doctor
        built = None
        report["Image"] = [f"cannot read the image: {e}"]
    else:
        if built is None:
            report["Image"] = ["not built yet (`vmctl image build`, or the first start builds it)"]
        else:
            report["Image"] = [
                f"id {built.image_id}, kernel {built.kernel_release}",
                f"initrd {built.initrd} ({built.initrd.stat().st_size / 2**20:.1f} MiB)",
                f"manifest {built.manifest}",
            ]

    docker = shutil.which("docker")
    report["Docker CLI"] = [
        f"{docker} ({first_line([docker, '--version'])})"
        if docker
        else "not installed (vmctl's own verbs still work)"
    ]

    machine = Machine(paths, name)
    if not machine.exists():
        report[f"Machine {name}"] = ["does not exist (`vmctl machine start` creates it)"]
        return report
    try:
        config = machine.config()
        status = machine.status()
    except VmctlError as e:
        report[f"Machine {name}"] = [f"BROKEN: {e.message}", f"hint: {e.hint}"]
        return report
    lines = [
        f"state: {status.state.value}" + (f" ({status.detail})" if status.detail else ""),
        f"config: {config.cpus} CPUs, {config.memory_mib} MiB, {config.disk_gib} GiB disk, "
        f"accel={config.accel}",
    ]
    lines += [f"share: {m.path} ({'rw' if m.writable else 'ro'})" for m in config.mounts]
    if status.state == State.RUNNING and status.agent:
        a = status.agent
        lines.append(f"running with {a.accel} ({a.accel_reason}); ssh 127.0.0.1:{a.ssh_port}")
        lines.append(
            "engine: "
            + ("answers /_ping" if status.engine_ok else f"NOT answering: {status.engine_error}")
        )
    for warning in status.agent.warnings if status.agent else []:
        lines.append(f"warning: {warning}")
    report[f"Machine {name}"] = lines
    return report
