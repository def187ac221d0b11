"""Published ports: `-p [ip:]hostPort:containerPort[/udp]`, `-P`, and what inspect shows.

Data path: nftables DNAT in the agent's own table (`ip vmctl`), in chains and maps named
`ports-*` / `published-*`, so no userland proxy copies the bytes:

* ``published-port`` maps ``proto . host port`` to ``container address . container port``
  for bindings on every address; ``published-addr-port`` does the same keyed by the host
  address as well, for a binding to one address (`-p 127.0.0.1:8080:80`, natively).
* ``ports-prerouting`` (traffic from outside and from containers) and ``ports-output``
  (connections made on this machine, 127.0.0.1 included) translate packets addressed to a
  local address through those maps.
* ``ports-postrouting`` masquerades translated traffic that came from 127.0.0.0/8 (the
  kernel would drop a loopback source leaving through a bridge; `route_localnet` is set
  on each bridge that carries a published container so it routes at all) and translated
  traffic from a container subnet (hairpin: a container reaching its own or a neighbour's
  published port through a host address must get the replies back through us).

The whole port state is rewritten in one `nft -f` transaction at each change, so it is
idempotent and survives the bridge re-creating the table. Each published host port also
holds a bound (not listening) socket while the container runs, so a program on the
machine cannot take it later and a taken port is found at start, before the container runs.

Behind a host (the VM), a host publisher (vmctl's host agent) connects to
``GET /_vmctl/publisher`` and is asked to forward each port from the host; a start waits for
its answer. The host then owns the host address (`HostIp`), so the guest translates a port
on every address.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import queue
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError
from agent.network.published import published_on

log = logging.getLogger(__name__)

NFT_TABLE = "vmctl"  # shared with the bridge's NAT (agent/network/bridge.py)
EPHEMERAL_LOW = 32768  # Docker's range for -P and for "-p 80"
EPHEMERAL_HIGH = 60999
PROTOCOLS = ("tcp", "udp")
HOST_ANSWER_TIMEOUT = 10.0


class PortSpecError(ValueError):
    """An invalid port binding in a create request (a 400)."""


@dataclass(frozen=True)
class PortRequest:
    """One binding as asked for: a host port range (0-0: any ephemeral port)."""

    container_port: int
    proto: str
    host_ip: str  # "" (not given) or "0.0.0.0": every address; else that one
    host_low: int
    host_high: int


@dataclass(frozen=True)
class Binding:
    """One binding as allocated."""

    container_port: int
    proto: str
    host_ip: str  # "" (not given) or "0.0.0.0": every address; else that one
    host_port: int

    def to_json(self) -> dict[str, Any]:
        return {
            "container_port": self.container_port,
            "proto": self.proto,
            "host_ip": self.host_ip,
            "host_port": self.host_port,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Binding:
        return cls(
            int(data["container_port"]),
            str(data["proto"]),
            str(data["host_ip"]),
            int(data["host_port"]),
        )

    @property
    def shown_ip(self) -> str:
        return self.host_ip or published_on()


def wildcard(host_ip: str) -> bool:
    return host_ip in ("", "0.0.0.0")


# --- parsing --------------------------------------------------------------------------------


def _port_number(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PortSpecError(f"invalid {what}: {text!r}")
    return int(text)


def parse_container_port(key: str) -> tuple[int, str]:
    """An ExposedPorts / PortBindings key: "80", "80/tcp", "53/udp"."""
    port, _, proto = str(key).partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise PortSpecError(f"invalid proto: {proto!r} (only tcp and udp are supported)")
    return _port_number(port, "containerPort"), proto


def parse_host_port(text: str) -> tuple[int, int]:
    """A HostPort: "" or "0" (ephemeral), "8080", or a range "8000-8010"."""
    text = str(text or "").strip()
    if text in ("", "0"):
        return 0, 0
    low, sep, high = text.partition("-")
    first = _port_number(low, "hostPort")
    last = _port_number(high, "hostPort") if sep else first
    if last < first:
        raise PortSpecError(f"invalid hostPort range: {text!r}")
    return first, last


def parse_host_ip(text: str) -> str:
    """ "" (no address given), "0.0.0.0" (every address, asked for explicitly: behind a
    host that matters, a bare binding is published on the host's loopback only) or one."""
    text = str(text or "").strip()
    if text in ("", "0.0.0.0"):
        return text
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise PortSpecError(f"invalid IP address: {text!r}") from None
    if address.version != 4:
        raise PortSpecError(f"IPv6 host addresses are not supported: {text!r}")
    return str(address)


def requested_ports(config: dict[str, Any], host_config: dict[str, Any]) -> list[PortRequest]:
    """The bindings a container asks for: HostConfig.PortBindings, plus with
    PublishAllPorts every exposed port not bound there (on an ephemeral port)."""
    requests: list[PortRequest] = []
    bound: set[tuple[int, str]] = set()
    bindings = host_config.get("PortBindings") or {}
    if not isinstance(bindings, dict):
        raise PortSpecError("HostConfig.PortBindings must be an object")
    for key, entries in bindings.items():
        port, proto = parse_container_port(key)
        bound.add((port, proto))
        if entries is None:
            entries = [{}]
        if not isinstance(entries, list):
            raise PortSpecError(f"the bindings of {key} must be a list")
        for entry in entries or [{}]:
            if not isinstance(entry, dict):
                raise PortSpecError(f"invalid binding for {key}: {entry!r}")
            low, high = parse_host_port(entry.get("HostPort", ""))
            requests.append(
                PortRequest(port, proto, parse_host_ip(entry.get("HostIp", "")), low, high)
            )
    if host_config.get("PublishAllPorts"):
        for key in sorted(exposed_ports(config)):
            port, proto = parse_container_port(key)
            if (port, proto) not in bound:
                requests.append(PortRequest(port, proto, "", 0, 0))
    return requests


def exposed_ports(config: dict[str, Any]) -> list[str]:
    """The container's EXPOSE keys, normalised ("80" → "80/tcp")."""
    keys = []
    for key in config.get("ExposedPorts") or {}:
        port, proto = parse_container_port(key)
        keys.append(f"{port}/{proto}")
    return keys


# --- what inspect and ps show -----------------------------------------------------------------


def inspect_ports(
    config: dict[str, Any], bindings: Iterable[Binding] | None
) -> dict[str, list[dict[str, str]] | None]:
    """NetworkSettings.Ports: every exposed or published port; None when not published."""
    ports: dict[str, list[dict[str, str]] | None] = {}
    for key in exposed_ports(config):
        ports[key] = None
    for binding in bindings or []:
        entries = ports.get(f"{binding.container_port}/{binding.proto}") or []
        entries.append({"HostIp": binding.shown_ip, "HostPort": str(binding.host_port)})
        ports[f"{binding.container_port}/{binding.proto}"] = entries
    return ports


def summary_ports(
    config: dict[str, Any], bindings: Iterable[Binding] | None
) -> list[dict[str, Any]]:
    """The Ports of a GET /containers/json entry."""
    result: list[dict[str, Any]] = []
    for key, entries in inspect_ports(config, bindings).items():
        port, proto = parse_container_port(key)
        if not entries:
            result.append({"PrivatePort": port, "Type": proto})
        for entry in entries or []:
            result.append(
                {
                    "IP": entry["HostIp"],
                    "PrivatePort": port,
                    "PublicPort": int(entry["HostPort"]),
                    "Type": proto,
                }
            )
    return result


# --- nftables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """A running container's allocated ports and where they lead."""

    address: str  # the container's address on its bridge
    subnet: str  # that bridge's subnet, e.g. "172.17.0.0/16"
    bindings: tuple[Binding, ...]


def nft_script(published: Iterable[Published], any_address: bool) -> str:
    """The whole port state of the table, as one idempotent transaction."""
    t = f"ip {NFT_TABLE}"
    lines = [
        f"add table {t}",
        f"add map {t} published-port "
        "{ type inet_proto . inet_service : ipv4_addr . inet_service; }",
        f"add map {t} published-addr-port "
        "{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }",
        f"add set {t} published-subnets {{ type ipv4_addr; flags interval; }}",
    ]
    lookups = [
        "fib daddr type local dnat ip to ip daddr . meta l4proto . th dport "
        "map @published-addr-port",
        "fib daddr type local dnat ip to meta l4proto . th dport map @published-port",
    ]
    for chain, hook in (("ports-prerouting", "prerouting"), ("ports-output", "output")):
        # -100 is dstnat; nft before 1.0.7 knows that name only in prerouting
        lines.append(
            f"add chain {t} {chain} {{ type nat hook {hook} priority -100; policy accept; }}"
        )
        lines.append(f"flush chain {t} {chain}")
        lines += [f"add rule {t} {chain} {rule}" for rule in lookups]
    lines += [
        f"add chain {t} ports-postrouting "
        "{ type nat hook postrouting priority srcnat; policy accept; }",
        f"flush chain {t} ports-postrouting",
        f"add rule {t} ports-postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade",
        f"add rule {t} ports-postrouting ct status dnat ip saddr @published-subnets masquerade",
    ]
    by_port: list[str] = []
    by_address: list[str] = []
    subnets: set[str] = set()
    for item in published:
        subnets.add(item.subnet)
        for b in item.bindings:
            target = f"{item.address} . {b.container_port}"
            if not wildcard(b.host_ip) and not any_address:
                by_address.append(f"{b.host_ip} . {b.proto} . {b.host_port} : {target}")
            else:
                by_port.append(f"{b.proto} . {b.host_port} : {target}")
    for name, elements in (
        ("published-port", by_port),
        ("published-addr-port", by_address),
        ("published-subnets", sorted(_disjoint(subnets))),
    ):
        kind = "set" if name == "published-subnets" else "map"
        lines.append(f"flush {kind} {t} {name}")
        if elements:
            lines.append(f"add element {t} {name} {{ {', '.join(elements)} }}")
    return "\n".join(lines) + "\n"


def _disjoint(subnets: set[str]) -> set[str]:
    """Drop subnets inside others: an interval set refuses overlapping elements."""
    nets = [ipaddress.ip_network(s, strict=False) for s in subnets]
    return {
        str(n)
        for n in nets
        if not any(o != n and n.subnet_of(o) for o in nets)  # type: ignore[arg-type]
    }


def clear_script() -> str:
    """Remove the port chains, maps and set (the bridge's own chains stay)."""
    t = f"ip {NFT_TABLE}"
    lines = [f"add table {t}"]
    for chain in ("ports-prerouting", "ports-output", "ports-postrouting"):
        lines += [f"add chain {t} {chain}", f"delete chain {t} {chain}"]
    lines += [
        f"add map {t} published-port "
        "{ type inet_proto . inet_service : ipv4_addr . inet_service; }",
        f"delete map {t} published-port",
        f"add map {t} published-addr-port "
        "{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }",
        f"delete map {t} published-addr-port",
        f"add set {t} published-subnets {{ type ipv4_addr; flags interval; }}",
        f"delete set {t} published-subnets",
    ]
    return "\n".join(lines) + "\n"


IFLA_PROTINFO = 12
IFLA_BRPORT_MODE = 4  # hairpin mode
NLA_F_NESTED = 0x8000  # the bridge reads IFLA_PROTINFO as port attributes only with it


def bridge_port_setup(host_veth: str) -> str | None:
    """Put the container's bridge port in hairpin mode (a container reaching its own
    published port through a host address gets its packets back through the same port)
    and return the bridge's name. Over rtnetlink: /sys may show another network namespace
    than the agent's."""
    from agent.network import netlink

    if not host_veth:
        return None
    try:
        with netlink.RouteSocket() as host:
            veth = host.get_link(host_veth)
            if veth is None or veth.master is None:
                return None
            mode = netlink.attr(IFLA_BRPORT_MODE, b"\x01")
            body = netlink.ifinfomsg(index=veth.index, family=socket.AF_BRIDGE)
            body += netlink.attr(IFLA_PROTINFO | NLA_F_NESTED, mode)
            host.request(netlink.RTM_SETLINK, body, f"set hairpin mode on {host_veth}")
            return next((link.name for link in host.links() if link.index == veth.master), None)
    except OSError as error:
        log.warning("cannot set up bridge port %s: %s", host_veth, error)
        return None


def allow_localnet(bridge: str) -> None:
    """Let packets with a 127.0.0.0/8 source (connections to 127.0.0.1:<published port>
    on this machine, translated by ports-output) be routed out of this bridge; they are
    masqueraded to the bridge's address on the way out."""
    path = f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"
    try:
        with open(path, "w") as handle:
            handle.write("1")
    except OSError as error:
        log.warning("cannot set %s: %s", path, error)


# --- the host publisher (the VM's host agent) -------------------------------------------------


class HostLink:
    """The connected host publisher: requests go out as JSON lines on its stream, answers
    come back as POST /_vmctl/publisher/{id}."""

    def __init__(self) -> None:
        self.outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._answers: dict[int, threading.Event] = {}
        self._errors: dict[int, str] = {}
        self._next = 0

    def send(self, message: dict[str, Any], answered: bool = False) -> int:
        """Queue a request; with ``answered`` the host's answer can be waited for."""
        with self._lock:
            self._next += 1
            request_id = self._next
            if answered:
                self._answers[request_id] = threading.Event()
        self.outbox.put({"id": request_id, **message})
        return request_id

    def wait(self, request_id: int, timeout: float) -> str | None:
        """The host's error ("" for success), or None if it did not answer in time."""
        with self._lock:
            event = self._answers.get(request_id)
        if event is None:
            return ""
        event.wait(timeout)
        with self._lock:
            self._answers.pop(request_id, None)
            if request_id in self._errors:
                return self._errors.pop(request_id)
        return "the host agent's connection closed" if self.closed.is_set() else None

    def answer(self, request_id: int, error: str) -> bool:
        with self._lock:
            event = self._answers.get(request_id)
            if event is None:
                return False
            self._errors[request_id] = error
        event.set()
        return True

    def close(self) -> None:
        self.closed.set()
        with self._lock:
            events = list(self._answers.values())
        for event in events:
            event.set()


def _host_ports(bindings: Iterable[Binding]) -> list[dict[str, Any]]:
    return [{"proto": b.proto, "host_ip": b.host_ip, "host_port": b.host_port} for b in bindings]


# --- the publisher ----------------------------------------------------------------------------


@dataclass
class _Allocation:
    bindings: tuple[Binding, ...]
    sockets: list[socket.socket]
    published: Published | None = None


class PortPublisher:
    """Allocates host ports to containers and keeps the DNAT rules and the host's forwards
    in step with the running containers."""

    def __init__(self, apply_script: Any = None) -> None:
        from agent.network.bridge import run_nft

        self._run_nft = apply_script or (lambda script: run_nft(script, "publish ports"))
        self._lock = threading.RLock()
        self._allocations: dict[str, _Allocation] = {}
        self._cursor = EPHEMERAL_LOW
        self._host: HostLink | None = None
        self.behind_host = False  # set once a host publisher has connected

    # -- queries --
    def bindings(self, container_id: str) -> tuple[Binding, ...] | None:
        with self._lock:
            allocation = self._allocations.get(container_id)
            return allocation.bindings if allocation else None

    # -- start: reserve, then activate once the container has its address --
    def reserve(self, container_id: str, name: str, requests: list[PortRequest]) -> list[Binding]:
        """Allocate host ports (and have the host forward them); raises with Docker's
        message when one is taken. Nothing stays allocated on failure."""
        if not requests:
            return []
        with self._lock:
            self.withdraw(container_id)
            sockets: list[socket.socket] = []
            bindings: list[Binding] = []
            try:
                for request in requests:
                    binding, held = self._allocate(container_id, name, request, bindings)
                    bindings.append(binding)
                    sockets.append(held)
            except BaseException:
                for held in sockets:
                    held.close()
                raise
            self._allocations[container_id] = _Allocation(tuple(bindings), sockets)
            host = self._host
        if host is not None:
            request_id = host.send(
                {"op": "publish", "container": container_id, "ports": _host_ports(bindings)},
                answered=True,
            )
            error = host.wait(request_id, HOST_ANSWER_TIMEOUT)
            if error is None:  # it may still forward them: tell it to undo that
                self.withdraw(container_id)
                error = f"the host did not answer within {HOST_ANSWER_TIMEOUT:.0f} s"
            elif error:  # it refused and holds nothing for this container
                self.withdraw(container_id, tell_host=False)
            if error:
                raise AgentError(500, f"cannot publish ports on the host: {error}")
        return bindings

    def activate(self, container_id: str, address: str, prefix: int, host_veth: str) -> None:
        """Install the DNAT rules of a reserved container, now at ``address``."""
        with self._lock:
            allocation = self._allocations.get(container_id)
            if allocation is None:
                return
            subnet = str(ipaddress.ip_interface(f"{address}/{prefix}").network)
            allocation.published = Published(address, subnet, allocation.bindings)
            bridge = bridge_port_setup(host_veth)
            if bridge is not None:
                allow_localnet(bridge)
            try:
                self._apply()
            except BaseException:
                allocation.published = None
                raise

    def restore(self, container_id: str, network: dict[str, Any]) -> None:
        """A re-adopted running container (agent restart): take its ports back."""
        saved = network.get("Ports") or []
        if not saved:
            return
        bindings = tuple(Binding.from_json(b) for b in saved)
        with self._lock:
            sockets = []
            for binding in bindings:
                with contextlib.suppress(OSError):
                    sockets.append(_bind(binding.proto, binding.host_ip, binding.host_port))
            self._allocations[container_id] = _Allocation(bindings, sockets)
        address = str(network.get("IPAddress") or "")
        if address:
            try:
                self.activate(
                    container_id,
                    address,
                    int(network.get("IPPrefixLen") or 32),
                    str(network.get("HostVeth") or ""),
                )
            except AgentError as error:
                log.warning("%s: cannot restore published ports: %s", container_id[:12], error)

    def withdraw(self, container_id: str, tell_host: bool = True) -> None:
        """The container stopped or went away: its rules, sockets and host forwards go."""
        with self._lock:
            allocation = self._allocations.pop(container_id, None)
            if allocation is None:
                return
            for held in allocation.sockets:
                held.close()
            host = self._host
            if allocation.published is not None:
                try:
                    self._apply()
                except AgentError as error:
                    log.warning("%s: cannot withdraw ports: %s", container_id[:12], error)
        if host is not None and tell_host:
            host.send({"op": "withdraw", "container": container_id})

    def clear(self) -> None:
        with self._lock:
            for container_id in list(self._allocations):
                self.withdraw(container_id)
            self._run_nft(clear_script())

    # -- the host publisher --
    @property
    def host(self) -> HostLink | None:
        return self._host

    def connect_host(self) -> HostLink:
        """A host publisher connected: it replaces any previous one and is told every port
        published now (it drops forwards it holds beyond those)."""
        link = HostLink()
        with self._lock:
            if self._host is not None:
                self._host.close()
            self._host = link
            if not self.behind_host:
                self.behind_host = True
                with contextlib.suppress(AgentError):
                    self._apply()
            ports = {cid: _host_ports(a.bindings) for cid, a in self._allocations.items()}
            link.send({"op": "sync", "containers": ports})
        return link

    def disconnect_host(self, link: HostLink) -> None:
        with self._lock:
            if self._host is link:
                self._host = None
        link.close()

    # -- internals --
    def _apply(self) -> None:
        published = [a.published for a in self._allocations.values() if a.published]
        self._run_nft(nft_script(published, self.behind_host))

    def _allocate(
        self, container_id: str, name: str, request: PortRequest, pending: list[Binding]
    ) -> tuple[Binding, socket.socket]:
        if request.host_low:
            candidates: Iterable[int] = range(request.host_low, request.host_high + 1)
        else:
            span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
            start = self._cursor
            candidates = (EPHEMERAL_LOW + (start - EPHEMERAL_LOW + i) % span for i in range(span))
        last_error: AgentError | None = None
        for port in candidates:
            binding = Binding(request.container_port, request.proto, request.host_ip, port)
            if self._taken(binding, pending):
                last_error = AgentError(
                    500,
                    f"driver failed programming external connectivity on endpoint {name} "
                    f"({container_id[:12]}): Bind for {binding.shown_ip}:{port} failed: "
                    "port is already allocated",
                )
                continue
            try:
                # behind a host, HostIp is the host's address: the host agent binds it
                held = _bind(binding.proto, "" if self.behind_host else binding.host_ip, port)
            except OSError as error:
                reason = os.strerror(error.errno or errno.EADDRINUSE).lower()
                last_error = AgentError(
                    500,
                    f"driver failed programming external connectivity on endpoint {name} "
                    f"({container_id[:12]}): failed to bind host port for "
                    f"{binding.shown_ip}:{port}:{request.container_port}/{request.proto}: "
                    f"{reason}",
                )
                continue
            if not request.host_low:
                self._cursor = port + 1 if port < EPHEMERAL_HIGH else EPHEMERAL_LOW
            return binding, held
        if last_error is None or (not request.host_low):
            raise AgentError(
                500,
                f"no free host port for {request.container_port}/{request.proto} in "
                f"{EPHEMERAL_LOW}-{EPHEMERAL_HIGH}",
            )
        raise last_error

    def _taken(self, binding: Binding, pending: list[Binding]) -> bool:
        others = [b for a in self._allocations.values() for b in a.bindings] + pending
        for other in others:
            if other.proto != binding.proto or other.host_port != binding.host_port:
                continue
            if self.behind_host or wildcard(other.host_ip) or wildcard(binding.host_ip):
                return True
            if other.host_ip == binding.host_ip:
                return True
        return False


def _bind(proto: str, host_ip: str, port: int) -> socket.socket:
    """Hold the host port: a bound socket (TCP: not listening, so it takes no traffic)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    held = socket.socket(socket.AF_INET, kind)
    try:
        if proto == "tcp":  # a connection in TIME_WAIT does not hold the port
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.set_inheritable(False)
        held.bind((host_ip or "0.0.0.0", port))
    except BaseException:
        held.close()
        raise
    return held
