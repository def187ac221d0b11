"""The default bridge network: one Linux bridge, NAT to the outside, a veth pair per container.

Layout (as dockerd's `bridge` network): the bridge holds the gateway address (172.17.0.1/16),
each container gets a veth pair whose host end is enslaved to the bridge and whose other end
is the container's eth0 with a leased address, a MAC derived from it and a default route via
the gateway. nftables masquerades traffic from the subnet that leaves through any other
interface, and IPv4 forwarding is switched on.

Namespaces: every method acts on the network namespace of the calling thread (for the agent,
the VM's own). The container's side is configured through a netlink socket opened inside its
namespace by a short-lived thread (netlink.open_in_netns), so nothing forks on the container
start path; the peer is created directly in the container's namespace, already named eth0.
Only ensure() and teardown() run a program: `nft`, once each.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
import threading
from dataclasses import dataclass

from agent.network import NetworkError
from agent.network.ipam import DEFAULT_SUBNET, Ipam, mac_for
from agent.network.netlink import RouteSocket, open_in_netns

NFT = "nft"
NFT_TABLE = "vmctl"
CONTAINER_IFNAME = "eth0"
LOOPBACK_IFINDEX = 1  # the kernel gives lo index 1 in every network namespace
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


@dataclass(frozen=True)
class Endpoint:
    """A container's place on the bridge, as the Engine API reports it."""

    ip: str
    prefix: int
    gateway: str
    mac: str
    host_veth: str


def veth_name(container_id: str) -> str:
    """The host end's name: "veth" + 8 hex digits of the container id (IFNAMSIZ allows 15)."""
    if re.fullmatch(r"[0-9a-f]{8,}", container_id):
        return "veth" + container_id[:8]
    return "veth" + hashlib.sha256(container_id.encode()).hexdigest()[:8]


def random_mac() -> str:
    """A random unicast, locally administered MAC address."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def nft_ruleset(bridge: str, subnet: str) -> str:
    """The vmctl table, replaced as a whole in one transaction.

    Declaring the table first makes the delete succeed when it does not exist yet, so the
    script is idempotent. The forward chain's policy is accept: it must not drop traffic of
    other tables' users; its rules say what the bridge needs should a policy ever change.
    """
    return f"""\
