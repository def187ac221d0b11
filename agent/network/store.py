"""User-defined networks: their records, their bridges and their nftables chains.

Each network is a JSON record under ``<root>/network/user/<id>.json`` with its leases next
to it (``<id>-leases.json``) and one Linux bridge, ``br-<12 hex of the id>`` unless the
com.docker.network.bridge.name option names another. At agent start every recorded network
gets its bridge back (a restart of the VM loses them).

Isolation lives in the agent's nftables table (``ip vmctl``, shared with the default
bridge and published ports) in chains of their own, rewritten as a whole at each change:

* ``networks-forward``: drops traffic between two different bridges (the default bridge
  included), and anything that would leave an Internal network;
* ``networks-input``: an Internal network's containers reach no address of the host
  outside their subnet;
* ``networks-postrouting``: masquerades every other network's traffic that leaves it.

Attaching containers (veths, addresses, the embedded DNS) is agent/network/attachments.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from agent.errors import AgentError, BadRequest, Conflict, NotFound
from agent.network import NetworkError
from agent.network.bridge import NFT_TABLE, Bridge, enable_forwarding, run_nft
from agent.network.ids import BUILTIN_NETWORKS

log = logging.getLogger(__name__)

BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
MTU_OPTION = "com.docker.network.driver.mtu"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
CHAINS = (
    ("networks-forward", "type filter hook forward priority filter - 1; policy accept;"),
    ("networks-input", "type filter hook input priority filter - 1; policy accept;"),
    ("networks-postrouting", "type nat hook postrouting priority srcnat; policy accept;"),
)


def candidate_subnets() -> Iterable[ipaddress.IPv4Network]:
    """Docker's default pools, in its order: 172.18-31.0.0/16, then 192.168.x.0/20."""
    for second in range(18, 32):
        yield ipaddress.IPv4Network(f"172.{second}.0.0/16")
    for third in range(0, 256, 16):
        yield ipaddress.IPv4Network(f"192.168.{third}.0/20")


@dataclass
class NetworkRecord:
    id: str
    name: str
    created: str
    subnet: str
    gateway: str
    ip_range: str = ""
    internal: bool = False
    attachable: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    bridge: str = ""
    user_subnet: bool = False  # the subnet was asked for (IPAM Config) rather than chosen

    @property
    def mtu(self) -> int:
        try:
            return int(self.options.get(MTU_OPTION) or 1500)
        except ValueError:
            return 1500


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


