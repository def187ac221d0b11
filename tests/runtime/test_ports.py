"""Published ports (`-p`, `-P`, `docker port`) against the native agent, with the docker CLI.

The agent runs in a private network namespace; "the machine" (where a published port is
reached) is that namespace, entered with nsenter. Connections come from 127.0.0.1 (the
output chain and route_localnet), from the bridge's gateway address, and from a container
to its own published port (hairpin).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.docker_suite import DockerCLI
from tests.runtime.conftest import NativeAgent

HTTPD = "mkdir -p /www && echo hello-$PORTNAME > /www/index.html && exec httpd -f -p 80 -h /www"


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        message = f"{tool} is needed to reach the agent's network namespace"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def netns(agent: NativeAgent) -> list[str]:
    """The command prefix that runs a program in the agent's network namespace."""
    _need("nsenter")
    _need("nft")
    return agent.netns()


def fetch(netns: list[str], url: str, timeout: int = 5) -> str:
    """GET url from the agent's network namespace; "" when nothing answers."""
    code = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode(),"
        " end='')"
    )
    result = subprocess.run(
        [*netns, sys.executable, "-c", code, url, str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    return result.stdout if result.returncode == 0 else ""


def fetch_until(netns: list[str], url: str, deadline: float = 10.0) -> str:
    """httpd needs a moment after `docker run -d` returns."""
    end = time.monotonic() + deadline
    while True:
        text = fetch(netns, url, timeout=2)
        if text or time.monotonic() > end:
            return text
        time.sleep(0.2)


def nft_list(netns: list[str], kind: str, name: str) -> str:
    return subprocess.run(
        [*netns, "nft", "list", kind, "ip", "vmctl", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def gateway(dk: DockerCLI, name: str) -> str:
    return dk.ok("inspect", "-f", "{{.NetworkSettings.Gateway}}", name).strip()


def free_in_netns(netns: list[str], port: int, proto: str = "tcp") -> bool:
    kind = "SOCK_STREAM" if proto == "tcp" else "SOCK_DGRAM"
    code = (
        f"import socket; s = socket.socket(socket.AF_INET, socket.{kind}); "
        f"s.bind(('0.0.0.0', {port}))"
    )
    result = subprocess.run([*netns, sys.executable, "-c", code], capture_output=True, timeout=30)
    return result.returncode == 0


@pytest.fixture
def listener(netns: list[str]) -> Iterator[int]:
    """A program on the machine (not a container) listening on a TCP port."""
    code = (
        "import socket, sys, time; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); "
        "print(s.getsockname()[1], flush=True); time.sleep(120)"
    )
    process = subprocess.Popen([*netns, sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait(10)


def test_tcp_publish_reaches_the_container_from_loopback_gateway_and_itself(
    dk: DockerCLI, netns: list[str]
) -> None:
    name = dk.name("web")
    dk.ok(
        "run",
        "-d",
        "--name",
        name,
        "-e",
        "PORTNAME=tcp",
        "-p",
        "18080:80",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    )
    assert fetch_until(netns, "http://127.0.0.1:18080/") == "hello-tcp\n"
    assert fetch(netns, f"http://{gateway(dk, name)}:18080/") == "hello-tcp\n"
    # hairpin: the container reaches its own published port through the host's address
    request = f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {gateway(dk, name)} 18080'
    inside = dk.ok("exec", name, "sh", "-c", request)
    assert inside.startswith("HTTP/1.1 200") and inside.endswith("\n\nhello-tcp\n"), inside
    assert dk.ok("port", name) == "80/tcp -> 0.0.0.0:18080\n"
    assert dk.ok("port", name, "80") == "0.0.0.0:18080\n"
    ports = json.loads(dk.ok("inspect", "-f", "{{json .NetworkSettings.Ports}}", name))
    assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18080"}]}
    bindings = json.loads(dk.ok("inspect", "-f", "{{json .HostConfig.PortBindings}}", name))
    assert bindings == {"80/tcp": [{"HostIp": "", "HostPort": "18080"}]}
    assert "0.0.0.0:18080->80/tcp" in dk.ok("ps", "--filter", f"name={name}")


def test_host_ip_binding_is_shown_and_only_there(dk: DockerCLI, netns: list[str]) -> None:
    name = dk.name("local")
    dk.ok(
        "run",
        "-d",
        "--name",
        name,
        "-e",
        "PORTNAME=lo",
        "-p",
        "127.0.0.1:18090:80",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    )
    assert fetch_until(netns, "http://127.0.0.1:18090/") == "hello-lo\n"
    assert fetch(netns, f"http://{gateway(dk, name)}:18090/", timeout=2) == ""
    row = dk.ok("ps", "--filter", f"name={name}", "--format", "{{.Ports}}")
    assert row.strip() == "127.0.0.1:18090->80/tcp"


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
data, peer = s.recvfrom(100)
s.sendto(b"echo:" + data, peer)
print(data.decode(), flush=True)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"ping-udp", ("127.0.0.1", int(sys.argv[1])))
print(s.recvfrom(100)[0].decode())
"""


def test_udp_publish(dk: DockerCLI, netns: list[str]) -> None:
    # busybox has no UDP server: a listener runs in the container's network namespace
    name = dk.name("udp")
    dk.ok("run", "-d", "--name", name, "-p", "15353:53/udp", "busybox", "sleep", "600")
    pid = dk.ok("inspect", "-f", "{{.State.Pid}}", name).strip()
    inside = ["nsenter", f"--net=/proc/{pid}/ns/net"]
    server = subprocess.Popen(
        [*inside, sys.executable, "-c", UDP_ECHO], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        answer = subprocess.run(
            [*netns, sys.executable, "-c", UDP_ASK, "15353"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert answer.stdout == "echo:ping-udp\n", answer.stderr
        assert server.stdout.readline() == "ping-udp\n"
    finally:
        server.kill()
        server.wait(10)
    assert dk.ok("port", name) == "53/udp -> 0.0.0.0:15353\n"
    assert "udp . 15353" in nft_list(netns, "map", "published-port")


def test_ranges(dk: DockerCLI, netns: list[str]) -> None:
    name = dk.name("range")
    script = (
        "for p in 80 81 82; do mkdir -p /w$p && echo port-$p > /w$p/index.html && "
        "httpd -p $p -h /w$p; done; exec sleep 600"
    )
    dk.ok("run", "-d", "--name", name, "-p", "18100-18102:80-82", "busybox", "sh", "-c", script)
    for offset in range(3):
        assert fetch_until(netns, f"http://127.0.0.1:{18100 + offset}/") == f"port-{80 + offset}\n"
    assert dk.ok("port", name).splitlines() == [
        "80/tcp -> 0.0.0.0:18100",
        "81/tcp -> 0.0.0.0:18101",
        "82/tcp -> 0.0.0.0:18102",
    ]


def test_publish_all_exposed_ports_on_ephemeral_ports(dk: DockerCLI, netns: list[str]) -> None:
    name = dk.name("all")
    dk.ok(
        "run",
        "-d",
        "--name",
        name,
        "-e",
        "PORTNAME=all",
        "--expose",
        "80",
        "--expose",
        "9999/udp",
        "-P",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    )
    lines = dk.ok("port", name).splitlines()
    assert len(lines) == 2, lines
    by_port = dict(line.split(" -> ") for line in lines)
    tcp_port = int(by_port["80/tcp"].rsplit(":", 1)[1])
    udp_port = int(by_port["9999/udp"].rsplit(":", 1)[1])
    assert 32768 <= tcp_port <= 60999 and 32768 <= udp_port <= 60999
    assert fetch_until(netns, f"http://127.0.0.1:{tcp_port}/") == "hello-all\n"


def test_same_host_port_twice_fails_and_the_first_keeps_working(
    dk: DockerCLI, netns: list[str]
) -> None:
    first, second = dk.name("first"), dk.name("second")
    dk.ok(
        "run",
        "-d",
        "--name",
        first,
        "-e",
        "PORTNAME=first",
        "-p",
        "18200:80",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    )
    result = dk(
        "run", "-d", "--name", second, "-p", "18200:80", "-p", "18201:80", "busybox", "sleep", "60"
    )
    assert result.returncode == 125
    assert "Bind for 0.0.0.0:18200 failed: port is already allocated" in result.stderr
    assert dk.ok("inspect", "-f", "{{.State.Status}}", second).strip() == "created"
    assert fetch_until(netns, "http://127.0.0.1:18200/") == "hello-first\n"
    # nothing of the failed start stays published: 18201 (asked for with it) is free
    assert "18201" not in nft_list(netns, "map", "published-port")
    assert free_in_netns(netns, 18201)


def test_port_taken_by_a_program_on_the_machine(
    dk: DockerCLI, netns: list[str], listener: int
) -> None:
    name = dk.name("taken")
    result = dk("run", "-d", "--name", name, "-p", f"{listener}:80", "busybox", "sleep", "60")
    assert result.returncode == 125
    assert f"0.0.0.0:{listener}:80/tcp: address already in use" in result.stderr
    assert dk.ok("inspect", "-f", "{{.State.Status}}", name).strip() == "created"


def test_stop_frees_the_port_and_rm_leaves_no_rule(dk: DockerCLI, netns: list[str]) -> None:
    name = dk.name("stop")
    dk.ok(
        "run",
        "-d",
        "--name",
        name,
        "-e",
        "PORTNAME=stop",
        "-p",
        "18300:80",
        "-p",
        "18301:81/udp",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    )
    assert fetch_until(netns, "http://127.0.0.1:18300/") == "hello-stop\n"
    assert not free_in_netns(netns, 18300)  # the agent holds the port while it runs
    dk.ok("stop", "-t", "1", name)
    table = nft_list(netns, "map", "published-port")
    assert "18300" not in table and "18301" not in table
    assert free_in_netns(netns, 18300) and free_in_netns(netns, 18301, "udp")
    assert fetch(netns, "http://127.0.0.1:18300/", timeout=2) == ""
    assert dk.ok("port", name) == ""
    dk.ok("start", name)  # a restart publishes again
    assert fetch_until(netns, "http://127.0.0.1:18300/") == "hello-stop\n"
    dk.ok("rm", "-f", name)
    assert "18300" not in nft_list(netns, "map", "published-port")
    assert free_in_netns(netns, 18300)


def test_bad_port_specs_are_refused_at_create(dk: DockerCLI) -> None:
    result = dk("create", "-p", "80:80/sctp", "busybox", "true")
    assert result.returncode != 0
    assert "sctp" in result.stderr
    result = dk("create", "-p", "1.2.3:80:80", "busybox", "true")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_publish_from_a_user_defined_network(dk: DockerCLI, netns: list[str]) -> None:
    network = dk.name("net")
    dk.ok("network", "create", network)
    try:
        name = dk.name("usernet")
        dk.ok(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "-e",
            "PORTNAME=usernet",
            "-p",
            "18400:80",
            "busybox",
            "sh",
            "-c",
            HTTPD,
        )
        assert fetch_until(netns, "http://127.0.0.1:18400/") == "hello-usernet\n"
        address = dk.ok(
            "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").Gateway}}}}', name
        ).strip()
        assert fetch(netns, f"http://{address}:18400/") == "hello-usernet\n"
        dk.ok("rm", "-f", name)
        assert "18400" not in nft_list(netns, "map", "published-port")
    finally:
        dk("network", "rm", network)
