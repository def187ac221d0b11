#!/usr/bin/env python3
"""Boot benchmark: cold `vmctl machine start` to engine-ready, against the floor.

The floor is the same QEMU, with the same machine type, accelerator, CPU model, memory
and kernel file, booting a busybox-only initramfs whose /init prints a line: nothing a
boot can do costs less. Both are measured in this one invocation, so the ratio holds on a
noisy machine. Also reported: the guest's memory in use after boot and the initramfs size.

    python bench/boot.py [--runs 5] [--record]

Uses $VMCTL_HOME if set (so an already built image is reused), else a temporary home
(the image is then built first, untimed). The warm-up start also settles which
accelerator works (the kvm watchdog fallback is paid there, not in the timed runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import report  # noqa: E402
from images.compress import compress  # noqa: E402
from images.cpio import write_cpio  # noqa: E402
from images.tree import Device, Dir, File, Tree  # noqa: E402
from vmctl.config import MachineConfig  # noqa: E402
from vmctl.qemu import KERNEL_CMDLINE, accel_args, qemu_binary  # noqa: E402

MACHINE = "bench"
FLOOR_MARK = "FLOOR-READY"


def vmctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"vmctl {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def engine_answers(sock: Path) -> bool:
    import socket

    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def timed_start(env: dict[str, str], sock: Path) -> tuple[float, float]:
    """(seconds until the engine answers on the host socket, seconds until the CLI returns)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmctl.cli", "machine", "start", MACHINE],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = None
    while ready is None:
        if engine_answers(sock):
            ready = time.monotonic() - t0
        elif proc.poll() is not None:
            raise SystemExit(
                f"vmctl machine start failed:\n{proc.stderr.read() if proc.stderr else ''}"
            )
        else:
            time.sleep(0.02)
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit("vmctl machine start failed")
    return ready, time.monotonic() - t0


def busybox_binary(busybox_tar: Path) -> bytes:
    """The Debian busybox-static binary, taken from the image's own busybox layer."""
    with tarfile.open(busybox_tar) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = outer.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=BytesIO(layer)) as inner:
        return inner.extractfile("bin/busybox").read()  # type: ignore[union-attr]


def floor_initramfs(busybox: bytes, out: Path) -> None:
    tree = Tree()
    for d in ("bin", "dev", "proc"):
        tree.add(d, Dir())
    tree.add("dev/console", Device("c", 5, 1))
    tree.add("bin/busybox", File(busybox, 0o755))
    script = f"#!/bin/busybox sh\necho {FLOOR_MARK}\n/bin/busybox poweroff -f\n"
    tree.add("init", File(script.encode(), 0o755))
    out.write_bytes(compress(write_cpio(tree), "gzip", 6))


def boot_floor(kernel: Path, initrd: Path, accel: str, cpus: int, memory_mib: int) -> float:
    argv = [
        qemu_binary(),
        "-machine",
        "q35",
        *accel_args(accel, "linux"),
        "-smp",
        str(cpus),
        "-m",
        f"{memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        KERNEL_CMDLINE,
        "-serial",
        "stdio",
    ]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen = b""
    try:
        while FLOOR_MARK.encode() not in seen:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                raise SystemExit("the floor VM exited before printing its mark")
            seen = seen[-64:] + chunk
        return time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()


