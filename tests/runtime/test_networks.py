"""User-defined networks, the embedded DNS, --link and isolation, with the real docker CLI.

The native agent runs in a private network namespace, so its bridges, veths and nft
rules are all local to it; the checks look at them with `ip`/`nft` through nsenter into
that namespace (found from the agent's process).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.docker_suite import DockerCLI
from tests.runtime.conftest import NativeAgent

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def nets(dk: DockerCLI) -> Iterator[list[str]]:
    """Names of networks a test creates; removed (with their containers first) at its end."""
    names: list[str] = []
    yield names
    dk.cleanup()
    dk.names.clear()
    for name in names:
        dk("network", "rm", name)


def _net(dk: DockerCLI, nets: list[str], *args: str) -> str:
    name = f"tn-{uuid.uuid4().hex[:8]}"
    nets.append(name)
    return dk.ok("network", "create", *args, name).strip() and name


def _in_agent_netns(agent: NativeAgent, *argv: str) -> str:
    result = subprocess.run(
        [*agent.netns(), *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _links(agent: NativeAgent) -> list[str]:
    data = json.loads(_in_agent_netns(agent, "ip", "-j", "link", "show"))
    return [str(link["ifname"]) for link in data]


def _run(dk: DockerCLI, role: str, *args: str) -> str:
    name = dk.name(role)
    dk.ok("run", "-d", "--name", name, *args)
    return name


def test_create_inspect_ls_rm(agent: NativeAgent, dk: DockerCLI, nets: list[str]) -> None:
    name = _net(
        dk, nets, "--label", "team=a", "--subnet", "10.91.0.0/24", "--gateway", "10.91.0.254"
    )
    info = json.loads(dk.ok("network", "inspect", name))[0]
    assert info["Driver"] == "bridge" and info["Labels"] == {"team": "a"}
    assert info["IPAM"]["Config"] == [{"Subnet": "10.91.0.0/24", "Gateway": "10.91.0.254"}]
    bridge = f"br-{info['Id'][:12]}"
    assert bridge in _links(agent)
    listed = dk.ok("network", "ls", "--filter", "label=team=a", "--format", "{{.Name}}").split()
    assert listed == [name]
    custom = dk.ok("network", "ls", "--filter", "type=custom", "--format", "{{.Name}}").split()
    assert "bridge" not in custom and name in custom
    again = dk("network", "create", name)
    assert again.returncode != 0 and "already exists" in again.stderr
    dk.ok("network", "rm", name)
    nets.remove(name)
    assert bridge not in _links(agent)
    assert dk("network", "inspect", name).returncode != 0


def test_auto_subnets_do_not_overlap(dk: DockerCLI, nets: list[str]) -> None:
    first, second = _net(dk, nets), _net(dk, nets)
    subnets = [
        dk.ok("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", n).strip()
        for n in (first, second)
    ]
    assert subnets[0] != subnets[1]
    assert all(s.startswith("172.") and s.endswith(".0.0/16") for s in subnets), subnets
    assert "172.17.0.0/16" not in subnets


def test_overlapping_subnet_and_unknown_network_are_clear(dk: DockerCLI, nets: list[str]) -> None:
    _net(dk, nets, "--subnet", "10.92.0.0/16")
    clash = dk("network", "create", "--subnet", "10.92.5.0/24", f"tn-{uuid.uuid4().hex[:8]}")
    assert clash.returncode != 0 and "overlaps" in clash.stderr, clash.stderr
    missing = dk("run", "--rm", "--network", "tn-nonesuch", "busybox", "true")
    assert missing.returncode != 0 and "network tn-nonesuch not found" in missing.stderr
    gone = dk("network", "rm", "tn-nonesuch")
    assert gone.returncode != 0 and "not found" in gone.stderr
    assert "Traceback" not in clash.stderr + missing.stderr + gone.stderr


def test_names_aliases_and_short_ids_resolve(
    agent: NativeAgent, dk: DockerCLI, nets: list[str]
) -> None:
    net = _net(dk, nets)
    server = _run(dk, "srv", "--network", net, "--network-alias", "web", "busybox", "sleep", "300")
    server_id = dk.inspect(server)["Id"][:12]
    address = dk.inspect(server)["NetworkSettings"]["Networks"][net]["IPAddress"]
    client = dk.name("cli")
    script = (
        f"cat /etc/resolv.conf; for n in {server} web {server_id}; do "
        "nslookup $n 127.0.0.11 2>&1; ping -c1 -W5 $n >/dev/null && echo PING-$n; done"
    )
    out = dk.ok("run", "--name", client, "--network", net, "busybox", "sh", "-c", script)
    assert "nameserver 127.0.0.11" in out and "ndots:0" in out
    for name in (server, "web", server_id):
        assert f"PING-{name}" in out, out
    assert out.count(address) >= 3, out
    settings = dk.inspect(server)["NetworkSettings"]["Networks"][net]
    assert settings["Aliases"] == ["web"]
    assert set(settings["DNSNames"]) >= {server, server_id, "web"}
    net_info = json.loads(dk.ok("network", "inspect", net))[0]
    members = net_info["Containers"]
    assert members[dk.inspect(server)["Id"]]["IPv4Address"].startswith(address + "/")


def test_default_bridge_has_no_names_but_links(dk: DockerCLI) -> None:
    db = _run(dk, "db", "-e", "SECRET=x", "--expose", "80", "busybox", "sleep", "300")
    ip = dk.inspect(db)["NetworkSettings"]["IPAddress"]
    me = dk.name("me")
    out = dk.ok(
        "run", "--name", me, "--link", f"{db}:db", "busybox", "sh", "-c",
        f"cat /etc/hosts; env | sort; nslookup {db} 2>&1 | tail -n 3; ping -c1 -W5 db && echo OK",
    )  # fmt: skip
    assert f"{ip}\tdb {db} " in out, out
    assert f"DB_PORT_80_TCP=tcp://{ip}:80" in out and f"DB_PORT_80_TCP_ADDR={ip}" in out
    assert "DB_PORT_80_TCP_PORT=80" in out and "DB_PORT_80_TCP_PROTO=tcp" in out
    assert f"DB_PORT=tcp://{ip}:80" in out and f"DB_NAME=/{me}/db" in out
    assert "DB_ENV_SECRET=x" in out and "OK" in out
    assert "host.docker.internal" in out
    assert dk.inspect(me)["HostConfig"]["Links"] == [f"/{db}:/{me}/db"]
    lonely = dk("run", "--rm", "busybox", "ping", "-c1", "-W2", db)
    assert lonely.returncode != 0  # no name resolution on the default bridge


def test_link_to_a_stopped_container_fails(dk: DockerCLI) -> None:
    db = dk.name("db")
    dk.ok("create", "--name", db, "busybox", "true")
    result = dk("run", "--rm", "--link", f"{db}:db", "busybox", "true")
    assert result.returncode != 0 and "non running container" in result.stderr


def test_isolation_between_networks_and_connect(dk: DockerCLI, nets: list[str]) -> None:
    a, b = _net(dk, nets), _net(dk, nets)
    target = _run(dk, "tgt", "--network", b, "busybox", "sleep", "300")
    target_ip = dk.inspect(target)["NetworkSettings"]["Networks"][b]["IPAddress"]
    prober = _run(dk, "probe", "--network", a, "busybox", "sleep", "300")
    blocked = dk("exec", prober, "ping", "-c1", "-W2", target_ip)
    assert blocked.returncode != 0
    dk.ok("network", "connect", "--alias", "joined", b, prober)
    networks = dk.inspect(prober)["NetworkSettings"]["Networks"]
    assert set(networks) == {a, b}
    dk.ok("exec", prober, "ping", "-c1", "-W5", target_ip)
    dk.ok("exec", prober, "ping", "-c1", "-W5", target)  # by name, on the shared network
    dk.ok("exec", target, "ping", "-c1", "-W5", "joined")
    removal = dk("network", "rm", b)
    assert removal.returncode != 0 and "active endpoints" in removal.stderr
    dk.ok("network", "disconnect", b, prober)
    assert dk("exec", prober, "ping", "-c1", "-W2", target_ip).returncode != 0


def test_internal_network_has_no_route_out(dk: DockerCLI, nets: list[str]) -> None:
    inner = _net(dk, nets, "--internal")
    peer = _run(dk, "peer", "--network", inner, "busybox", "sleep", "300")
    out = dk.ok("run", "--rm", "--network", inner, "busybox", "sh", "-c",
                f"ip route; ping -c1 -W5 {peer} && echo PEER-OK")  # fmt: skip
    assert "default" not in out and "PEER-OK" in out
    bridge_gateway = "172.17.0.1"
    outside = dk("run", "--rm", "--network", inner, "busybox", "ping", "-c1", "-W2", bridge_gateway)
    assert outside.returncode != 0


def test_fixed_ip_and_two_networks(dk: DockerCLI, nets: list[str]) -> None:
    first = _net(dk, nets, "--subnet", "10.93.0.0/24")
    second = _net(dk, nets, "--subnet", "10.94.0.0/24")
    name = dk.name("multi")
    dk.ok("create", "--name", name, "--network", first, "--ip", "10.93.0.77", "busybox",
          "sh", "-c", "ip -o -4 addr; ip route; sleep 300")  # fmt: skip
    dk.ok("network", "connect", second, name)
    dk.ok("start", name)
    networks = dk.inspect(name)["NetworkSettings"]["Networks"]
    assert networks[first]["IPAddress"] == "10.93.0.77"
    assert networks[second]["IPAddress"].startswith("10.94.0.")
    logs = dk.ok("logs", name)
    assert "eth0" in logs and "eth1" in logs and "default via 10.93.0.1 dev eth0" in logs, logs
    taken = dk("run", "--rm", "--network", first, "--ip", "10.93.0.77", "busybox", "true")
    assert taken.returncode != 0 and "already in use" in taken.stderr


def test_rm_leaves_no_bridge_veth_or_rule(
    agent: NativeAgent, dk: DockerCLI, nets: list[str]
) -> None:
    net = _net(dk, nets)
    network_id = json.loads(dk.ok("network", "inspect", net))[0]["Id"]
    dk.ok("run", "--rm", "--network", net, "busybox", "true")
    before = _in_agent_netns(agent, "nft", "list", "table", "ip", "vmctl")
    assert f"br-{network_id[:12]}" in before
    dk.ok("network", "rm", net)
    nets.remove(net)
    links = _links(agent)
    assert not any(network_id[:12] in link for link in links), links
    after = _in_agent_netns(agent, "nft", "list", "table", "ip", "vmctl")
    assert network_id[:12] not in after, after


def test_prune_removes_unused_networks(dk: DockerCLI, nets: list[str]) -> None:
    unused = _net(dk, nets, "--label", "prune=yes")
    used = _net(dk, nets, "--label", "prune=yes")
    _run(dk, "user", "--network", used, "busybox", "sleep", "300")
    out = dk.ok("network", "prune", "-f", "--filter", "label=prune=yes")
    assert unused in out and used not in out
    names = dk.ok("network", "ls", "--format", "{{.Name}}").split()
    assert unused not in names and used in names
    nets.remove(unused)


def test_host_docker_internal_resolves(dk: DockerCLI, nets: list[str]) -> None:
    net = _net(dk, nets)
    gateway = dk.ok("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", net)
    out = dk.ok("run", "--rm", "--network", net, "--add-host", "h:host-gateway", "busybox",
                "sh", "-c", "nslookup host.docker.internal 127.0.0.11; cat /etc/hosts")  # fmt: skip
    assert gateway.strip() in out, out
    assert "\th\n" in out


def test_unknown_names_fail_quickly(dk: DockerCLI, nets: list[str]) -> None:
    net = _net(dk, nets)
    result = dk(
        "run", "--rm", "--network", net, "busybox", "nslookup", "no-such-name", "127.0.0.11"
    )
    assert result.returncode != 0


def test_events_of_a_network(dk: DockerCLI, nets: list[str]) -> None:
    since = dk.ok("system", "info", "--format", "{{.SystemTime}}").strip()
    net = _net(dk, nets)
    dk.ok("run", "--rm", "--network", net, "busybox", "true")
    dk.ok("network", "rm", net)
    nets.remove(net)
    until = dk.ok("system", "info", "--format", "{{.SystemTime}}").strip()
    out = dk.ok("events", "--since", since, "--until", until, "--filter", "type=network",
                "--format", "{{.Action}} {{.Actor.Attributes.name}}")  # fmt: skip
    actions = [line.split()[0] for line in out.splitlines() if line.endswith(f" {net}")]
    assert actions == ["create", "connect", "disconnect", "destroy"], out


def test_vmctl_network_verbs(agent: NativeAgent, dk: DockerCLI, nets: list[str]) -> None:
    name = f"tn-{uuid.uuid4().hex[:8]}"
    nets.append(name)
    created = agent.vmctl("network", "create", "--subnet", "10.95.0.0/24", name, check=True)
    network_id = created.stdout.strip()
    assert len(network_id) == 64
    listed = agent.vmctl("network", "ls", check=True).stdout
    assert network_id[:12] in listed and name in listed
    box = _run(dk, "box", "busybox", "sleep", "300")
    agent.vmctl("network", "connect", "--ip", "10.95.0.9", name, box, check=True)
    info = json.loads(agent.vmctl("network", "inspect", name, check=True).stdout)[0]
    assert [c["IPv4Address"] for c in info["Containers"].values()] == ["10.95.0.9/24"]
    busy = agent.vmctl("network", "rm", name)
    assert busy.returncode == 1 and "active endpoints" in busy.stderr
    agent.vmctl("network", "disconnect", name, box, check=True)
    agent.vmctl("network", "rm", name, check=True)
    nets.remove(name)
    missing = agent.vmctl("network", "inspect", name)
    assert missing.returncode == 1 and "no such network" in missing.stderr


PERSISTENCE = """
import json, subprocess, sys
from agent.network.netlink import RouteSocket
from agent.network.store import NetworkStore

