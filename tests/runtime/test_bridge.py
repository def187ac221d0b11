"""The default bridge, for real, inside network namespaces this test creates (needs root).

Nothing here touches the host's own network namespace: each namespace is made by a thread
that unshare()s its network namespace, opens it as a file descriptor and ends, and the code
under test runs in threads that join it (netlink.run_in_netns). Closing the descriptors (and
the sockets made inside) destroys the namespaces with everything in them. `ip -j` and `nft`
serve as independent witnesses of what the netlink code did.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.network import NetworkError
from agent.network.bridge import DefaultBridge, Endpoint, loopback_up, veth_name
from agent.network.netlink import RouteSocket, open_in_netns, run_in_netns
from agent.runtime import linux

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("bridge networking needs root", allow_module_level=True)
for tool, package in (("nft", "nftables"), ("ip", "iproute2")):
    if shutil.which(tool) is None:
        pytest.skip(f"`{tool}` is missing: apt-get install {package}", allow_module_level=True)

C1 = "c1" + "0" * 62
C2 = "c2" + "0" * 62


def new_netns() -> int:
    """A new, empty network namespace, held open by the returned descriptor."""

    def make() -> int:
        linux.unshare(linux.CLONE_NEWNET)  # only this short-lived thread moves
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(make()))
    thread.start()
    thread.join()
    assert outcome, "creating a network namespace failed (see the thread's traceback)"
    return outcome[0]


@pytest.fixture
def namespaces() -> Iterator[Callable[[], int]]:
    """Factory of network namespaces, all destroyed at the end of the test."""
    fds: list[int] = []

    def make() -> int:
        fds.append(new_netns())
        return fds[-1]

    yield make
    for fd in fds:
        os.close(fd)


def run(netns: int, *argv: str) -> str:
    result = run_in_netns(netns, subprocess.run, list(argv), capture_output=True, text=True)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def ip_json(netns: int, *argv: str) -> list[dict[str, Any]]:
    parsed: list[dict[str, Any]] = json.loads(run(netns, "ip", "-j", *argv) or "[]")
    return parsed


def nft_tables(netns: int) -> list[str]:
    listing = json.loads(run(netns, "nft", "-j", "list", "tables"))["nftables"]
    return [f"{t['table']['family']} {t['table']['name']}" for t in listing if "table" in t]


def inet_addresses(link: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(netns: int, address: str, timeout: float = 3.0) -> bool:
    """One ICMP echo from inside netns through a raw socket; True when the reply came."""
    sock = run_in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with sock:
        ident, seq = secrets.randbits(16), secrets.randbits(16)
        body = b"vmctl-bridge-test"
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        packet = struct.pack("!BBHHH", 8, 0, checksum(header + body), ident, seq) + body
        sock.sendto(packet, (address, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (source, _) = sock.recvfrom(2048)
            except TimeoutError:
                return False
            offset = (data[0] & 0x0F) * 4  # skip the IP header
            kind, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, offset)
            if (kind, rid, rseq, source) == (0, ident, seq, address):
                return True
        return False


def tcp_peer_seen(client_ns: int, server_ns: int, address: str) -> str:
    """Connect from client_ns to a listener on address in server_ns; the source it saw."""
    server = run_in_netns(server_ns, socket.create_server, (address, 0))
    with server:
        server.settimeout(5)
        port = server.getsockname()[1]
        client = run_in_netns(client_ns, socket.create_connection, (address, port), 5)
        with client:
            accepted, (peer, _) = server.accept()
            with accepted:
                client.sendall(b"hello")
                assert accepted.recv(5) == b"hello"
        return str(peer)


@dataclass
class World:
    test_ns: int
    bridge: DefaultBridge
    state_dir: Path
    containers: dict[str, int]
    endpoints: dict[str, Endpoint]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A test namespace with the bridge set up and two attached containers."""
    host_tables = nft_tables_in_this_namespace()
    fds: list[int] = []
    try:
        fds.extend(new_netns() for _ in range(3))
        test_ns, c1, c2 = fds
        state_dir = tmp_path_factory.mktemp("bridge-state")
        bridge = DefaultBridge(str(state_dir), name=f"vmt{secrets.token_hex(3)}")
        run_in_netns(test_ns, bridge.ensure)
        endpoints = {
            C1: run_in_netns(test_ns, bridge.attach, C1, c1),
            C2: run_in_netns(test_ns, bridge.attach, C2, c2),
        }
        yield World(test_ns, bridge, state_dir, {C1: c1, C2: c2}, endpoints)
        # The host's namespace saw none of it.
        with RouteSocket() as host:
            assert host.get_link(bridge.name) is None
        assert nft_tables_in_this_namespace() == host_tables
    finally:
        for fd in fds:
            os.close(fd)


