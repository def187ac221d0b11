"""The machine spine end to end: a real VM under QEMU, reached as a user reaches it.

Tests run in file order and share one machine; each leaves it running unless its
point is to stop it, and the last ones remove it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import VM, pid_alive, require

pytestmark = pytest.mark.e2e


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def curl_ping(vm: VM) -> str:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--unix-socket", str(vm.socket), "http://x/_ping"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def manifest(vm: VM) -> dict[str, object]:
    current = json.loads((vm.home / "cache" / "images" / "current").read_text())
    image_id = current["image_id"] if isinstance(current, dict) else str(current)
    data = json.loads((vm.home / "cache" / "images" / image_id / "manifest.json").read_text())
    assert isinstance(data, dict)
    return data


def machine_with_disk(
    vm: VM, name: str, tmp_path: Path, size: int, contents: dict[int, bytes]
) -> Path:
    """A new machine whose data disk holds `contents` (offset -> bytes) instead of zeros."""
    vm.vmctl("machine", "create", name, "--no-mount", "--memory", "512M", "--disk", "1G")
    machine_dir = vm.home / "machines" / name
    raw = tmp_path / f"{name}.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
        for offset, data in contents.items():
            f.seek(offset)
            f.write(data)
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            str(raw),
            str(machine_dir / "disk.qcow2"),
        ],
        check=True,
    )
    return machine_dir


def leftovers(vm: VM) -> list[str]:
    found = [
        name
        for name in ("engine.sock", "qmp.sock", "qemu.pid", "hostagent.pid")
        if (vm.dir / name).exists()
    ]
    for pid_file in ("qemu.pid", "hostagent.pid"):
        pid = vm.pid(pid_file)
        if pid_alive(pid):
            found.append(f"{pid_file} process {pid}")
    marker = str(vm.dir)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and pid_alive(int(proc.name)):
                found.append(f"process {proc.name}: {cmdline[:120]}")
    return found


# -- first start --------------------------------------------------------------------------


def test_start_from_empty_home_built_the_image(vm: VM) -> None:
    data = manifest(vm)
    assert data["kernel_release"]
    assert vm.socket.exists()
    assert "is running" in vm.start_output


def test_accelerator_choice_is_explained(vm: VM) -> None:
    """kvm exists here but hangs nested: the watchdog must fall back to tcg and say so."""
    status = vm.status()
    assert status["state"] == "running"
    accel_file = vm.home / "accel.json"
    if status["accel"] == "tcg" and os.path.exists("/dev/kvm"):
        assert (
            "falling back" in vm.start_output
            or "instead" in vm.start_output
            or "failed on this host before" in str(status["accel_reason"])
        )
        remembered = json.loads(accel_file.read_text())
        assert remembered["kvm"]["works"] is False
    doctor = vm.vmctl("machine", "doctor").stdout
    assert "Accelerator:" in doctor and str(status["accel"]) in doctor


def test_ssh_runs_the_debian_kernel(vm: VM) -> None:
    release = vm.vmctl("machine", "ssh", "--", "uname", "-r").stdout.strip()
    assert release == manifest(vm)["kernel_release"]
    assert release.endswith("-amd64")


def test_engine_socket_answers_ping(vm: VM) -> None:
    require("curl")
    assert curl_ping(vm) == "OK"
    assert vm.socket.stat().st_mode & 0o777 == 0o600


def test_docker_cli_shows_our_server(vm: VM) -> None:
    docker = require("docker")
    out = subprocess.run(
        [docker, "-H", f"unix://{vm.socket}", "version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    server = out.stdout.split("Server:", 1)[1]
    assert "vmctl agent" in server
    assert "1.50" in server


def test_docker_context_created(vm: VM) -> None:
    docker = require("docker")
    out = subprocess.run(
        [docker, "--context", "vmctl-default", "version", "--format", "{{.Server.APIVersion}}"],
        capture_output=True,
        text=True,
        env=vm.env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.50"


def test_guest_root_allows_pivot_root_and_has_cgroup2_only(vm: VM) -> None:
    # The root is a bind mount of the RAM root, so pivot_root (every container start)
    # works; on the bare initramfs rootfs it fails with EINVAL.
    out = vm.ssh(
        "mkdir -p /tmp/pivot && unshare -m sh -c 'mount -t tmpfs t /tmp/pivot && "
        "mkdir /tmp/pivot/old && cd /tmp/pivot && pivot_root . old && echo PIVOT-OK'"
    )
    assert "PIVOT-OK" in out
    mounts = vm.ssh("cat /proc/mounts")
    assert "cgroup2 /sys/fs/cgroup cgroup2" in mounts
    assert not [line for line in mounts.splitlines() if line.split()[2] == "cgroup"]
    controllers = vm.ssh("cat /sys/fs/cgroup/cgroup.controllers").split()
    for controller in ("cpu", "memory", "pids", "io"):
        assert controller in controllers
    assert "/var/lib/vmctl ext4" in mounts


def test_per_cpu_page_lists_are_capped(vm: VM) -> None:
    # Left at the kernel's default, each vCPU may keep ~27 MiB of freed pages to itself.
    assert vm.ssh("cat /proc/sys/vm/percpu_pagelist_high_fraction").strip() == "1024"
    highs = [
        int(line.split()[1])
        for line in vm.ssh("cat /proc/zoneinfo").splitlines()
        if line.strip().startswith("high:")
    ]
    assert highs and max(highs) <= 1024, highs


def test_the_kernel_autoloads_modules_through_the_images_modprobe(vm: VM) -> None:
    # no /sbin/modprobe (the requests made before /init fail at once); the boot sets the path
    assert vm.ssh("cat /proc/sys/kernel/modprobe").strip() == "/usr/lib/vmctl/modprobe"
    assert vm.ssh("[ -e /sbin/modprobe ] && echo present || echo absent").strip() == "absent"
    # tun unloaded, then its device opened: the kernel asks for char-major-10-200
    script = (
        "for i in $(seq 300); do [ -e /run/vmctl/modules-done ] && break; sleep 0.1; done; "
        "rmmod tun && [ ! -d /sys/module/tun ] && mknod /tmp/tun c 10 200 && "
        "{ exec 3<>/tmp/tun; } 2>/dev/null; rm -f /tmp/tun; "
        "[ -d /sys/module/tun ] && echo autoloaded"
    )
    assert vm.ssh(script).strip() == "autoloaded"


def test_module_requests_wait_while_the_boot_loads_its_set(vm: VM) -> None:
    # busybox's modprobe takes a module still loading for loaded and ends at once, so while
    # the boot loads its later set (modules-loading), a request waits for the set to end:
    # the open of tun's device stays blocked until the marker goes, then succeeds.
    script = """
