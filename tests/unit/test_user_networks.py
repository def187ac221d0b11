"""User-defined networks without root: subnets, nft rules, --ip leases, links, DNS names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.containers.model import RUNNING, Container, State
from agent.errors import AgentError
from agent.network import links
from agent.network.attachments import Attachments, embedded_resolv_conf, requested_networks
from agent.network.ipam import AddressUnavailable, Ipam
from agent.network.store import NetworkRecord, NetworkStore, rules_script


def _record(name: str, subnet: str, internal: bool = False) -> NetworkRecord:
    network_id = (name * 64)[:64]
    return NetworkRecord(
        network_id, name, "2026-01-01T00:00:00Z", subnet, subnet.replace("0/", "1/")[:-3],
        internal=internal, bridge=f"br-{name}",
    )  # fmt: skip


class _NoLinks(NetworkStore):
    """A store whose bridges are not made (no root): records and subnets only."""

    def _add(self, record: NetworkRecord) -> None:
        self._records[record.id] = record

    def _apply_rules(self) -> None:
        pass


def test_subnets_are_chosen_without_overlap_and_clashes_are_400(tmp_path: Path) -> None:
    store = _NoLinks(str(tmp_path), None)
    first = store.create("one")
    second = store.create("two", subnet="172.19.0.0/16")
    third = store.create("three")
    assert (first.subnet, second.subnet, third.subnet) == (
        "172.18.0.0/16",
        "172.19.0.0/16",
        "172.20.0.0/16",
    )
    assert first.gateway == "172.18.0.1" and first.bridge == f"br-{first.id[:12]}"
    with pytest.raises(AgentError) as clash:
        store.create("four", subnet="172.18.4.0/24")
    assert clash.value.status == 400 and "overlaps" in clash.value.message
    with pytest.raises(AgentError) as duplicate:
        store.create("one")
    assert duplicate.value.status == 409
    with pytest.raises(AgentError) as builtin:
        store.create("bridge")
    assert builtin.value.status == 409
    with pytest.raises(AgentError) as gateway:
        store.create("five", subnet="10.5.0.0/24", gateway="10.6.0.1")
    assert gateway.value.status == 400
    assert store.find(first.id[:6]) == first and store.find("two") == second
    reloaded = _NoLinks(str(tmp_path), None)
    reloaded.load()
    assert [r.name for r in reloaded.all()] == ["one", "two", "three"]


def test_rules_isolate_bridges_and_internal_networks() -> None:
    script = rules_script([_record("a", "10.1.0.0/24"), _record("b", "10.2.0.0/24", True)], None)
    assert 'iifname "br-a" oifname { "br-b" } drop' in script
    assert 'iifname "br-b" oifname { "br-a" } drop' in script
    assert 'ip saddr 10.1.0.0/24 oifname != "br-a" masquerade' in script
    assert "10.2.0.0/24 oifname" not in script  # no masquerade for the internal network
    assert 'iifname "br-b" oifname != "br-b" drop' in script
    assert 'iifname "br-b" ip daddr != 10.2.0.0/24 drop' in script
    empty = rules_script([], None)
    assert "delete chain ip vmctl networks-forward" in empty and "rule" not in empty


def test_ipam_honours_wanted_addresses_and_ranges(tmp_path: Path) -> None:
    ipam = Ipam(str(tmp_path / "l.json"), "10.3.0.0/24", ip_range="10.3.0.128/25")
    assert ipam.allocate("a") == "10.3.0.128"
    assert ipam.allocate("b", "10.3.0.5") == "10.3.0.5"
    for bad in ("10.3.0.5", "10.4.0.1", "10.3.0.255", "nonsense"):
        with pytest.raises(AddressUnavailable) as error:
            ipam.allocate("c", bad)
        assert error.value.status == 400
    assert ipam.allocate("b", "10.3.0.5") == "10.3.0.5"  # its own lease again


def _container(name: str, **fields: Any) -> Container:
    container = Container(
        id=(name.encode().hex() * 64)[:64],
        name=name,
        created="",
        image_id="",
        image_name="busybox",
        config=fields.pop("config", {}),
        host_config=fields.pop("host_config", {}),
        directory="/nonexistent",
        state=State(status=RUNNING, pid=1),
        **fields,
    )
    return container


def test_link_environment_and_hosts_lines() -> None:
    db = _container(
        "db",
        config={"Env": ["PATH=/bin", "SECRET=x"], "ExposedPorts": {"80/tcp": {}, "53/udp": {}}},
        network={"IPAddress": "172.17.0.2"},
    )
    me = _container("me", host_config={"Links": links.normalize(["db:data"], "me")})
    assert me.host_config["Links"] == ["/db:/me/data"]
    env = links.environment(me, db, "data")
    assert "DATA_NAME=/me/data" in env and "DATA_ENV_SECRET=x" in env
    assert "DATA_PORT=tcp://172.17.0.2:80" in env and "DATA_PORT_53_UDP_PROTO=udp" in env
    assert not any(e.startswith("DATA_ENV_PATH") for e in env)
    assert links.hosts_entries(db, "data") == [f"172.17.0.2\tdata db {db.id[:12]}\n"]
    assert links.targets(me, lambda name: db) == [(db, "data")]


def test_embedded_dns_answers_per_network() -> None:
    def endpoint(net: str, ip: str, *names: str) -> dict[str, Any]:
        return {"NetworkID": net, "IPAddress": ip, "Gateway": "10.1.0.1", "DNSNames": list(names)}

    web = _container(
        "web", network={"Networks": {"front": endpoint("f", "10.1.0.2", "web", "www")}}
    )
    db = _container("db", network={"Networks": {"back": endpoint("b", "10.2.0.2", "db")}})
    both = _container(
        "app",
        host_config={"Links": ["/db:/app/database"]},
        network={
            "Networks": {
                "front": endpoint("f", "10.1.0.3", "app"),
                "back": endpoint("b", "10.2.0.3", "app"),
            }
        },
    )
    attachments = Attachments(None, lambda: [web, db, both])  # type: ignore[arg-type]
    assert attachments.lookup(both.id, "WWW") == ["10.1.0.2"]
    assert attachments.lookup(both.id, "database") == ["10.2.0.2"]  # its link alias
    assert attachments.lookup(web.id, "db") is None  # not on a network web is on
    assert attachments.lookup(web.id, "database") is None  # the alias is app's only
    assert attachments.lookup(web.id, "app") == ["10.1.0.3"]
    assert attachments.lookup(web.id, "host.docker.internal") == ["10.1.0.1"]
    attachments.host_gateway = "10.0.2.2"
    assert attachments.lookup(web.id, "host.docker.internal") == ["10.0.2.2"]


def test_requested_networks_and_resolv_conf() -> None:
    container = _container(
        "x",
        host_config={"NetworkMode": "front"},
        endpoints_config={"front": {}, "back": {}, "bridge": {}},
    )
    assert requested_networks(container) == ["front", "back"]
    text = embedded_resolv_conf("nameserver 10.0.2.3\nsearch lan\noptions ndots:2 edns0\n")
    assert text == "nameserver 127.0.0.11\nsearch lan\noptions ndots:0 edns0\n"
