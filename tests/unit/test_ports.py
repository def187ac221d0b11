"""Published ports: the port syntax, the nft state, allocation, and the host's QEMU forwards."""

from __future__ import annotations

import socket
import threading

import pytest

from agent.errors import AgentError
from agent.network import ports as engine_ports
from agent.network.ports import (
    Binding,
    HostLink,
    PortPublisher,
    PortRequest,
    PortSpecError,
    Published,
    inspect_ports,
    nft_script,
    requested_ports,
    summary_ports,
)
from vmctl import ports as host_ports
from vmctl.errors import VmctlError
from vmctl.port_cli import parse_ports, port_lines


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


# --- the create body ---------------------------------------------------------------------------


def test_requested_ports_from_bindings_and_publish_all() -> None:
    host_config = {
        "PortBindings": {
            "80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": ""}],
            "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5300-5310"}],
            "81": None,
        },
        "PublishAllPorts": True,
    }
    config: dict[str, object] = {"ExposedPorts": {"80/tcp": {}, "443/tcp": {}, "9000/udp": {}}}
    assert requested_ports(config, host_config) == [
        PortRequest(80, "tcp", "", 8080, 8080),
        PortRequest(80, "tcp", "127.0.0.1", 0, 0),
        PortRequest(53, "udp", "0.0.0.0", 5300, 5310),
        PortRequest(81, "tcp", "", 0, 0),
        PortRequest(443, "tcp", "", 0, 0),  # -P: exposed and not bound, on an ephemeral port
        PortRequest(9000, "udp", "", 0, 0),
    ]
    assert requested_ports(config, {}) == []


@pytest.mark.parametrize(
    "bindings",
    [
        {"80/sctp": [{"HostPort": "80"}]},
        {"http/tcp": [{"HostPort": "80"}]},
        {"80/tcp": [{"HostPort": "70000"}]},
        {"80/tcp": [{"HostPort": "90-80"}]},
        {"80/tcp": [{"HostIp": "1.2.3", "HostPort": "80"}]},
        {"80/tcp": [{"HostIp": "::1", "HostPort": "80"}]},
        {"80/tcp": "8080"},
        ["80"],
    ],
)
def test_bad_bindings_are_refused(bindings: object) -> None:
    with pytest.raises(PortSpecError):
        requested_ports({}, {"PortBindings": bindings})