table ip {NFT_TABLE}
delete table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} oifname != "{bridge}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{bridge}" accept
        oifname "{bridge}" accept
    }}
}}
"""


def run_nft(script: str, purpose: str) -> None:
    """Apply an nft script (`nft -f -`), or raise NetworkError with nft's complaint."""
    try:
        result = subprocess.run(
            [NFT, "-f", "-"], input=script, capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise NetworkError(
            f"cannot {purpose}: the `{NFT}` command is missing; install the nftables package"
        ) from None
    except subprocess.TimeoutExpired:
        raise NetworkError(f"cannot {purpose}: `{NFT} -f -` did not finish in 60 s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or "no output"
        raise NetworkError(
            f"cannot {purpose}: `{NFT} -f -` exited with status {result.returncode}: {detail}"
        )


def enable_forwarding() -> None:
    try:
        with open(IP_FORWARD, "w") as f:
            f.write("1")
    except OSError as e:
        raise NetworkError(f"cannot enable IPv4 forwarding in {IP_FORWARD}: {e}") from e


def loopback_up(netns_fd: int) -> None:
    """Bring up `lo` in the network namespace of netns_fd (all a --network none container gets)."""
    try:
        with open_in_netns(netns_fd) as inside:
            inside.set_up(LOOPBACK_IFINDEX)
    except OSError as e:
        raise NetworkError(f"cannot bring up the loopback interface: {e.strerror}") from e


class Bridge:
    """A Linux bridge `name` over `subnet` whose gateway address it holds, with the leases
    of its containers kept in the JSON file `leases_path`. The default bridge and every
    user-defined network are one of these."""

    def __init__(
        self,
        leases_path: str,
        name: str,
        subnet: str,
        gateway: str | None = None,
        ip_range: str | None = None,
        mtu: int = 1500,
    ) -> None:
        if not 0 < len(name) < 16:
            raise NetworkError(f"bridge name {name!r} must have 1 to 15 characters")
        self.name = name
        self.mtu = mtu
        self.ipam = Ipam(leases_path, subnet, gateway, ip_range)
        self.subnet = str(self.ipam.network)
        self.gateway = self.ipam.gateway
        self.prefix = self.ipam.prefix
        self._broadcast = str(self.ipam.network.broadcast_address)
        self._lock = threading.Lock()

    def ensure_link(self) -> None:
        """Create the bridge with its gateway address and bring it up (idempotent)."""
        with self._lock:
            try:
                with RouteSocket() as host:
                    self._ensure_link(host)
            except OSError as e:
                raise NetworkError(f"cannot set up bridge {self.name}: {e.strerror}") from e

    def _ensure_link(self, host: RouteSocket) -> None:
        link = host.get_link(self.name)
        if link is None:
            # A bridge without a MAC of its own takes its lowest port's, so the gateway's MAC
            # would change as containers come and go and stale ARP entries would cut them off.
            host.create_bridge(self.name, self.mtu, random_mac())
            link = host.get_link(self.name)
            if link is None:
                raise OSError(errno.ENODEV, f"bridge {self.name} vanished after its creation")
        elif link.kind != "bridge":
            raise NetworkError(
                f"network interface {self.name} exists but is not a bridge "
                f"(kind {link.kind or 'none'}); delete it or choose another bridge name"
            )
        present = host.addresses(link.index)
        if not any(a.address == self.gateway and a.prefix == self.prefix for a in present):
            host.add_address(link.index, self.gateway, self.prefix, self._broadcast)
        if not link.up:
            host.set_up(link.index)

    def attach(
        self,
        container_id: str,
        netns_fd: int,
        ifname: str = CONTAINER_IFNAME,
        host_veth: str | None = None,
        address: str | None = None,
        default_route: bool = True,
    ) -> Endpoint:
        """Connect the container whose network namespace is netns_fd as `ifname` (with the
        `address` asked for, else the next free one); returns its endpoint."""
        address = self.ipam.allocate(container_id, address)
        endpoint = Endpoint(
            ip=address,
            prefix=self.prefix,
            gateway=self.gateway,
            mac=mac_for(address),
            host_veth=host_veth or veth_name(container_id),
        )
        created = False
        try:
            with RouteSocket() as host:
                bridge = host.get_link(self.name)
                if bridge is None:
                    raise NetworkError(
                        f"bridge {self.name} does not exist; the agent sets it up at start, "
                        "restart the agent"
                    )
                try:
                    self._create_veth(host, endpoint, bridge.index, netns_fd, ifname)
                except FileExistsError:
                    if host.get_link(endpoint.host_veth) is None:
                        raise  # the clash is inside the container
                    # Left behind by an interrupted start of this container: replace it.
                    host.delete_link(endpoint.host_veth)
                    self._create_veth(host, endpoint, bridge.index, netns_fd, ifname)
                created = True
            with open_in_netns(netns_fd) as inside:
                inside.set_up(LOOPBACK_IFINDEX)
                index = inside.link_index(ifname)
                inside.set_up(index)
                inside.add_address(index, address, self.prefix, self._broadcast)
                if default_route:
                    inside.add_default_route(self.gateway, index)
        except BaseException as e:
            if created:
                self._delete_link(endpoint.host_veth, ignore_errors=True)
            self.ipam.release(container_id)
            if isinstance(e, OSError):
                raise NetworkError(
                    f"cannot connect container {container_id[:12]} to bridge {self.name}: "
                    f"{e.strerror}"
                ) from e
            raise
        return endpoint

    def _create_veth(
        self, host: RouteSocket, endpoint: Endpoint, bridge_index: int, netns_fd: int, ifname: str
    ) -> None:
        # One request: host end enslaved and up, peer born inside the container, named.
        host.create_veth(
            endpoint.host_veth,
            ifname,
            peer_netns_fd=netns_fd,
            peer_mac=endpoint.mac,
            mtu=self.mtu,
            master=bridge_index,
            up=True,
        )

    def endpoint(self, container_id: str, host_veth: str | None = None) -> Endpoint | None:
        """The endpoint of a container that holds a lease (e.g. one re-adopted after restart)."""
        address = self.ipam.lookup(container_id)
        if address is None:
            return None
        veth = host_veth or veth_name(container_id)
        return Endpoint(address, self.prefix, self.gateway, mac_for(address), veth)

    def detach(self, container_id: str, host_veth: str | None = None) -> None:
        """Remove the container's veth pair, if still there, and release its address."""
        try:
            self._delete_link(host_veth or veth_name(container_id))
        except OSError as e:
            raise NetworkError(
                f"cannot disconnect container {container_id[:12]} from bridge {self.name}: "
                f"{e.strerror}"
            ) from e
        self.ipam.release(container_id)

    @staticmethod
    def _delete_link(name: str, ignore_errors: bool = False) -> None:
        """Delete a link; one already gone (a veth dies with its container) is no error."""
        try:
            with RouteSocket() as host:
                host.delete_link(name)
        except OSError as e:
            if e.errno != errno.ENODEV and not ignore_errors:
                raise

    def remove_link(self) -> None:
        """Delete the bridge itself (its veths go with it)."""
        try:
            self._delete_link(self.name)
        except OSError as e:
            raise NetworkError(f"cannot delete bridge {self.name}: {e.strerror}") from e


class DefaultBridge(Bridge):
    """The default bridge, with leases kept under state_dir, NAT and forwarding."""

    def __init__(
        self,
        state_dir: str,
        name: str = "vmctl0",
        subnet: str = DEFAULT_SUBNET,
        mtu: int = 1500,
    ) -> None:
        super().__init__(os.path.join(state_dir, f"{name}-leases.json"), name, subnet, mtu=mtu)

    def ensure(self) -> None:
        """Create and configure the bridge, forwarding and NAT; harmless when already done."""
        self.ensure_link()
        enable_forwarding()
        run_nft(nft_ruleset(self.name, self.subnet), f"install NAT for bridge {self.name}")

    def teardown(self) -> None:
        """Remove the nftables table and the bridge (leases stay); for tests and uninstall."""
        run_nft(
            f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n",
            f"remove the NAT table of bridge {self.name}",
        )
        self.remove_link()