for i in $(seq 300); do [ -e /run/vmctl/modules-done ] && break; sleep 0.1; done
rm -f /tmp/tun /tmp/tun-result /tmp/tun-partial
rmmod tun && mknod /tmp/tun c 10 200 && touch /run/vmctl/modules-loading || exit 1
( exec 3<>/tmp/tun && echo opened >/tmp/tun-partial && mv /tmp/tun-partial /tmp/tun-result ) \
    2>/dev/null &
sleep 1
echo "after 1 s: $(cat /tmp/tun-result 2>/dev/null || echo waiting)"
rm /run/vmctl/modules-loading
for i in $(seq 50); do [ -e /tmp/tun-result ] && break; sleep 0.1; done
echo "then: $(cat /tmp/tun-result 2>/dev/null || echo nothing)"
rm -f /tmp/tun /tmp/tun-result
"""
    lines = vm.ssh(script).strip().splitlines()
    assert lines[-2:] == ["after 1 s: waiting", "then: opened"], lines


def test_sshd_listens_on_the_guest_address_and_nonlocal_bind_is_off_again(vm: VM) -> None:
    # sshd may bind 10.0.2.15 before eth0 has it (boot.d/35-ssh); not for the VM's life
    assert vm.ssh("cat /proc/sys/net/ipv4/ip_nonlocal_bind").strip() == "0"
    listening = [line.split()[1] for line in vm.ssh("cat /proc/net/tcp").splitlines()[1:]
                 if line.split()[3] == "0A"]  # fmt: skip
    assert "0F02000A:0016" in listening, listening  # 10.0.2.15:22, nowhere else
    assert not [address for address in listening if address.endswith(":0016")
                and address != "0F02000A:0016"]  # fmt: skip


def test_env_points_docker_at_the_machine(vm: VM) -> None:
    out = vm.vmctl("machine", "env", "--shell", "bash").stdout
    assert f"export DOCKER_HOST=unix://{vm.socket}" in out
    fish = vm.vmctl("machine", "env", "--shell", "fish").stdout
    assert f"set -gx DOCKER_HOST unix://{vm.socket};" in fish
    ps = vm.vmctl("machine", "env", "--shell", "powershell").stdout
    assert f'$Env:DOCKER_HOST = "unix://{vm.socket}"' in ps


def test_shared_folder_both_ways(vm: VM) -> None:
    token = uuid.uuid4().hex
    (vm.share / "from-host.txt").write_text(token)
    assert vm.ssh(f"cat {vm.share}/from-host.txt") == token
    vm.ssh(f"echo {token}-guest > {vm.share}/from-guest.txt")
    assert (vm.share / "from-guest.txt").read_text().strip() == f"{token}-guest"


def test_status_ls_and_logs(vm: VM) -> None:
    status = vm.status()
    assert status["state"] == "running" and status["engine_ok"] is True
    rows = json.loads(vm.vmctl("machine", "ls", "--format", "json").stdout)
    assert [r["state"] for r in rows if r["name"] == "default"] == ["running"]
    console = vm.vmctl("machine", "logs", "--console").stdout
    assert "VMCTL-READY" in console
    agent_log = vm.vmctl("machine", "logs", "--agent").stdout
    assert agent_log.strip() and "cannot read" not in agent_log


def test_starting_a_running_machine_is_an_error(vm: VM) -> None:
    out = vm.vmctl("machine", "start", check=False)
    assert out.returncode == 1
    assert "error: machine 'default' is already running" in out.stderr
    assert "hint: " in out.stderr and "Traceback" not in out.stderr


def test_supervisor_restarts_a_killed_agent(vm: VM) -> None:
    qemu_before = vm.pid("qemu.pid")
    old = vm.ssh("cat /run/vmctl/agent.pid").strip()
    vm.ssh(f"kill -9 {old}")
    wait_for(
        lambda: vm.ssh("cat /run/vmctl/agent.pid", check=False).strip() not in ("", old),
        15,
        "a new agent pid",
    )
    wait_for(lambda: curl_ping(vm) == "OK", 15, "the engine to answer again")
    assert vm.pid("qemu.pid") == qemu_before  # no machine restart


# -- stop, start, crashes -------------------------------------------------------------------


def test_data_disk_survives_stop_and_start(vm: VM) -> None:
    token = uuid.uuid4().hex
    vm.ssh(f"echo {token} > /var/lib/vmctl/persist.txt")  # no sync: stop must flush it
    vm.vmctl("machine", "stop")
    assert leftovers(vm) == []
    # The guest shut down cleanly: the power button worked and the disk was unmounted.
    console = (vm.dir / "serial.log").read_text(errors="replace")
    assert "vmctl-shutdown: data disk unmounted" in console
    assert "did not power off" not in (vm.dir / "hostagent.log").read_text()
    assert vm.status()["state"] == "stopped"
    out = vm.vmctl("machine", "stop", check=False)
    assert out.returncode == 1 and "is not running" in out.stderr
    vm.vmctl("machine", "start")
    assert vm.ssh("cat /var/lib/vmctl/persist.txt").strip() == token
    assert curl_ping(vm) == "OK"


def test_qemu_killed_by_hand(vm: VM) -> None:
    qemu = vm.pid("qemu.pid")
    assert qemu is not None
    os.kill(qemu, signal.SIGKILL)
    wait_for(lambda: vm.status()["state"] == "stopped", 30, "status to say stopped")
    status = vm.status()
    assert "QEMU exited unexpectedly" in str(status["detail"]), status
    assert leftovers(vm) == []
    vm.vmctl("machine", "start")
    assert curl_ping(vm) == "OK"


def test_host_agent_killed_by_hand(vm: VM) -> None:
    agent = vm.pid("hostagent.pid")
    qemu = vm.pid("qemu.pid")
    assert agent is not None and qemu is not None
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: not pid_alive(agent), 10, "the host agent to die")
    status = vm.status()
    assert status["state"] == "degraded", status
    assert "host agent is not running" in str(status["detail"])
    vm.vmctl("machine", "start")
    assert vm.pid("qemu.pid") == qemu  # taken over, not rebooted
    assert curl_ping(vm) == "OK"
    assert vm.ssh("echo alive").strip() == "alive"


def test_stop_without_a_host_agent(vm: VM) -> None:
    """A degraded machine (host agent gone, VM running) stops cleanly from the CLI."""
    agent = vm.pid("hostagent.pid")
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: not pid_alive(agent), 10, "the host agent to die")
    assert vm.status()["state"] == "degraded"
    vm.vmctl("machine", "stop")
    assert leftovers(vm) == []
    status = vm.status()
    assert status["state"] == "stopped"
    assert "stopped while its host agent was not running" in str(status["detail"])
    assert "vmctl-shutdown: done" in (vm.dir / "serial.log").read_text(errors="replace")
    vm.vmctl("machine", "start")
    assert curl_ping(vm) == "OK"


def test_restart(vm: VM) -> None:
    qemu = vm.pid("qemu.pid")
    vm.vmctl("machine", "restart")
    assert vm.pid("qemu.pid") != qemu
    assert curl_ping(vm) == "OK"


def test_rm_refuses_a_running_machine_then_force(vm: VM) -> None:
    out = vm.vmctl("machine", "rm", "default", check=False)
    assert out.returncode == 1 and "is running" in out.stderr
    vm.vmctl("machine", "rm", "--force", "default")
    assert not vm.dir.exists()
    assert leftovers(vm) == []


def test_a_disk_with_foreign_data_is_never_formatted(vm: VM, tmp_path: Path) -> None:
    """The guest formats a blank data disk only; anything else stops the boot, untouched."""
    machine_dir = machine_with_disk(
        vm, "foreign", tmp_path, 64 * 2**20, {0: b"precious user data, not a filesystem vmctl made"}
    )
    out = vm.vmctl("machine", "start", "foreign", check=False, timeout=300)
    assert out.returncode == 1
    assert "not a vmctl-data filesystem; refusing to format it" in out.stderr
    assert "Traceback" not in out.stderr
    assert vm.vmctl("machine", "status", "foreign").stdout.startswith("foreign: stopped")
    back = tmp_path / "back.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(machine_dir / "disk.qcow2"), str(back)], check=True
    )
    assert back.read_bytes()[:47] == b"precious user data, not a filesystem vmctl made"
    vm.vmctl("machine", "rm", "foreign")


def test_image_build_is_reproducible(vm: VM, tmp_path: Path) -> None:
    """A second build from a fresh cache (same package files) gives the same bytes."""
    build = vm.home / "cache" / "build"
    cache = tmp_path / "cache"
    cache.mkdir()
    for part in ("apt", "debs"):  # package lists and .debs: the inputs, not the outputs
        shutil.copytree(build / part, cache / part, symlinks=True)
    images = tmp_path / "images"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "images",
            "build",
            "--images-dir",
            str(images),
            "--cache-dir",
            str(cache),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    mine = json.loads((images / "current").read_text())["image_id"]
    theirs = json.loads((vm.home / "cache" / "images" / "current").read_text())["image_id"]
    assert mine == theirs
    for name in ("initrd.img", "manifest.json", "vmlinux", "busybox.tar"):
        a = (images / mine / name).read_bytes()
        b = (vm.home / "cache" / "images" / theirs / name).read_bytes()
        assert a == b, name


def test_a_format_cut_short_is_done_again(vm: VM, tmp_path: Path) -> None:
    """A first boot stopped during mkfs leaves the marker 1 MiB before the end and no
    label: the next boot recognises the disk as its own and formats it again."""
    size = 2**30
    machine_with_disk(
        vm,
        "halfway",
        tmp_path,
        size,
        {0: b"\x53\xef half-written ext4 structures", size - 2**20: b"vmctl-data: formatting"},
    )
    vm.vmctl("machine", "start", "halfway", timeout=300)
    out = vm.vmctl("machine", "ssh", "halfway", "--", "grep /var/lib/vmctl /proc/mounts").stdout
    assert "ext4" in out
    vm.vmctl("machine", "rm", "--force", "halfway")