def test_inspect_and_ps_views() -> None:
    config: dict[str, object] = {"ExposedPorts": {"80/tcp": {}, "443/tcp": {}}}
    bindings = [Binding(80, "tcp", "", 8080), Binding(80, "tcp", "127.0.0.1", 8081)]
    assert inspect_ports(config, bindings) == {
        "80/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "8080"},
            {"HostIp": "127.0.0.1", "HostPort": "8081"},
        ],
        "443/tcp": None,
    }
    assert summary_ports(config, bindings) == [
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
        {"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 8081, "Type": "tcp"},
        {"PrivatePort": 443, "Type": "tcp"},
    ]
    assert Binding.from_json(bindings[1].to_json()) == bindings[1]


# --- nftables --------------------------------------------------------------------------------


def test_nft_script_maps_ports_and_addresses() -> None:
    published = [
        Published(
            "172.17.0.2",
            "172.17.0.0/16",
            (Binding(80, "tcp", "", 8080), Binding(53, "udp", "127.0.0.1", 5353)),
        ),
        Published("10.5.0.3", "10.5.0.0/24", (Binding(80, "tcp", "0.0.0.0", 9090),)),
    ]
    script = nft_script(published, any_address=False)
    assert (
        "add element ip vmctl published-port "
        "{ tcp . 8080 : 172.17.0.2 . 80, tcp . 9090 : 10.5.0.3 . 80 }" in script
    )
    assert (
        "add element ip vmctl published-addr-port "
        "{ 127.0.0.1 . udp . 5353 : 172.17.0.2 . 53 }" in script
    )
    assert "add element ip vmctl published-subnets { 10.5.0.0/24, 172.17.0.0/16 }" in script
    for chain in ("ports-prerouting", "ports-output", "ports-postrouting"):
        assert f"flush chain ip vmctl {chain}" in script
    # behind a host, the host binds HostIp: the guest translates the port on any address
    behind = nft_script(published, any_address=True)
    assert "udp . 5353 : 172.17.0.2 . 53" in behind
    assert "add element ip vmctl published-addr-port" not in behind
    # with nothing published the maps are emptied, not filled
    empty = nft_script([], any_address=False)
    assert "flush map ip vmctl published-port" in empty and "add element" not in empty


def test_nested_subnets_are_merged_for_the_interval_set() -> None:
    published = [
        Published("10.0.0.2", "10.0.0.0/8", (Binding(1, "tcp", "", 1000),)),
        Published("10.1.0.2", "10.1.0.0/16", (Binding(1, "tcp", "", 1001),)),
    ]
    assert "published-subnets { 10.0.0.0/8 }" in nft_script(published, False)


# --- allocation ------------------------------------------------------------------------------


@pytest.fixture
def publisher() -> PortPublisher:
    scripts: list[str] = []
    made = PortPublisher(apply_script=scripts.append)
    made.scripts = scripts  # type: ignore[attr-defined]
    return made


def test_allocation_conflicts_and_release(publisher: PortPublisher) -> None:
    port = free_port()
    first = publisher.reserve("a" * 64, "first", [PortRequest(80, "tcp", "", port, port)])
    assert first == [Binding(80, "tcp", "", port)]
    publisher.activate("a" * 64, "172.17.0.2", 16, "")
    assert f"tcp . {port} : 172.17.0.2 . 80" in publisher.scripts[-1]  # type: ignore[attr-defined]
    # the same port again, and a free one with it: fails whole, nothing stays allocated
    other = free_port()
    with pytest.raises(AgentError) as info:
        publisher.reserve(
            "b" * 64,
            "second",
            [PortRequest(81, "tcp", "", other, other), PortRequest(80, "tcp", "", port, port)],
        )
    assert info.value.message.endswith(f"Bind for 0.0.0.0:{port} failed: port is already allocated")
    assert publisher.bindings("b" * 64) is None
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", other))  # its held socket was closed
    # the same port on UDP is another port
    publisher.reserve("c" * 64, "udp", [PortRequest(80, "udp", "", port, port)])
    publisher.withdraw("a" * 64)
    assert f"tcp . {port}" not in publisher.scripts[-1]  # type: ignore[attr-defined]
    assert publisher.reserve("b" * 64, "second", [PortRequest(80, "tcp", "", port, port)])


def test_a_port_held_by_another_program_is_refused(publisher: PortPublisher) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AgentError) as info:
            publisher.reserve("a" * 64, "web", [PortRequest(80, "tcp", "", port, port)])
    assert f"failed to bind host port for 0.0.0.0:{port}:80/tcp: address already in use" in (
        info.value.message
    )
    # a range skips it
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        port = taken.getsockname()[1]
        got = publisher.reserve("a" * 64, "web", [PortRequest(80, "tcp", "", port, port + 1)])
    assert got == [Binding(80, "tcp", "", port + 1)]


def test_ephemeral_ports_and_host_specific_bindings(publisher: PortPublisher) -> None:
    got = publisher.reserve(
        "a" * 64, "web", [PortRequest(80, "tcp", "", 0, 0), PortRequest(81, "tcp", "", 0, 0)]
    )
    assert all(
        engine_ports.EPHEMERAL_LOW <= b.host_port <= engine_ports.EPHEMERAL_HIGH == 60999
        for b in got
    )
    assert got[0].host_port != got[1].host_port
    port = free_port()
    publisher.reserve("b" * 64, "b", [PortRequest(80, "tcp", "127.0.0.1", port, port)])
    with pytest.raises(AgentError, match="port is already allocated"):  # every address
        publisher.reserve("c" * 64, "c", [PortRequest(80, "tcp", "", port, port)])
    # another address of the machine is another port
    publisher.reserve("c" * 64, "c", [PortRequest(80, "tcp", "127.0.0.2", port, port)])


