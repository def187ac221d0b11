"""Containers on user-defined networks: their endpoints, names, and the embedded DNS.

A container asks for networks with NetworkMode (the first) and
NetworkingConfig.EndpointsConfig (all of them, with Aliases and IPAMConfig.IPv4Address),
kept in its record's ``endpoints_config``. At its start each network gets a veth pair:
the default bridge (when it is one of them) is eth0, the user networks follow as eth0/eth1…
in order, and only the first network gives the default route (none for an Internal one).
What was attached is kept in ``container.network["Networks"]`` (name -> endpoint), with the
first network's address also at the top level, where the default bridge keeps it.

The embedded DNS (agent/network/dns.py) answers from those records: a name (container name,
alias, short ID, a --link alias of the asker) resolves to the addresses on the networks
the asker is on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from agent import events
from agent.containers.model import Container
from agent.errors import AgentError, BadRequest, NotFound
from agent.network.bridge import Bridge
from agent.network.dns import ADDRESS as DNS_ADDRESS
from agent.network.dns import EmbeddedDns, upstream_servers
from agent.network.ids import BUILTIN_NETWORKS
from agent.network.store import NetworkRecord, NetworkStore

log = logging.getLogger(__name__)

HOST_ALIAS = "host.docker.internal"


def user_veth(container_id: str, network_id: str) -> str:
    """The host end on a user network: "veth" + 8 hex of a hash of both IDs."""
    return "veth" + hashlib.sha256(f"{container_id}/{network_id}".encode()).hexdigest()[:8]


def endpoint_id(container_id: str, network_id: str) -> str:
    return hashlib.sha256(f"endpoint {container_id} {network_id}".encode()).hexdigest()


def requested_networks(container: Container) -> list[str]:
    """The user-defined networks a container asks for, its primary one first."""
    mode = str(container.host_config.get("NetworkMode") or "default")
    names = [] if mode in ("default", *BUILTIN_NETWORKS) or ":" in mode else [mode]
    for name in container.endpoints_config:
        if name not in names and name not in BUILTIN_NETWORKS and name != "default":
            names.append(name)
    return names


def link_aliases(container: Container) -> dict[str, str]:
    """--link name:alias of a container: alias -> target name (both without "/")."""
    aliases: dict[str, str] = {}
    for link in container.host_config.get("Links") or []:
        target, _, alias = str(link).partition(":")
        target = target.strip("/")
        alias = alias.rsplit("/", 1)[-1] or target
        aliases[alias.lower()] = target
    return aliases


def embedded_resolv_conf(text: str) -> str:
    """A resolv.conf that sends every query to the embedded DNS, keeping search domains and
    options and adding ndots:0 (as dockerd does)."""
    lines = [f"nameserver {DNS_ADDRESS}\n"]
    options: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "search":
            lines.append(line + "\n")
        elif words and words[0] == "options":
            options += [w for w in words[1:] if not w.startswith("ndots:")]
    lines.append("options " + " ".join(["ndots:0", *options]) + "\n")
    return "".join(lines)


class Attachments:
    """Connects containers to user networks; `containers` lists the engine's containers."""

    def __init__(
        self,
        store: NetworkStore,
        containers: Callable[[], list[Container]],
        host_gateway: str = "",
    ) -> None:
        self.store = store
        self.containers = containers
        self.host_gateway = host_gateway
        self.dns = EmbeddedDns(self.lookup, self.upstreams)
        self._lock = threading.RLock()

    # --- at start and exit ---------------------------------------------------------------
    def attach(
        self, container: Container, netns_fd: int, primary: dict[str, Any]
    ) -> dict[str, Any]:
        """Connect a starting container to its user networks; `primary` is its default
        bridge endpoint (or empty). Returns the container's new `network` record."""
        record = dict(primary)
        networks: dict[str, Any] = {}
        if primary.get("IPAddress"):
            networks["bridge"] = {
                **primary,
                "NetworkID": "bridge",
                "Interface": "eth0",
                "EndpointID": primary.get("HostVeth", ""),
            }
        index = len(networks)
        done: list[tuple[NetworkRecord, str]] = []
        try:
            for name in requested_networks(container):
                network = self.store.find(name)
                if network is None:
                    raise NotFound(f"network {name} not found")
                first = index == 0
                endpoint = self._connect(container, network, netns_fd, f"eth{index}", first)
                done.append((network, endpoint["HostVeth"]))
                networks[network.name] = endpoint
                if first:
                    record.update({k: endpoint[k] for k in _TOP_LEVEL})
                index += 1
        except BaseException:
            for network, veth in done:  # give back the leases taken before the failure
                with contextlib.suppress(AgentError):
                    self.store.bridge(network.id).detach(container.id, veth)
            raise
        record["Networks"] = networks
        if len(networks) > ("bridge" in networks):
            self.dns.listen(container.id, netns_fd)
        return record

    def _connect(
        self,
        container: Container,
        network: NetworkRecord,
        netns_fd: int,
        ifname: str,
        default_route: bool,
    ) -> dict[str, Any]:
        config = container.endpoints_config.get(network.name) or {}
        wanted = ((config.get("IPAMConfig") or {}).get("IPv4Address")) or None
        bridge: Bridge = self.store.bridge(network.id)
        attached = bridge.attach(
            container.id,
            netns_fd,
            ifname=ifname,
            host_veth=user_veth(container.id, network.id),
            address=wanted,
            default_route=default_route and not network.internal,
        )
        aliases = [str(a) for a in config.get("Aliases") or []]
        names = [container.name, container.id[:12], *aliases]
        endpoint = {
            "NetworkID": network.id,
            "EndpointID": endpoint_id(container.id, network.id),
            "IPAddress": attached.ip,
            "IPPrefixLen": attached.prefix,
            "Gateway": attached.gateway,
            "MacAddress": attached.mac,
            "HostVeth": attached.host_veth,
            "Interface": ifname,
            "Aliases": aliases or None,
            "DNSNames": list(dict.fromkeys(names)),
            "IPAMConfig": config.get("IPAMConfig") or None,
        }
        events.publish(
            "network",
            "connect",
            network.id,
            {"container": container.id, "name": network.name, "type": "bridge"},
        )
        return endpoint

    def detach(self, container: Container) -> None:
        """Release a stopped container's user-network endpoints (its veths die with it)."""
        self.dns.close(container.id)
        for name, endpoint in ((container.network or {}).get("Networks") or {}).items():
            network = self.store.find(str(endpoint.get("NetworkID", "")))
            if network is None or name == "bridge":
                continue
            try:
                self.store.bridge(network.id).detach(container.id, endpoint.get("HostVeth"))
            except AgentError as error:
                log.warning("%s", error)
            events.publish(
                "network",
                "disconnect",
                network.id,
                {"container": container.id, "name": network.name, "type": "bridge"},
            )

    def restore(self, container: Container) -> None:
        """A re-adopted running container gets its DNS sockets back."""
        networks = (container.network or {}).get("Networks") or {}
        if not any(n != "bridge" for n in networks) or not container.state.pid:
            return
        try:
            fd = os.open(f"/proc/{container.state.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            self.dns.listen(container.id, fd)
        except OSError as error:
            log.warning("%s: no embedded DNS: %s", container.id[:12], error)
        finally:
            os.close(fd)

    # --- connect and disconnect (the API) --------------------------------------------------
    def connect(self, container: Container, network: NetworkRecord, config: dict[str, Any]) -> None:
        mode = str(container.host_config.get("NetworkMode") or "default")
        if mode in ("host", "none") or mode.startswith("container:"):
            raise BadRequest(
                f"container sharing network namespace with another container or host "
                f"(--network {mode}) cannot be connected to any other network"
            )
        with self._lock:
            current = (container.network or {}).get("Networks") or {}
            if network.name in current or (
                not container.state.running and network.name in requested_networks(container)
            ):
                raise AgentError(
                    403,
                    f"endpoint with name {container.name} already exists in network {network.name}",
                )
            container.endpoints_config[network.name] = config
            if container.state.running:
                used = {str(e.get("Interface")) for e in current.values()}
                index = next(i for i in range(len(used) + 1) if f"eth{i}" not in used)
                try:
                    fd = os.open(f"/proc/{container.state.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        endpoint = self._connect(container, network, fd, f"eth{index}", False)
                        self.dns.listen(container.id, fd)
                    finally:
                        os.close(fd)
                except BaseException:
                    container.endpoints_config.pop(network.name, None)
                    raise
                container.network = {
                    **container.network,
                    "Networks": {**current, network.name: endpoint},
                }
            container.save()

    def disconnect(self, container: Container, network: NetworkRecord) -> None:
        with self._lock:
            current = dict((container.network or {}).get("Networks") or {})
            attached = container.state.running and network.name in current
            if not attached and network.name not in requested_networks(container):
                raise AgentError(
                    403, f"container {container.id[:12]} is not connected to network {network.name}"
                )
            container.endpoints_config.pop(network.name, None)
            if str(container.host_config.get("NetworkMode")) == network.name:
                rest = requested_networks(container)
                container.host_config["NetworkMode"] = rest[0] if rest else "none"
            if attached:
                endpoint = current.pop(network.name)
                self.store.bridge(network.id).detach(container.id, endpoint.get("HostVeth"))
                record = {**container.network, "Networks": current}
                if record.get("IPAddress") == endpoint.get("IPAddress"):
                    for key in _TOP_LEVEL:
                        record.pop(key, None)
                container.network = record
                if not any(n != "bridge" for n in current):
                    self.dns.close(container.id)
                events.publish(
                    "network",
                    "disconnect",
                    network.id,
                    {"container": container.id, "name": network.name, "type": "bridge"},
                )
            container.save()

    def members(self, network: NetworkRecord) -> dict[str, dict[str, Any]]:
        """The running containers on a network: id -> endpoint."""
        found = {}
        for container in self.containers():
            if not container.state.running:
                continue
            endpoint = ((container.network or {}).get("Networks") or {}).get(network.name)
            if endpoint and endpoint.get("NetworkID") == network.id:
                found[container.id] = {"Name": container.name, **endpoint}
        return found

    def users(self, network: NetworkRecord) -> list[Container]:
        """The running containers attached to the network (as dockerd: a stopped container
        holds no endpoint, so it does not keep its network from being removed)."""
        return [
            c
            for c in self.containers()
            if c.state.running and network.name in ((c.network or {}).get("Networks") or {})
        ]

    # --- names -------------------------------------------------------------------------------
    def upstreams(self, asker_id: str) -> list[str]:
        """Where a name the engine does not know is asked: the container's --dns servers,
        else the agent's own resolvers (as dockerd's embedded DNS)."""
        asker = next((c for c in self.containers() if c.id == asker_id), None)
        servers = [str(s) for s in (asker.host_config.get("Dns") or [])] if asker else []
        return servers or upstream_servers()

    def lookup(self, asker_id: str, name: str) -> list[str] | None:
        """The embedded DNS's answer for `name` asked by container asker_id, or None."""
        name = name.lower().rstrip(".")
        everyone = [c for c in self.containers() if c.state.running]
        asker = next((c for c in everyone if c.id == asker_id), None)
        if asker is None:
            return None
        mine = {
            n: e for n, e in ((asker.network or {}).get("Networks") or {}).items() if n != "bridge"
        }
        if name == HOST_ALIAS:
            if self.host_gateway:
                return [self.host_gateway]
            return [str(e["Gateway"]) for e in list(mine.values())[:1]] or None
        target_name = link_aliases(asker).get(name)
        found: list[str] = []
        for other in everyone:
            for net, endpoint in ((other.network or {}).get("Networks") or {}).items():
                if net not in mine or not endpoint.get("IPAddress"):
                    continue
                names = [str(n).lower() for n in endpoint.get("DNSNames") or []]
                if name in names or (target_name and other.name == target_name):
                    found.append(str(endpoint["IPAddress"]))
        return list(dict.fromkeys(found)) or None


_TOP_LEVEL = ("IPAddress", "IPPrefixLen", "Gateway", "MacAddress", "HostVeth")