root = sys.argv[1]
store = NetworkStore(root, None)
record = store.create("kept", subnet="10.96.0.0/24")
with RouteSocket() as host:
    host.delete_link(record.bridge)  # as a reboot of the VM would
again = NetworkStore(root, None)
again.load()
with RouteSocket() as host:
    assert host.get_link(record.bridge) is not None, "bridge not recreated"
    assert [a.address for a in host.addresses(host.link_index(record.bridge))] == ["10.96.0.1"]
rules = subprocess.run(["nft", "list", "table", "ip", "vmctl"], capture_output=True, text=True)
assert record.bridge in rules.stdout, rules.stdout
again.remove(again.get("kept"))
with RouteSocket() as host:
    assert host.get_link(record.bridge) is None, "bridge left behind"
rules = subprocess.run(["nft", "list", "table", "ip", "vmctl"], capture_output=True, text=True)
assert "networks-" not in rules.stdout, rules.stdout
print("OK")
"""


def test_networks_persist_and_their_bridges_come_back(tmp_path: object) -> None:
    import sys

    from tests.runtime.conftest import REPO

    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", PERSISTENCE, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.stdout.strip() == "OK", result.stderr


FAKE_UPSTREAM = """
import socket, sys
from agent.network import dns_message as dm
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("ready", flush=True)
data, peer = sock.recvfrom(512)
query = dm.parse(data)
sock.sendto(dm.reply(query, dm.RCODE_OK, [(query.questions[0].name, 5, "192.0.2.77")]), peer)
"""


def test_other_names_are_forwarded_to_dns_servers(
    agent: NativeAgent, dk: DockerCLI, nets: list[str]
) -> None:
    import sys

    from tests.runtime.conftest import REPO

    net = _net(dk, nets)
    upstream = "172.17.0.1"  # the default bridge's gateway: an address of the agent's netns
    # `unshare -n` leaves lo down, and packets to the namespace's own addresses travel on it
    _in_agent_netns(agent, "ip", "link", "set", "lo", "up")
    server = subprocess.Popen(
        [*agent.netns(), sys.executable, "-c", FAKE_UPSTREAM,
         upstream],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = dk.ok("run", "--rm", "--network", net, "--dns", upstream, "busybox",
                    "nslookup", "-type=a", "far.example", "127.0.0.11")  # fmt: skip
        assert "192.0.2.77" in out, out
    finally:
        server.kill()
        server.wait(10)