def nft_tables_in_this_namespace() -> list[str]:
    result = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True)
    listing = json.loads(result.stdout)["nftables"]
    return sorted(f"{t['table']['family']} {t['table']['name']}" for t in listing if "table" in t)


def test_ensure_sets_up_bridge_forwarding_and_nat(world: World) -> None:
    run_in_netns(world.test_ns, world.bridge.ensure)  # a second time changes nothing
    (link,) = ip_json(world.test_ns, "addr", "show", "dev", world.bridge.name)
    assert "UP" in link["flags"]
    assert inet_addresses(link) == ["172.17.0.1/16"]
    forwarding = run_in_netns(world.test_ns, Path("/proc/sys/net/ipv4/ip_forward").read_text)
    assert forwarding.strip() == "1"
    assert nft_tables(world.test_ns) == ["ip vmctl"]
    ruleset = run(world.test_ns, "nft", "list", "table", "ip", "vmctl")
    assert f'ip saddr 172.17.0.0/16 oifname != "{world.bridge.name}" masquerade' in ruleset
    assert "hook forward" in ruleset and f'iifname "{world.bridge.name}" accept' in ruleset
    (details,) = ip_json(world.test_ns, "-d", "link", "show", "dev", world.bridge.name)
    assert details["linkinfo"]["info_kind"] == "bridge"


def test_attach_gives_each_container_eth0_address_mac_and_route(world: World) -> None:
    expected = {C1: ("172.17.0.2", "02:42:ac:11:00:02"), C2: ("172.17.0.3", "02:42:ac:11:00:03")}
    for cid, (address, mac) in expected.items():
        endpoint = world.endpoints[cid]
        assert endpoint == Endpoint(address, 16, "172.17.0.1", mac, veth_name(cid))
        netns = world.containers[cid]
        links = {link["ifname"]: link for link in ip_json(netns, "addr")}
        assert sorted(links) == ["eth0", "lo"]
        assert links["eth0"]["address"] == mac
        assert "UP" in links["eth0"]["flags"]
        assert inet_addresses(links["eth0"]) == [f"{address}/16"]
        assert "UP" in links["lo"]["flags"]
        routes = ip_json(netns, "route", "show", "default")
        assert [(r["gateway"], r["dev"]) for r in routes] == [("172.17.0.1", "eth0")]
        (host_end,) = ip_json(world.test_ns, "link", "show", "dev", endpoint.host_veth)
        assert host_end["master"] == world.bridge.name
        assert "UP" in host_end["flags"]


def test_containers_reach_each_other_and_the_gateway(world: World) -> None:
    c1, c2 = world.containers[C1], world.containers[C2]
    assert ping(c1, "172.17.0.1")
    assert ping(c2, "172.17.0.1")
    assert ping(c1, "172.17.0.3")
    assert ping(c2, "172.17.0.2")
    assert not ping(c1, "172.17.0.99", timeout=0.5)  # the check can fail
    assert tcp_peer_seen(c1, c2, "172.17.0.3") == "172.17.0.2"
    assert tcp_peer_seen(c2, world.test_ns, "172.17.0.1") == "172.17.0.3"


def test_traffic_leaving_through_another_interface_is_masqueraded(
    world: World, namespaces: Callable[[], int]
) -> None:
    # An "uplink" from the test namespace to an outside namespace that has no route back to
    # 172.17.0.0/16: a connection only works if its source was rewritten to 10.99.0.1.
    outside = namespaces()
    uplink = f"up{secrets.token_hex(3)}"
    with run_in_netns(world.test_ns, RouteSocket) as test_side:
        test_side.create_veth(uplink, "eth0", peer_netns_fd=outside, up=True)
        index = test_side.link_index(uplink)
        test_side.add_address(index, "10.99.0.1", 24)
    with open_in_netns(outside) as far:
        eth0 = far.link_index("eth0")
        far.set_up(eth0)
        far.add_address(eth0, "10.99.0.2", 24)
    try:
        assert tcp_peer_seen(world.containers[C1], outside, "10.99.0.2") == "10.99.0.1"
    finally:
        with run_in_netns(world.test_ns, RouteSocket) as test_side:
            test_side.delete_link(uplink)


