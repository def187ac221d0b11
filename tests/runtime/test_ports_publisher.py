"""The host side of published ports (vmctl/ports.py) against a native agent.

The host agent's publisher runs here as it runs for a VM, on streams to the agent's socket,
with QEMU's monitor replaced by a recorder of the `hostfwd_*` commands it is given (the data
path through QEMU is tested in tests/e2e/test_ports.py). A module of its own: once a host
publisher has connected, the agent publishes ports for the host (HostIp "" means the host's
127.0.0.1), for the rest of its life.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.docker_suite import DockerCLI
from tests.runtime.conftest import NativeAgent
from vmctl import client
from vmctl import ports as host_ports
from vmctl.ports import HostForwards, PortPublisher, qmp_monitor


class Monitor:
    """Stands in for QEMU's human monitor: records commands, can refuse the next add."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, command: str) -> str:
        with self.lock:
            self.commands.append(command)
        return ""

    def seen(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if text in self.commands:
                    return True
            time.sleep(0.05)
        return False


@pytest.fixture
def publisher(agent: NativeAgent) -> Iterator[tuple[PortPublisher, Monitor]]:
    monitor = Monitor()
    forwards = HostForwards(monitor)
    running = PortPublisher(lambda: client.connect_unix(agent.socket), forwards)
    running.start()
    try:
        assert running.synced.wait(10), "the publisher did not connect"
        yield running, monitor
    finally:
        running.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_publish_and_withdraw_through_the_host(
    dk: DockerCLI, publisher: tuple[PortPublisher, Monitor]
) -> None:
    running, monitor = publisher
    port = free_port()
    name = dk.name("fwd")
    dk.ok("run", "-d", "--name", name, "-p", f"{port}:80", "busybox", "sleep", "600")
    assert monitor.seen(f"hostfwd_add net0 tcp:127.0.0.1:{port}-:{port}")
    assert running.forwards.listing() == [f"127.0.0.1:{port}/tcp"]
    # a bare -p publishes on the host's 127.0.0.1 only: that is what ps and port show
    assert dk.ok("port", name) == f"80/tcp -> 127.0.0.1:{port}\n"
    dk.ok("stop", "-t", "1", name)
    assert monitor.seen(f"hostfwd_remove net0 tcp:127.0.0.1:{port}")
    assert running.forwards.listing() == []


def test_a_port_taken_on_the_host_fails_the_start(
    dk: DockerCLI, publisher: tuple[PortPublisher, Monitor]
) -> None:
    running, monitor = publisher
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        name = dk.name("taken")
        result = dk("run", "-d", "--name", name, "-p", f"{port}:80", "busybox", "sleep", "600")
    assert result.returncode == 125
    assert f"host port 127.0.0.1:{port}/tcp is not available on the host" in result.stderr
    assert dk.ok("inspect", "-f", "{{.State.Status}}", name).strip() == "created"
    assert not any(f":{port}-" in c for c in monitor.commands)
    # nothing stays allocated in the engine either: the port can be published at once
    dk.ok("start", name)
    assert monitor.seen(f"hostfwd_add net0 tcp:127.0.0.1:{port}-:{port}")


def test_forwards_come_back_after_the_publisher_reconnects(
    dk: DockerCLI, agent: NativeAgent, publisher: tuple[PortPublisher, Monitor]
) -> None:
    running, monitor = publisher
    tcp, udp = free_port(), free_port()
    name = dk.name("again")
    dk.ok(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"0.0.0.0:{tcp}:80",
        "-p",
        f"{udp}:53/udp",
        "busybox",
        "sleep",
        "600",
    )
    assert monitor.seen(f"hostfwd_add net0 udp:127.0.0.1:{udp}-:{udp}")
    assert monitor.seen(f"hostfwd_add net0 tcp:0.0.0.0:{tcp}-:{tcp}")
    running.stop()  # the host agent went away: its forwards went with it
    assert monitor.seen(f"hostfwd_remove net0 tcp:0.0.0.0:{tcp}")
    fresh = Monitor()
    again = PortPublisher(lambda: client.connect_unix(agent.socket), HostForwards(fresh))
    again.start()
    try:
        assert again.synced.wait(10)
        assert fresh.seen(f"hostfwd_add net0 tcp:0.0.0.0:{tcp}-:{tcp}")
        assert fresh.seen(f"hostfwd_add net0 udp:127.0.0.1:{udp}-:{udp}")
        dk.ok("rm", "-f", name)
        assert fresh.seen(f"hostfwd_remove net0 udp:127.0.0.1:{udp}")
        assert again.forwards.listing() == []
    finally:
        again.stop()


@pytest.fixture
def qemu_monitor(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A QEMU with no machine, only the user-mode netdev the VM has (net0), and its QMP."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("qemu-system-x86_64 is missing")
        pytest.skip("qemu-system-x86_64 is missing")
    qmp = tmp_path / "qmp.sock"
    process = subprocess.Popen(
        [
            binary,
            "-machine",
            "none",
            "-display",
            "none",
            "-nodefaults",
            "-netdev",
            "user,id=net0,ipv6=off",
            "-qmp",
            f"unix:{qmp},server=on,wait=off",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not qmp.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield qmp_monitor(qmp)
    finally:
        process.kill()
        process.wait(10)


def test_forwards_through_a_real_qemu_monitor(qemu_monitor: Callable[[str], str]) -> None:
    forwards = HostForwards(qemu_monitor)
    tcp, udp = free_port(), free_port()
    ports = [
        {"proto": "tcp", "host_ip": "", "host_port": tcp},
        {"proto": "udp", "host_ip": "", "host_port": udp},
    ]
    assert forwards.publish("c1", ports) == ""
    with socket.create_connection(("127.0.0.1", tcp), timeout=5):
        pass  # QEMU listens on the host port now
    listing = qemu_monitor("info usernet")
    assert f"127.0.0.1 {tcp}" in " ".join(listing.split())
    # a second host agent for this QEMU finds the forwards and keeps those still asked for
    again = HostForwards(qemu_monitor)
    again.sync({"c1": ports[:1]})
    assert again.listing() == [f"127.0.0.1:{tcp}/tcp"]
    assert f" {udp} " not in " ".join(qemu_monitor("info usernet").split()) + " "
    again.withdraw("c1")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # our connection's TIME_WAIT
        probe.bind(("127.0.0.1", tcp))  # free again
    # QEMU's own refusal reaches the caller (the port is taken under our check's feet)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert "QEMU refused" in forwards._add(host_ports.Forward("tcp", "127.0.0.1", busy))
