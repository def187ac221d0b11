"""Published ports through the VM: `docker run -p` reaches the container from the host.

Host 127.0.0.1:H is a QEMU user-mode forward to the guest's port H, which the engine's DNAT
takes to the container (vmctl/ports.py, agent/network/ports.py). Ports are picked free on
the host for each test.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import pytest

from tests.e2e.conftest import VM, Engine

pytestmark = pytest.mark.e2e

HTTPD = "mkdir -p /www && echo hello-$TAG > /www/index.html && exec httpd -f -p 80 -h /www"

# a UDP echo inside the container's network namespace (busybox has no UDP server); the
# guest's python3 enters it with setns(2)
UDP_ECHO = """
import ctypes, os, socket, sys
fd = os.open(f"/proc/{sys.argv[1]}/ns/net", os.O_RDONLY)
assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
s.settimeout(60)
print("ready", flush=True)
data, peer = s.recvfrom(100)
s.sendto(b"echo:" + data, peer)
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def fetch(url: str, timeout: float = 5) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def bindable(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_tcp_port_reaches_the_container_and_goes_with_it(engine: Engine) -> None:
    port = free_port()
    name = engine.name("web")
    engine.ok(
        "run",
        "-d",
        "--name",
        name,
        "-e",
        "TAG=vm",
        "-p",
        f"{port}:80",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: fetch(url) == "hello-vm\n", 30, "the published port to answer")
    assert engine.ok("port", name) == f"80/tcp -> 127.0.0.1:{port}\n"
    row = engine.ok("ps", "--filter", f"name={name}", "--format", "{{.Ports}}")
    assert row.strip() == f"127.0.0.1:{port}->80/tcp"
    assert f"127.0.0.1:{port}/tcp" in engine.vm.status()["ports"]  # type: ignore[operator]
    engine.ok("stop", "-t", "1", name)
    assert bindable(port), "the host port is still held after stop"
    assert fetch(url, timeout=2) == ""


def test_udp_port(engine: Engine, running_vm: VM) -> None:
    port = free_port(socket.SOCK_DGRAM)
    name = engine.name("udp")
    engine.ok("run", "-d", "--name", name, "-p", f"{port}:53/udp", "busybox", "sleep", "600")
    pid = engine.ok("inspect", "-f", "{{.State.Pid}}", name).strip()
    command = f"exec python3 -c {shlex.quote(UDP_ECHO)} {pid}"
    server = subprocess.Popen(
        [sys.executable, "-m", "vmctl.cli", "machine", "ssh", running_vm.name, "--"]
        + ["sh", "-c", command],
        stdout=subprocess.PIPE,
        text=True,
        env=running_vm.env,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"ping-udp", ("127.0.0.1", port))
            assert client.recvfrom(100)[0] == b"echo:ping-udp"
    finally:
        server.kill()
        server.wait(30)


def test_a_port_taken_on_the_host_fails_the_run(engine: Engine) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        name = engine.name("taken")
        result = engine("run", "-d", "--name", name, "-p", f"{port}:80", "busybox", "sleep", "60")
    assert result.returncode == 125
    assert f"host port 127.0.0.1:{port}/tcp is not available on the host" in result.stderr
    assert engine.state(name)["Status"] == "created"


def test_forward_comes_back_after_the_guest_agent_restarts(engine: Engine, running_vm: VM) -> None:
    port = free_port()
    name = engine.name("again")
    engine.ok(
        "run",
        "-d",
        "--name",
        name,
        "-e",
        "TAG=again",
        "-p",
        f"{port}:80",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: fetch(url) == "hello-again\n", 30, "the published port to answer")
    old = running_vm.ssh("cat /run/vmctl/agent.pid").strip()
    running_vm.ssh(f"kill {old}")
    wait_for(
        lambda: running_vm.ssh("cat /run/vmctl/agent.pid", check=False).strip() not in ("", old),
        30,
        "a new agent pid",
    )
    # the kernel keeps the old rules meanwhile: wait for the new agent, whose start replaces
    # the nft table, then check through it
    wait_for(lambda: engine("port", name).returncode == 0, 60, "the new agent to answer")
    assert engine.ok("port", name) == f"80/tcp -> 127.0.0.1:{port}\n"
    assert fetch(url) == "hello-again\n"
    # the host agent's publisher reconnected: a new container is published too
    second, other = engine.name("after"), free_port()
    engine.ok(
        "run",
        "-d",
        "--name",
        second,
        "-e",
        "TAG=after",
        "-p",
        f"{other}:80",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    )
    wait_for(lambda: fetch(f"http://127.0.0.1:{other}/") == "hello-after\n", 30, "the new port")
    engine.ok("rm", "-f", name, second)
    wait_for(lambda: bindable(port) and bindable(other), 15, "the host ports to be free after rm")
