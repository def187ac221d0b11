"""IPv4 address leases of one network, kept in a JSON file so an agent restart keeps them.

Running containers keep their addresses across an agent restart (they are re-adopted), so
the leases must outlive the process: every change rewrites the file atomically (a temporary
file renamed over the old one, so a crash leaves the old or the new file, never half of one).
There is no fsync: an agent restart is the case to survive; after a power cut the containers
are gone too.

Like dockerd, the lowest free address is handed out, skipping the network and broadcast
addresses and the gateway.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading

from agent.errors import AgentError
from agent.network import NetworkError

log = logging.getLogger(__name__)

DEFAULT_SUBNET = "172.17.0.0/16"
FORMAT_VERSION = 1


class AddressesExhausted(NetworkError):
    """Every address of the subnet is leased."""


class AddressUnavailable(AgentError):
    """A requested address (--ip) is invalid, outside the subnet or taken: the client's fault."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def mac_for(address: str) -> str:
    """The MAC docker derives from an IPv4 address: 02:42 then the four address bytes."""
    packed = ipaddress.IPv4Address(address).packed
    return ":".join(f"{b:02x}" for b in b"\x02\x42" + packed)


class Ipam:
    """Leases of the addresses of `subnet`, one per owner (a container id), stored at `path`."""

    def __init__(
        self,
        path: str,
        subnet: str = DEFAULT_SUBNET,
        gateway: str | None = None,
        ip_range: str | None = None,
    ):
        try:
            self.network = ipaddress.IPv4Network(subnet)
            # automatic addresses come from ip_range (--ip-range); --ip may pick any
            self.pool = ipaddress.IPv4Network(ip_range) if ip_range else self.network
        except ValueError as e:
            raise NetworkError(f"invalid subnet {subnet!r} or range {ip_range!r}: {e}") from None
        if not self.pool.subnet_of(self.network):
            raise NetworkError(f"IP range {ip_range} is outside subnet {subnet}")
        if self.network.num_addresses < 4:
            raise NetworkError(f"subnet {subnet} is too small for a gateway and a container")
        self.gateway = gateway or str(self.network.network_address + 1)
        if ipaddress.IPv4Address(self.gateway) not in self.network:
            raise NetworkError(f"gateway {self.gateway} is outside subnet {subnet}")
        self.path = path
        self._lock = threading.Lock()
        self._leases: dict[str, int] = {}
        self._load()

    @property
    def prefix(self) -> int:
        return self.network.prefixlen

    def allocate(self, owner: str, wanted: str | None = None) -> str:
        """The owner's address: its existing lease, else `wanted` (--ip), else the lowest
        free address of the pool."""
        with self._lock:
            taken = set(self._leases.values())
            taken.add(int(ipaddress.IPv4Address(self.gateway)))
            if wanted:
                candidate = self._wanted(owner, wanted, taken)
                if self._leases.get(owner) != candidate:
                    self._save({**self._leases, owner: candidate})
                    self._leases[owner] = candidate
                return wanted
            if owner in self._leases:
                return str(ipaddress.IPv4Address(self._leases[owner]))
            first = max(int(self.pool.network_address), int(self.network.network_address) + 1)
            last = min(int(self.pool.broadcast_address), int(self.network.broadcast_address) - 1)
            for candidate in range(first, last + 1):
                if candidate not in taken:
                    break
            else:
                raise AddressesExhausted(
                    f"no free address left in {self.network} ({len(self._leases)} leased, "
                    f"recorded in {self.path}); remove containers to free addresses"
                )
            self._save({**self._leases, owner: candidate})
            self._leases[owner] = candidate
            return str(ipaddress.IPv4Address(candidate))

    def _wanted(self, owner: str, wanted: str, taken: set[int]) -> int:
        try:
            address = ipaddress.IPv4Address(wanted)
        except ValueError:
            raise AddressUnavailable(f"invalid IPv4 address {wanted!r}") from None
        if address not in self.network or address in (
            self.network.network_address,
            self.network.broadcast_address,
        ):
            raise AddressUnavailable(
                f"address {wanted} is not a host address of subnet {self.network}"
            )
        if int(address) in taken and self._leases.get(owner) != int(address):
            raise AddressUnavailable(f"address {wanted} is already in use on {self.network}")
        return int(address)

    def release(self, owner: str) -> str | None:
        """Drop the owner's lease; returns the address it had, or None if it had none."""
        with self._lock:
            address = self._leases.get(owner)
            if address is None:
                return None
            self._save({o: a for o, a in self._leases.items() if o != owner})
            del self._leases[owner]
            return str(ipaddress.IPv4Address(address))

    def lookup(self, owner: str) -> str | None:
        with self._lock:
            address = self._leases.get(owner)
        return None if address is None else str(ipaddress.IPv4Address(address))

    def leases(self) -> dict[str, str]:
        """Owner -> address of every lease."""
        with self._lock:
            return {o: str(ipaddress.IPv4Address(a)) for o, a in self._leases.items()}

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            leases = data["leases"]
            if not isinstance(leases, dict):
                raise TypeError("leases is not an object")
            parsed = {str(o): ipaddress.IPv4Address(a) for o, a in leases.items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NetworkError(
                f"cannot read address leases from {self.path}: {e}; if no container is "
                "running, delete the file to start afresh"
            ) from None
        for owner, address in parsed.items():
            if address in self.network:
                self._leases[owner] = int(address)
            else:  # the subnet was reconfigured; such a lease can never clash again
                log.warning("dropping lease %s of %s: outside %s", address, owner, self.network)

    def _save(self, leases: dict[str, int]) -> None:
        """Write leases to the file; memory is updated only once this succeeded."""
        data = {
            "version": FORMAT_VERSION,
            "subnet": str(self.network),
            "leases": {o: str(ipaddress.IPv4Address(a)) for o, a in sorted(leases.items())},
        }
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.replace(temporary, self.path)
        except OSError as e:
            raise NetworkError(f"cannot save address leases to {self.path}: {e}") from None
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