def meminfo(env: dict[str, str]) -> dict[str, int]:
    """The guest's /proc/meminfo in MiB, once its boot has settled: the engine open and
    the last kernel modules (both after the engine answers), then 5 s more."""
    settled = (
        "for i in $(seq 600); do [ -e /run/vmctl/modules-done ] && break; sleep 0.1; done; "
        "sleep 5; cat /proc/meminfo"
    )
    out = vmctl(env, "machine", "ssh", MACHINE, "--", settled).stdout
    values = {}
    for line in out.splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) // 1024  # MiB
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    defaults = MachineConfig(name=MACHINE)  # the default machine's size, unless told
    parser.add_argument("--cpus", type=int, default=defaults.cpus)
    parser.add_argument("--memory", type=int, default=defaults.memory_mib, help="MiB")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()

    temp_home = None
    home = os.environ.get("VMCTL_HOME")
    if not home:
        temp_home = tempfile.mkdtemp(prefix="vmctl-bench-", dir="/tmp")
        home = temp_home
    env = dict(os.environ, VMCTL_HOME=home, DOCKER_CONFIG=str(Path(home) / "docker-config"))
    machine_dir = Path(home) / "machines" / MACHINE
    try:
        if machine_dir.exists():
            # Same vCPUs and memory as the floor, or the ratio compares unlike boots
            # (memory alone moves the kernel's start-up under tcg).
            config = json.loads((machine_dir / "config.json").read_text())
            if (config.get("cpus"), config.get("memory_mib")) != (args.cpus, args.memory):
                vmctl(env, "machine", "rm", "--force", MACHINE)
        if not machine_dir.exists():
            vmctl(
                env,
                "machine",
                "create",
                MACHINE,
                "--no-mount",
                "--cpus",
                str(args.cpus),
                "--memory",
                f"{args.memory}M",
            )
        status = json.loads(vmctl(env, "machine", "status", MACHINE, "--format", "json").stdout)
        if status["state"] != "stopped":
            vmctl(env, "machine", "stop", MACHINE)
        print(
            "warm-up start (builds the image if needed, settles the accelerator)…", file=sys.stderr
        )
        vmctl(env, "machine", "start", MACHINE)
        status = json.loads(vmctl(env, "machine", "status", MACHINE, "--format", "json").stdout)
        accel = status["accel"]
        vmctl(env, "machine", "stop", MACHINE)

        from images.built import current_image

        image = current_image(Path(home) / "cache" / "images")
        assert image is not None
        manifest = json.loads(image.manifest.read_text())

        starts, cli_returns, boots, floors, memory = [], [], [], [], {}
        with tempfile.TemporaryDirectory() as tmp:
            floor_img = Path(tmp) / "floor.img"
            floor_initramfs(busybox_binary(image.busybox_tar), floor_img)
            # Alternate ours and the floor, so the host's drift hits both alike.
            for i in range(args.runs):
                ready, returned = timed_start(env, machine_dir / "engine.sock")
                starts.append(ready)
                cli_returns.append(returned)
                status = json.loads(
                    vmctl(env, "machine", "status", MACHINE, "--format", "json").stdout
                )
                boots.append(status["boot_seconds"])
                if i == 0:
                    memory = meminfo(env)
                vmctl(env, "machine", "stop", MACHINE)
                floors.append(boot_floor(image.kernel, floor_img, accel, args.cpus, args.memory))
    finally:
        if temp_home:
            subprocess.run(
                [sys.executable, "-m", "vmctl.cli", "machine", "rm", "--force", MACHINE],
                env=env,
                capture_output=True,
            )
            shutil.rmtree(temp_home, ignore_errors=True)

    start_med, floor_med = statistics.median(starts), statistics.median(floors)
    used = memory["MemTotal"] - memory["MemAvailable"]
    free_used = (
        memory["MemTotal"]
        - memory["MemFree"]
        - memory["Buffers"]
        - memory["Cached"]
        - memory.get("SReclaimable", 0)
    )
    initrd_mib = image.initrd.stat().st_size / 2**20
    base = manifest["archives"]["base"]
    lines = [
        f"### Boot ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, "
        f"accel {accel}, {args.cpus} vCPU, {args.memory} MiB, {args.runs} runs)",
        "",
        "| measure | median | all runs |",
        "| --- | --- | --- |",
        f"| `vmctl machine start` → engine answers `/_ping` on the host socket | "
        f"{start_med:.2f} s | " + ", ".join(f"{s:.2f}" for s in starts) + " |",
        "| `vmctl machine start` → the command returns (it also writes the docker context) | "
        f"{statistics.median(cli_returns):.2f} s | "
        + ", ".join(f"{s:.2f}" for s in cli_returns)
        + " |",
        "| host agent: QEMU spawn → engine ready | "
        f"{statistics.median(boots):.2f} s | " + ", ".join(f"{b:.2f}" for b in boots) + " |",
        f"| floor: same QEMU + kernel, busybox-only initramfs → shell | {floor_med:.2f} s | "
        + ", ".join(f"{f:.2f}" for f in floors)
        + " |",
        f"| ratio start / floor | {start_med / floor_med:.2f}× | target ≤ 2× |",
        "",
        f"Guest memory after boot: {used} MiB in use counting the tmpfs root "
        f"(MemTotal − MemAvailable; Shmem {memory.get('Shmem', 0)} MiB), {free_used} MiB "
        f"excluding page cache and tmpfs (`free`'s used), of {memory['MemTotal']} MiB. "
        f"Target ≤ 64 MiB.",
        "",
        f"initramfs: {base['gzip_size'] / 2**20:.1f} MiB gzip-compressed (target ≤ 40 MiB); "
        f"booted uncompressed ({initrd_mib:.1f} MiB initrd.img, base "
        f"{base['compression']}), since inflating it costs more under tcg than it saves.",
        "",
    ]
    text = "\n".join(lines)
    report(text, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
