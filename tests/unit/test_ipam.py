"""Address leases: allocation order, exhaustion, release, persistence, derived MACs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from agent.network import NetworkError
from agent.network.ipam import AddressesExhausted, Ipam, mac_for


def test_allocates_lowest_free_address_after_the_gateway(tmp_path: Path) -> None:
    ipam = Ipam(str(tmp_path / "leases.json"))
    assert (ipam.gateway, ipam.prefix) == ("172.17.0.1", 16)
    assert ipam.allocate("a") == "172.17.0.2"
    assert ipam.allocate("b") == "172.17.0.3"
    assert ipam.allocate("a") == "172.17.0.2"  # an owner keeps its lease
    assert ipam.leases() == {"a": "172.17.0.2", "b": "172.17.0.3"}


def test_gateway_elsewhere_is_skipped(tmp_path: Path) -> None:
    ipam = Ipam(str(tmp_path / "leases.json"), "10.9.0.0/29", gateway="10.9.0.2")
    assert [ipam.allocate(str(i)) for i in range(4)] == [
        "10.9.0.1",
        "10.9.0.3",
        "10.9.0.4",
        "10.9.0.5",
    ]


def test_exhaustion_names_the_subnet(tmp_path: Path) -> None:
    # a /30 has network, gateway, one usable address and broadcast
    ipam = Ipam(str(tmp_path / "leases.json"), "192.168.50.0/30")
    assert ipam.allocate("only") == "192.168.50.2"
    with pytest.raises(AddressesExhausted, match=r"no free address left in 192\.168\.50\.0/30"):
        ipam.allocate("another")
    assert ipam.lookup("another") is None


def test_release_frees_the_address_for_reuse(tmp_path: Path) -> None:
    ipam = Ipam(str(tmp_path / "leases.json"))
    ipam.allocate("a")
    ipam.allocate("b")
    assert ipam.release("a") == "172.17.0.2"
    assert ipam.release("a") is None
    assert ipam.lookup("a") is None
    assert ipam.allocate("c") == "172.17.0.2"


def test_leases_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "leases.json"  # the directory is created on first save
    first = Ipam(str(path))
    first.allocate("a")
    first.allocate("b")
    first.release("a")
    stored = json.loads(path.read_text())
    assert stored["leases"] == {"b": "172.17.0.3"}
    assert stored["subnet"] == "172.17.0.0/16"
    assert os.listdir(path.parent) == ["leases.json"]  # no temporary file left behind

    second = Ipam(str(path))
    assert second.leases() == {"b": "172.17.0.3"}
    assert second.allocate("c") == "172.17.0.2"
    assert second.allocate("d") == "172.17.0.4"


def test_reload_with_another_subnet_drops_foreign_leases(tmp_path: Path) -> None:
    path = str(tmp_path / "leases.json")
    Ipam(path).allocate("a")
    moved = Ipam(path, "10.20.0.0/24")
    assert moved.leases() == {}
    assert moved.allocate("a") == "10.20.0.2"


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    path.write_text('{"leases": {"a": "not an address"}}')
    with pytest.raises(NetworkError, match="cannot read address leases from .*leases.json"):
        Ipam(str(path))
    path.write_text("{truncated")
    with pytest.raises(NetworkError, match="delete the file"):
        Ipam(str(path))


def test_failed_save_keeps_memory_and_file_in_step(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ipam = Ipam(str(state / "leases.json"))
    state.write_text("")  # a file where the state directory should be: saving must fail
    with pytest.raises(NetworkError, match="cannot save address leases"):
        ipam.allocate("a")
    assert ipam.lookup("a") is None


def test_invalid_configuration(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="invalid subnet '172.17.0.1/16'"):
        Ipam(str(tmp_path / "x.json"), "172.17.0.1/16")
    with pytest.raises(NetworkError, match="outside subnet"):
        Ipam(str(tmp_path / "x.json"), "172.17.0.0/16", gateway="10.0.0.1")


def test_concurrent_allocations_are_distinct(tmp_path: Path) -> None:
    ipam = Ipam(str(tmp_path / "leases.json"))
    results: list[str] = []
    lock = threading.Lock()

    def grab(owner: str) -> None:
        address = ipam.allocate(owner)
        with lock:
            results.append(address)

    threads = [threading.Thread(target=grab, args=(f"c{i}",)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 40
    assert len(Ipam(ipam.path).leases()) == 40


def test_mac_follows_docker() -> None:
    assert mac_for("172.17.0.2") == "02:42:ac:11:00:02"
    assert mac_for("10.0.1.255") == "02:42:0a:00:01:ff"