def test_detach_removes_the_veth_and_releases_the_address(
    world: World, namespaces: Callable[[], int]
) -> None:
    cid = "d3" + "0" * 62
    container = namespaces()
    # A veth left by an interrupted start is replaced, not an error.
    with run_in_netns(world.test_ns, RouteSocket) as test_side:
        test_side.create_veth(veth_name(cid), f"x{secrets.token_hex(3)}")
    endpoint = run_in_netns(world.test_ns, world.bridge.attach, cid, container)
    assert endpoint.ip == "172.17.0.4"
    assert ping(container, "172.17.0.2")

    run_in_netns(world.test_ns, world.bridge.detach, cid)
    ports = ip_json(world.test_ns, "link", "show", "master", world.bridge.name)
    assert sorted(p["ifname"] for p in ports) == sorted(veth_name(c) for c in (C1, C2))
    assert endpoint.host_veth not in [link["ifname"] for link in ip_json(world.test_ns, "link")]
    assert [link["ifname"] for link in ip_json(container, "link")] == ["lo"]  # eth0 went too
    assert cid not in world.bridge.ipam.leases()
    run_in_netns(world.test_ns, world.bridge.detach, cid)  # again: nothing left, no error


def test_a_restarted_agent_keeps_the_leases(world: World) -> None:
    again = DefaultBridge(str(world.state_dir), name=world.bridge.name)
    assert again.ipam.leases() == {C1: "172.17.0.2", C2: "172.17.0.3"}
    assert again.endpoint(C2) == world.endpoints[C2]
    assert again.endpoint("unknown") is None


def test_teardown_leaves_no_bridge_or_table(namespaces: Callable[[], int], tmp_path: Path) -> None:
    test_ns = namespaces()
    bridge = DefaultBridge(str(tmp_path), name="vmtdown0")
    run_in_netns(test_ns, bridge.ensure)
    assert "vmtdown0" in [link["ifname"] for link in ip_json(test_ns, "link")]
    assert nft_tables(test_ns) == ["ip vmctl"]
    run_in_netns(test_ns, bridge.teardown)
    assert [link["ifname"] for link in ip_json(test_ns, "link")] == ["lo"]
    assert nft_tables(test_ns) == []
    run_in_netns(test_ns, bridge.teardown)  # idempotent


def test_attach_without_bridge_fails_clearly_and_keeps_no_lease(
    namespaces: Callable[[], int], tmp_path: Path
) -> None:
    test_ns, container = namespaces(), namespaces()
    bridge = DefaultBridge(str(tmp_path))
    with pytest.raises(NetworkError, match="bridge vmctl0 does not exist"):
        run_in_netns(test_ns, bridge.attach, C1, container)
    assert bridge.ipam.leases() == {}


def test_existing_non_bridge_interface_is_refused(
    namespaces: Callable[[], int], tmp_path: Path
) -> None:
    test_ns = namespaces()
    with run_in_netns(test_ns, RouteSocket) as test_side:
        test_side.create_veth("vmtclash0", "vmtclash1")
    bridge = DefaultBridge(str(tmp_path), name="vmtclash0")
    with pytest.raises(NetworkError, match="vmtclash0 exists but is not a bridge"):
        run_in_netns(test_ns, bridge.ensure)


def test_loopback_up_for_network_none(namespaces: Callable[[], int]) -> None:
    container = namespaces()
    (lo,) = ip_json(container, "link")
    assert "UP" not in lo["flags"]
    loopback_up(container)
    (lo,) = ip_json(container, "link")
    assert "UP" in lo["flags"]
    assert tcp_peer_seen(container, container, "127.0.0.1") == "127.0.0.1"


def test_netlink_errors_name_the_operation(namespaces: Callable[[], int]) -> None:
    with open_in_netns(namespaces()) as sock:
        sock.create_bridge("vmtdup0")
        with pytest.raises(FileExistsError, match="create bridge vmtdup0: File exists"):
            sock.create_bridge("vmtdup0")
        sock.delete_link("vmtdup0")
        with pytest.raises(OSError, match="delete link vmtdup0: No such device"):
            sock.delete_link("vmtdup0")


def test_container_that_already_has_eth0_is_refused(
    world: World, namespaces: Callable[[], int]
) -> None:
    cid = "e4" + "0" * 62
    container = namespaces()
    with open_in_netns(container) as inside:
        inside.create_veth("eth0", "spare0")
    with pytest.raises(NetworkError, match=f"cannot connect container {cid[:12]}.*File exists"):
        run_in_netns(world.test_ns, world.bridge.attach, cid, container)
    assert cid not in world.bridge.ipam.leases()
    assert veth_name(cid) not in [link["ifname"] for link in ip_json(world.test_ns, "link")]