def test_a_start_waits_for_the_host_and_fails_with_its_message(
    publisher: PortPublisher,
) -> None:
    link = publisher.connect_host()
    sync = link.outbox.get(timeout=1)
    assert sync["op"] == "sync" and sync["containers"] == {}
    port = free_port()

    def host(error: str) -> None:
        request = link.outbox.get(timeout=5)
        assert request["op"] == "publish"
        assert request["ports"] == [{"proto": "tcp", "host_ip": "", "host_port": port}]
        link.answer(request["id"], error)

    answering = threading.Thread(target=host, args=("port taken on the host",))
    answering.start()
    with pytest.raises(AgentError, match="cannot publish ports on the host: port taken"):
        publisher.reserve("a" * 64, "web", [PortRequest(80, "tcp", "", port, port)])
    answering.join()
    assert publisher.bindings("a" * 64) is None
    answering = threading.Thread(target=host, args=("",))
    answering.start()
    publisher.reserve("a" * 64, "web", [PortRequest(80, "tcp", "", port, port)])
    answering.join()
    publisher.withdraw("a" * 64)
    assert link.outbox.get(timeout=1) == {"id": 4, "op": "withdraw", "container": "a" * 64}
    publisher.disconnect_host(link)
    assert publisher.host is None


def test_host_link_waits_and_times_out() -> None:
    link = HostLink()
    request = link.send({"op": "publish"}, answered=True)
    assert link.wait(request, 0.01) is None  # no answer yet
    request = link.send({"op": "publish"}, answered=True)
    assert link.answer(request, "no")
    assert link.wait(request, 1) == "no"
    assert not link.answer(999, "")
    request = link.send({"op": "publish"}, answered=True)
    link.close()
    assert link.wait(request, 1) == "the host agent's connection closed"


# --- the host side (vmctl/ports.py) ----------------------------------------------------------


