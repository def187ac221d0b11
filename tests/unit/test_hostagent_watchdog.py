"""The boot watchdog against real stand-in processes writing a console log.

A stand-in for QEMU (a shell script) writes what a guest would to serial.log, or
nothing, or exits; the watchdog must tell a booted guest from a hung or failed one and
kill what it gives up on.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmctl import hostagent
from vmctl.errors import VmctlError
from vmctl.hostagent import (
    AccelFailed,
    BootStalled,
    EarlyCheck,
    HostAgent,
    QemuProcess,
    StopRequested,
)
from vmctl.paths import MachineFiles, Paths


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostAgent]:
    monkeypatch.setattr(hostagent, "HARDWARE_PROGRESS_BOUND", 0.5)
    monkeypatch.setattr(hostagent, "TCG_PROGRESS_BOUND", 0.5)
    monkeypatch.setattr(hostagent, "BOOT_DEADLINE", 10.0)
    machine = tmp_path / "m"
    machine.mkdir()
    a = HostAgent(Paths(tmp_path, tmp_path, tmp_path), MachineFiles(machine))
    yield a
    if a.qemu is not None and a.qemu.exit_code() is None:
        a.qemu.kill()


def stand_in(agent: HostAgent, script: str) -> subprocess.Popen[bytes]:
    """A process playing QEMU: `$LOG` is the serial console log it writes."""
    popen = subprocess.Popen(
        ["sh", "-c", script], env={"LOG": str(agent.files.serial_log), "PATH": "/usr/bin:/bin"}
    )
    agent.qemu = QemuProcess(popen.pid, popen)
    return popen


def test_a_guest_that_boots_is_ready(agent: HostAgent) -> None:
    stand_in(
        agent,
        'echo "vmctl-init: stage 1" >>$LOG; sleep 0.2; '
        'echo "vmctl-boot: [1.0] network up, ssh reachable" >>$LOG; sleep 0.2; '
        'echo "VMCTL-READY agent=0.1.0" >>$LOG; sleep 30',
    )
    ssh_ready: list[bool] = []
    agent.wait_for_boot("tcg", on_ssh_ready=lambda: ssh_ready.append(True))
    assert ssh_ready == [True]
    assert agent.qemu is not None and agent.qemu.exit_code() is None  # left running


LISTENING_GUEST = (
    'echo "vmctl-init: stage 1" >>$LOG; sleep 0.1; '
    'echo "vmctl-boot: [1.0] network up, ssh reachable" >>$LOG; sleep 0.1; '
    'echo "vmctl-agent: listening on /run/vmctl/engine.sock" >>$LOG; sleep 30'
)


def answering_engine(delay: float) -> socket.socket:
    """One end of a connection whose other end answers /_ping as the agent does, after
    ``delay`` (the rest of the boot, while the request waits in the socket's queue)."""
    ours, theirs = socket.socketpair()

    def answer() -> None:
        theirs.recv(4096)
        time.sleep(delay)
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
        theirs.close()

    threading.Thread(target=answer, daemon=True).start()
    return ours


def test_the_early_check_answered_ends_the_wait(agent: HostAgent) -> None:
    stand_in(agent, LISTENING_GUEST)  # no announcement ever comes
    early = EarlyCheck(lambda: answering_engine(0.3))
    started = time.monotonic()
    agent.wait_for_boot("tcg", on_ssh_ready=lambda: None, early=early)
    assert time.monotonic() - started < 5  # long before the 10 s deadline
    assert early.outcome(0) == (True, None)  # that answer closed its connection


def test_the_early_checks_connection_is_kept_when_it_stays_open(agent: HostAgent) -> None:
    stand_in(agent, LISTENING_GUEST)
    ours, theirs = socket.socketpair()

    def answer() -> None:
        theirs.recv(4096)
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")  # and stays open

    threading.Thread(target=answer, daemon=True).start()
    early = EarlyCheck(lambda: ours)
    agent.wait_for_boot("tcg", on_ssh_ready=lambda: None, early=early)
    assert early.outcome(0) == (True, ours) and ours.fileno() != -1
    ours.close()
    theirs.close()


def test_a_failed_early_check_leaves_the_wait_to_the_announcement(agent: HostAgent) -> None:
    stand_in(
        agent,
        LISTENING_GUEST.replace(
            "sleep 30", 'sleep 0.5; echo "VMCTL-READY agent=0.1.0" >>$LOG; sleep 30'
        ),
    )

    def refused() -> socket.socket:
        raise ConnectionRefusedError("no such socket")

    early = EarlyCheck(refused)
    agent.wait_for_boot("tcg", on_ssh_ready=lambda: None, early=early)
    assert not early.answered.is_set()
    assert "VMCTL-READY" in agent.files.serial_log.read_text()  # it waited for the line


def test_hardware_accelerator_without_progress_falls_back(agent: HostAgent) -> None:
    popen = stand_in(agent, "sleep 30")
    with pytest.raises(AccelFailed, match="no boot progress within"):
        agent.wait_for_boot("kvm", on_ssh_ready=lambda: None)
    assert popen.poll() is not None  # the hung VM was killed


def test_progress_under_hardware_is_not_a_hang(agent: HostAgent) -> None:
    stand_in(
        agent,
        'echo "vmctl-init: stage 1" >>$LOG; sleep 1; '
        'echo "VMCTL-READY agent=0.1.0" >>$LOG; sleep 30',
    )
    agent.wait_for_boot("kvm", on_ssh_ready=lambda: None)


def test_qemu_exiting_under_hardware_falls_back(agent: HostAgent) -> None:
    agent.files.qemu_log.write_text("qemu-system-x86_64: failed to set MSR 0x10a\n")
    stand_in(agent, "exit 3")
    with pytest.raises(AccelFailed, match="exit code 3.*MSR 0x10a"):
        agent.wait_for_boot("kvm", on_ssh_ready=lambda: None)


def test_qemu_exiting_under_tcg_is_an_error_with_the_console(agent: HostAgent) -> None:
    stand_in(agent, 'echo "Kernel panic - not syncing: out of memory" >>$LOG; exit 1')
    with pytest.raises(VmctlError, match="QEMU exited during boot") as e:
        agent.wait_for_boot("tcg", on_ssh_ready=lambda: None)
    assert "Kernel panic" in e.value.detail
    assert "memory" in e.value.hint


def test_a_guest_error_line_stops_the_boot(agent: HostAgent) -> None:
    popen = stand_in(
        agent,
        'echo "vmctl-init: stage 1" >>$LOG; '
        'echo "VMCTL-ERROR: data disk carries data" >>$LOG; sleep 30',
    )
    with pytest.raises(VmctlError, match="the guest failed to boot: data disk carries data"):
        agent.wait_for_boot("tcg", on_ssh_ready=lambda: None)
    assert popen.poll() is not None


def test_a_silent_vm_under_tcg_is_stalled(agent: HostAgent) -> None:
    popen = stand_in(agent, "sleep 30")
    with pytest.raises(BootStalled, match="no console output"):
        agent.wait_for_boot("tcg", on_ssh_ready=lambda: None)
    assert popen.poll() is not None


def test_stop_during_boot(agent: HostAgent) -> None:
    popen = stand_in(agent, 'echo "vmctl-init: stage 1" >>$LOG; sleep 30')
    agent.stop_event.set()
    with pytest.raises(StopRequested):
        agent.wait_for_boot("tcg", on_ssh_ready=lambda: None)
    assert popen.poll() is not None


def test_an_accelerator_failure_is_remembered_only_if_tcg_then_boots(
    agent: HostAgent, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vmctl import accel
    from vmctl.config import MachineConfig

    agent.config = MachineConfig(name="m")
    monkeypatch.setattr(accel, "hardware_available", lambda os_name: (True, "usable"))
    monkeypatch.setattr(accel, "host_os", lambda: "linux")
    monkeypatch.setattr(hostagent, "qemu_version", lambda binary, cache: "9.9")
    image = tmp_path / "img"
    image.mkdir()
    for name in ("vmlinux", "vmlinuz", "initrd.img", "manifest.json", "busybox.tar"):
        (image / name).write_text("x")
    (tmp_path / "images").mkdir(exist_ok=True)
    (agent.paths.images / "current").write_text('{"image_id": "img", "kernel_release": "6"}')
    (agent.paths.images / "img").symlink_to(image)
    memory = accel.AccelMemory(agent.paths.accel_file)

    def both_fail(img: object, which: str) -> None:
        if which == "kvm":
            raise AccelFailed("QEMU exited during boot (exit code 1): disk is locked")
        raise VmctlError("QEMU exited during boot (exit code 1): disk is locked")

    monkeypatch.setattr(agent, "launch", both_fail)
    with pytest.raises(VmctlError):
        agent.boot()
    assert memory.entries() == {}  # the VM's fault, not kvm's: nothing remembered

    def only_kvm_fails(img: object, which: str) -> None:
        if which == "kvm":
            raise AccelFailed("no boot progress within 15 s")

    monkeypatch.setattr(agent, "launch", only_kvm_fails)
    agent.boot()
    assert memory.entries()["kvm"]["works"] is False
    assert "no boot progress" in memory.entries()["kvm"]["reason"]


def test_exit_of_a_taken_over_qemu_is_not_a_signal() -> None:
    assert hostagent.describe_exit(hostagent.EXIT_UNKNOWN) == "exit status unknown"
    assert hostagent.describe_exit(-9) == "killed by SIGKILL"
    assert hostagent.describe_exit(3) == "exit code 3"


def test_qemu_version_is_asked_once_per_binary(tmp_path: Path) -> None:
    binary = tmp_path / "qemu-fake"
    count = tmp_path / "count"
    binary.write_text(f'#!/bin/sh\necho x >>{count}\necho "QEMU emulator version 9.1.0"\n')
    binary.chmod(0o755)
    cache = tmp_path / "cache" / "qemu-version.json"
    assert hostagent.qemu_version(str(binary), cache) == "9.1.0"
    assert hostagent.qemu_version(str(binary), cache) == "9.1.0"
    assert count.read_text().count("x") == 1  # the second answer came from the cache
    # an upgraded binary (another size and mtime) is asked again
    binary.write_text(f'#!/bin/sh\necho x >>{count}\necho "QEMU emulator version 10.0.0"\n')
    assert hostagent.qemu_version(str(binary), cache) == "10.0.0"
    assert count.read_text().count("x") == 2


def test_qemu_version_of_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VmctlError, match="not found on PATH"):
        hostagent.qemu_version("no-such-qemu-binary", tmp_path / "cache.json")


def test_a_check_in_flight_is_waited_for_and_its_connection_handed_over() -> None:
    ours, theirs = socket.socketpair()

    def answer() -> None:
        theirs.recv(4096)
        time.sleep(0.3)  # the announcement was read first
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    threading.Thread(target=answer, daemon=True).start()
    early = EarlyCheck(lambda: ours)
    early.start()
    assert early.outcome(5.0) == (True, ours)
    assert ours.fileno() != -1  # open: the caller's now
    ours.close()
    theirs.close()


def test_a_check_answered_too_late_closes_its_own_connection() -> None:
    ours, theirs = socket.socketpair()
    go = threading.Event()

    def answer() -> None:
        theirs.recv(4096)
        go.wait(5)
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    threading.Thread(target=answer, daemon=True).start()
    early = EarlyCheck(lambda: ours)
    early.start()
    assert early.outcome(0.1) == (False, None)  # given up on: the usual check follows
    go.set()
    early.thread.join(5)
    assert ours.fileno() == -1  # not left open for nobody
    theirs.close()


def test_the_early_check_waits_for_sshd_to_be_allowed_to_start(agent: HostAgent) -> None:
    stand_in(
        agent,
        'echo "vmctl-init: stage 1" >>$LOG; sleep 0.1; '
        'echo "vmctl-agent: listening on /run/vmctl/engine.sock" >>$LOG; sleep 0.5; '
        'echo "vmctl-boot: [1.0] network up, ssh reachable" >>$LOG; sleep 0.1; '
        'echo "VMCTL-READY agent=0.1.0" >>$LOG; sleep 30',
    )
    opened: list[float] = []
    ssh_at: list[float] = []

    def open_channel() -> socket.socket:
        opened.append(time.monotonic())
        raise ConnectionRefusedError("only counting")

    early = EarlyCheck(open_channel)
    agent.wait_for_boot("tcg", on_ssh_ready=lambda: ssh_at.append(time.monotonic()), early=early)
    early.thread.join(5)
    assert ssh_at and opened and opened[0] >= ssh_at[0]


def test_the_check_reads_an_answer_by_its_length_and_keeps_the_connection(
    agent: HostAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the announcement the check is judged on the answer's length: an agent that
    answers, then takes its time before closing (its first log record), is not waited for,
    and the open connection is kept for the first client."""
    ours, theirs = socket.socketpair()
    closed = threading.Event()

    def answer() -> None:
        theirs.recv(4096)
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        closed.wait(30)  # the connection stays open until the test is over
        theirs.close()

    threading.Thread(target=answer, daemon=True).start()
    monkeypatch.setattr(agent, "open_engine_channel", lambda: ours)
    try:
        started = time.monotonic()
        agent.check_engine()
        assert time.monotonic() - started < 5  # not the 30 s until the agent's end closes
        assert agent.checked_channel is ours
    finally:
        closed.set()
        ours.close()