class NetworkStore:
    """The user-defined networks of one engine; `default` is the default bridge (or None)."""

    def __init__(self, state_dir: str, default: Bridge | None) -> None:
        self.directory = os.path.join(state_dir, "user")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.default = default
        self._lock = threading.RLock()
        self._records: dict[str, NetworkRecord] = {}
        self._bridges: dict[str, Bridge] = {}
        self._chains_installed = False

    # --- loading -------------------------------------------------------------------------
    def load(self) -> None:
        """Read every record and recreate the bridges and the nft chains."""
        with self._lock:
            for entry in sorted(os.listdir(self.directory)):
                if not re.fullmatch(r"[0-9a-f]{64}\.json", entry):
                    continue
                path = os.path.join(self.directory, entry)
                try:
                    with open(path) as handle:
                        record = NetworkRecord(**json.load(handle))
                    self._add(record)
                except (OSError, ValueError, TypeError, AgentError) as error:
                    log.error("cannot restore network from %s: %s", path, error)
            self._apply_rules()

    def _add(self, record: NetworkRecord) -> None:
        bridge = Bridge(
            self._leases_path(record.id),
            record.bridge,
            record.subnet,
            record.gateway,
            record.ip_range or None,
            record.mtu,
        )
        bridge.ensure_link()
        self._records[record.id] = record
        self._bridges[record.id] = bridge

    def _leases_path(self, network_id: str) -> str:
        return os.path.join(self.directory, f"{network_id}-leases.json")

    def _record_path(self, network_id: str) -> str:
        return os.path.join(self.directory, f"{network_id}.json")

    # --- queries -------------------------------------------------------------------------
    def all(self) -> list[NetworkRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.created)

    def find(self, ref: str) -> NetworkRecord | None:
        """A network by full name, full ID, or unique ID prefix (Docker's order)."""
        with self._lock:
            for record in self._records.values():
                if ref in (record.id, record.name):
                    return record
            matches = [r for r in self._records.values() if ref and r.id.startswith(ref)]
            return matches[0] if len(matches) == 1 else None

    def get(self, ref: str) -> NetworkRecord:
        record = self.find(ref)
        if record is None:
            raise NotFound(f"network {ref} not found")
        return record

    def bridge(self, network_id: str) -> Bridge:
        with self._lock:
            return self._bridges[network_id]

    # --- create and remove ---------------------------------------------------------------
    def create(
        self,
        name: str,
        subnet: str = "",
        gateway: str = "",
        ip_range: str = "",
        internal: bool = False,
        attachable: bool = False,
        labels: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
    ) -> NetworkRecord:
        if not _NAME.match(name):
            raise BadRequest(
                f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        options = dict(options or {})
        with self._lock:
            if name in BUILTIN_NETWORKS or any(r.name == name for r in self._records.values()):
                raise Conflict(f"network with name {name} already exists")
            network_id = secrets.token_hex(32)
            chosen = self._subnet(subnet)
            if gateway:
                try:
                    if ipaddress.IPv4Address(gateway) not in chosen:
                        raise BadRequest(f"gateway {gateway} is not in subnet {chosen}")
                except ValueError:
                    raise BadRequest(f"invalid gateway address {gateway!r}") from None
            if ip_range:
                try:
                    pool = ipaddress.IPv4Network(ip_range)
                except ValueError as error:
                    raise BadRequest(f"invalid IP range {ip_range!r}: {error}") from None
                if not pool.subnet_of(chosen):
                    raise BadRequest(f"IP range {ip_range} is not in subnet {chosen}")
            bridge = options.get(BRIDGE_NAME_OPTION) or f"br-{network_id[:12]}"
            if not 0 < len(bridge) < 16 or "/" in bridge or " " in bridge:
                raise BadRequest(f"invalid bridge name {bridge!r}: 1 to 15 characters")
            if any(r.bridge == bridge for r in self._records.values()) or (
                self.default is not None and self.default.name == bridge
            ):
                raise Conflict(f"bridge name {bridge} is already used by another network")
            if MTU_OPTION in options:
                try:
                    if not 68 <= int(options[MTU_OPTION]) <= 65535:
                        raise ValueError
                except ValueError:
                    raise BadRequest(f"invalid MTU {options[MTU_OPTION]!r}") from None
            record = NetworkRecord(
                id=network_id,
                name=name,
                created=_timestamp(),
                subnet=str(chosen),
                gateway=gateway or str(chosen.network_address + 1),
                ip_range=ip_range,
                internal=internal,
                attachable=attachable,
                labels=dict(labels or {}),
                options=options,
                bridge=bridge,
                user_subnet=bool(subnet),
            )
            try:
                self._add(record)
                self._save(record)
                self._apply_rules()
            except BaseException:
                self._forget(record)
                raise
        return record

    def _subnet(self, wanted: str) -> ipaddress.IPv4Network:
        taken = [ipaddress.IPv4Network(r.subnet) for r in self._records.values()]
        if self.default is not None:
            taken.append(ipaddress.IPv4Network(self.default.subnet))
        if wanted:
            try:
                chosen = ipaddress.IPv4Network(wanted)
            except ValueError as error:
                raise BadRequest(f"invalid subnet {wanted!r}: {error}") from None
            if chosen.num_addresses < 4:
                raise BadRequest(f"subnet {wanted} is too small: use a prefix of /30 or shorter")
            for other in taken:
                if chosen.overlaps(other):
                    raise BadRequest(
                        f"invalid pool request: Pool overlaps with other one on this address "
                        f"space (subnet {chosen} overlaps {other})"
                    )
            return chosen
        for candidate in candidate_subnets():
            if not any(candidate.overlaps(other) for other in taken):
                return candidate
        raise AgentError(
            400, "all predefined address pools have been fully subnetted; pass --subnet"
        )

    def _save(self, record: NetworkRecord) -> None:
        path = self._record_path(record.id)
        with open(path + ".tmp", "w") as handle:
            json.dump(asdict(record), handle, indent=1)
        os.replace(path + ".tmp", path)

    def remove(self, record: NetworkRecord) -> None:
        """Delete the network's bridge, chains' rules and files (the caller checked that no
        container uses it)."""
        with self._lock:
            self._forget(record)
            self._apply_rules()

    def _forget(self, record: NetworkRecord) -> None:
        self._records.pop(record.id, None)
        bridge = self._bridges.pop(record.id, None)
        for path in (self._record_path(record.id), self._leases_path(record.id)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if bridge is not None and record.id not in self._records:
            try:
                bridge.remove_link()
            except NetworkError as error:
                log.warning("%s", error)

    # --- nftables ------------------------------------------------------------------------
    def _apply_rules(self) -> None:
        records = list(self._records.values())
        if not records and not self._chains_installed:
            return
        enable_forwarding()
        run_nft(rules_script(records, self.default), "install the user networks' rules")
        self._chains_installed = bool(records)


def rules_script(records: list[NetworkRecord], default: Bridge | None) -> str:
    """The networks' chains, replaced in one transaction (deleted with the last network)."""
    t = f"ip {NFT_TABLE}"
    lines = [f"add table {t}"]
    if not records:
        for chain, _ in CHAINS:
            lines += [f"add chain {t} {chain}", f"delete chain {t} {chain}"]
        return "\n".join(lines) + "\n"
    for chain, spec in CHAINS:
        lines += [f"add chain {t} {chain} {{ {spec} }}", f"flush chain {t} {chain}"]
    bridges = [r.bridge for r in records] + ([default.name] if default is not None else [])
    for name in bridges:
        others = [b for b in bridges if b != name]
        if others:
            names = ", ".join(f'"{b}"' for b in others)
            lines.append(
                f'add rule {t} networks-forward iifname "{name}" oifname {{ {names} }} drop'
            )
    for r in records:
        bridge = f'"{r.bridge}"'
        if r.internal:
            lines += [
                f"add rule {t} networks-forward iifname {bridge} oifname != {bridge} drop",
                f"add rule {t} networks-forward oifname {bridge} iifname != {bridge} drop",
                f"add rule {t} networks-input iifname {bridge} ip daddr != {r.subnet} drop",
            ]
        else:
            lines.append(
                f"add rule {t} networks-postrouting ip saddr {r.subnet} "
                f"oifname != {bridge} masquerade"
            )
    return "\n".join(lines) + "\n"