def test_hostfwd_commands_and_host_addresses() -> None:
    forward = host_ports.forward_for({"proto": "udp", "host_ip": "", "host_port": 5353})
    assert forward == host_ports.Forward("udp", "127.0.0.1", 5353)  # only there unless asked
    assert host_ports.hostfwd_add_command(forward) == "hostfwd_add net0 udp:127.0.0.1:5353-:5353"
    assert host_ports.hostfwd_remove_command(forward) == "hostfwd_remove net0 udp:127.0.0.1:5353"
    explicit = host_ports.forward_for({"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 80})
    assert host_ports.hostfwd_add_command(explicit) == "hostfwd_add net0 tcp:0.0.0.0:80-:80"
    for bad in (
        {"proto": "sctp", "host_port": 1},
        {"proto": "tcp", "host_port": 0},
        {"proto": "tcp", "host_ip": "::1", "host_port": 1},
        {"proto": "tcp", "host_ip": "nowhere", "host_port": 1},
    ):
        with pytest.raises(ValueError):
            host_ports.forward_for(bad)


USERNET = """\
Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]   8       127.0.0.1 18555       10.0.2.15 18555     0     0
  TCP[HOST_FORWARD]   3       127.0.0.1 18554       10.0.2.15    22     0     0
  UDP[HOST_FORWARD]   9               * 18556       10.0.2.15 18556     0     0
  TCP[ESTABLISHED]   31       10.0.2.15 40000       10.0.2.2  80     0     0
"""


def test_forwards_found_in_info_usernet() -> None:
    assert host_ports.forwards_in_usernet(USERNET) == [
        host_ports.Forward("tcp", "127.0.0.1", 18555),
        host_ports.Forward("udp", "0.0.0.0", 18556),
    ]


class FakeMonitor:
    def __init__(self, usernet: str = "") -> None:
        self.commands: list[str] = []
        self.usernet = usernet
        self.refuse: set[str] = set()

    def __call__(self, command: str) -> str:
        self.commands.append(command)
        if command == "info usernet":
            return self.usernet
        if command in self.refuse:
            return f"Could not set up host forwarding rule '{command.split()[-1]}'"
        return ""


def test_host_forwards_are_all_or_nothing() -> None:
    monitor = FakeMonitor()
    reported: list[list[str]] = []
    forwards = host_ports.HostForwards(monitor, on_change=reported.append)
    a, b = free_port(), free_port(socket.SOCK_DGRAM)
    ports = [
        {"proto": "tcp", "host_ip": "", "host_port": a},
        {"proto": "udp", "host_ip": "", "host_port": b},
    ]
    monitor.refuse.add(f"hostfwd_add net0 udp:127.0.0.1:{b}-:{b}")
    error = forwards.publish("c1", ports)
    assert error.startswith(f"QEMU refused to forward 127.0.0.1:{b}/udp")
    assert monitor.commands[-1] == f"hostfwd_remove net0 tcp:127.0.0.1:{a}"
    assert forwards.listing() == []
    monitor.refuse.clear()
    assert forwards.publish("c1", ports) == ""
    assert forwards.publish("c2", ports[:1]).endswith("is already published by the machine")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        error = forwards.publish("c3", [{"proto": "tcp", "host_port": busy}])
    assert error.startswith(f"host port 127.0.0.1:{busy}/tcp is not available on the host")
    forwards.withdraw("c1")
    assert forwards.listing() == []
    assert reported == [sorted([f"127.0.0.1:{a}/tcp", f"127.0.0.1:{b}/udp"]), []]  # status.json


def test_sync_keeps_leftovers_still_asked_for_and_drops_the_rest() -> None:
    monitor = FakeMonitor(USERNET)
    forwards = host_ports.HostForwards(monitor)
    forwards.sync({"c1": [{"proto": "tcp", "host_ip": "127.0.0.1", "host_port": 18555}]})
    assert forwards.listing() == ["127.0.0.1:18555/tcp"]
    assert monitor.commands == ["info usernet", "hostfwd_remove net0 udp:0.0.0.0:18556"]
    forwards.sync({})
    assert forwards.listing() == []
    assert monitor.commands[-1] == "hostfwd_remove net0 tcp:127.0.0.1:18555"


# --- vmctl's -p and `vmctl port` ----------------------------------------------------------------


def test_parse_ports_like_docker() -> None:
    def spec(text: str) -> list[tuple[str, str, str]]:
        return [(p.container_port, p.host_ip, p.host_port) for p in parse_ports(text)]

    assert spec("8080:80") == [("80/tcp", "", "8080")]
    assert spec("127.0.0.1:8080:80/udp") == [("80/udp", "127.0.0.1", "8080")]
    assert spec("127.0.0.1::80") == [("80/tcp", "127.0.0.1", "")]
    assert spec("80") == [("80/tcp", "", "")]
    assert spec("8000-8002:80-82") == [
        ("80/tcp", "", "8000"),
        ("81/tcp", "", "8001"),
        ("82/tcp", "", "8002"),
    ]
    assert spec("8000-8010:80") == [("80/tcp", "", "8000-8010")]
    assert spec("80-81") == [("80/tcp", "", ""), ("81/tcp", "", "")]
    for bad in ("8000-8001:80-82", "x:80", "80/sctp", "1:2:3:4", "90-80:80", ""):
        with pytest.raises(VmctlError):
            parse_ports(bad)


def test_port_lines_like_docker_port() -> None:
    ports = {
        "443/tcp": None,
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
    }
    assert port_lines(ports) == ["53/udp -> 127.0.0.1:5353", "80/tcp -> 0.0.0.0:8080"]
    assert port_lines(ports, "80") == ["0.0.0.0:8080"]
    assert port_lines(ports, "53/udp") == ["127.0.0.1:5353"]
    assert port_lines(ports, "443") == []
