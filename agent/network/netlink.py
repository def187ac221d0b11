"""A small NETLINK_ROUTE (rtnetlink) client: links, IPv4 addresses and routes.

Container start must not fork/exec `ip` (each exec costs tens of milliseconds in a VM under
tcg), so the agent speaks rtnetlink itself: a request is one datagram on an AF_NETLINK socket
and the kernel answers with data and/or an acknowledgement carrying an errno.

Network namespaces: a netlink socket acts on the namespace its creator was in when it was
created, for its whole life, whatever thread later uses it. To reach a container's namespace
`open_in_netns` creates the socket in a short-lived thread that setns()es into the namespace
and then ends. setns(CLONE_NEWNET) changes only the calling thread, so no other agent thread
ever runs in the container's namespace, and since the thread dies there is no "switch back"
step that could be skipped on an error. The socket outlives the thread.

Wire format (all host byte order): a message is nlmsghdr + a fixed family header (ifinfomsg,
ifaddrmsg, rtmsg) + attributes; an attribute is rtattr (length, type) + data padded to 4 bytes,
and a nested attribute's data is itself a run of attributes.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from agent.runtime import linux

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors echo only the request's header, not its whole body
NETLINK_EXT_ACK = 11  # errors may carry the kernel's text explaining them

# nlmsghdr types and flags
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an NLMSG_ERROR: the echoed request has no body
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26

# link attributes
IFLA_ADDRESS = 1
IFLA_BROADCAST = 2
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_NET_NS_PID = 19
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1

# ifi_flags
IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000

# address and route attributes
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_BROADCAST = 4
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RTN_UNICAST = 1

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0xFFFF & ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope,
#                                      type, flags
RTATTR = struct.Struct("=HH")  # length (header included, padding excluded), type
NLMSGERR = struct.Struct("=i")  # negative errno, or 0 for an acknowledgement
U32 = struct.Struct("=I")

# Dumps arrive in datagrams of at most 32 KiB; a larger buffer never truncates them.
RECV_BUFFER = 64 * 1024


def align(length: int) -> int:
    """Round up to the 4-byte boundary netlink pads messages and attributes to."""
    return (length + 3) & ~3


# ---------------------------------------------------------------------------------------------
# packing and parsing


def attr(kind: int, data: bytes) -> bytes:
    """One attribute: header, data, padding."""
    length = RTATTR.size + len(data)
    return RTATTR.pack(length, kind) + data + bytes(align(length) - length)


def nested(kind: int, *children: bytes) -> bytes:
    """An attribute whose data is other attributes (or, for VETH_INFO_PEER, a message body).

    NLA_F_NESTED stays clear, as iproute2 leaves it: rtnetlink's link attributes predate the
    flag and some of them (VETH_INFO_PEER) are not plain attribute lists.
    """
    return attr(kind, b"".join(children))


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, U32.pack(value))


def attr_str(kind: int, value: str) -> bytes:
    """A NUL-terminated string attribute (interface names, link kinds)."""
    return attr(kind, value.encode() + b"\0")


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes of a run of rtattrs, by type (flag bits removed); the last one of a type wins.

    A nested attribute's value is parsed by calling this again on it.
    """
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > len(data):
            raise ValueError(f"malformed netlink attribute at offset {offset}: length {length}")
        attrs[kind & NLA_TYPE_MASK] = data[offset + RTATTR.size : offset + length]
        offset += align(length)
    return attrs


def get_u32(data: bytes) -> int:
    value: int = U32.unpack_from(data)[0]
    return value


def get_str(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode(errors="replace")


@dataclass(frozen=True)
class Message:
    """One netlink message: header fields and the bytes after the header."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def pack_message(kind: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    length = NLMSGHDR.size + len(payload)
    return NLMSGHDR.pack(length, kind, flags, seq, pid) + payload + bytes(align(length) - length)


def parse_messages(data: bytes) -> list[Message]:
    """Split one received datagram into its messages."""
    messages: list[Message] = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, flags, seq, pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise ValueError(f"malformed netlink message at offset {offset}: length {length}")
        payload = data[offset + NLMSGHDR.size : offset + length]
        messages.append(Message(kind, flags, seq, pid, payload))
        offset += align(length)
    return messages


def ifinfomsg(
    index: int = 0,
    flags: int = 0,
    change: int = 0,
    family: int = socket.AF_UNSPEC,
    dev_type: int = 0,
) -> bytes:
    return IFINFOMSG.pack(family, dev_type, index, flags, change)


def ifaddrmsg(
    index: int,
    prefix: int,
    family: int = socket.AF_INET,
    flags: int = 0,
    scope: int = RT_SCOPE_UNIVERSE,
) -> bytes:
    return IFADDRMSG.pack(family, prefix, flags, scope, index)


def rtmsg(
    dst_len: int = 0,
    family: int = socket.AF_INET,
    table: int = RT_TABLE_MAIN,
    protocol: int = RTPROT_BOOT,
    scope: int = RT_SCOPE_UNIVERSE,
    route_type: int = RTN_UNICAST,
) -> bytes:
    return RTMSG.pack(family, dst_len, 0, 0, table, protocol, scope, route_type, 0)


def parse_error(message: Message) -> tuple[int, str]:
    """(errno, kernel's explanation or "") of an NLMSG_ERROR; errno 0 is an acknowledgement."""
    (code,) = NLMSGERR.unpack_from(message.payload)
    text = ""
    if message.flags & NLM_F_ACK_TLVS:
        # After the error comes the echoed request: its header alone when capped.
        echoed = NLMSGERR.size + NLMSGHDR.size
        if not message.flags & NLM_F_CAPPED:
            echoed = NLMSGERR.size + align(NLMSGHDR.unpack_from(message.payload, 4)[0])
        tlvs = parse_attrs(message.payload[echoed:])
        if NLMSGERR_ATTR_MSG in tlvs:
            text = get_str(tlvs[NLMSGERR_ATTR_MSG])
    return -code, text


def mac_to_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(
            f"invalid MAC address {mac!r}: expected six hex pairs like 02:42:ac:11:00:02"
        )
    return bytes(int(p, 16) for p in parts)


def format_mac(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def ipv4_bytes(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


@dataclass(frozen=True)
class Link:
    """A network interface as RTM_NEWLINK describes it."""

    index: int
    name: str
    flags: int
    mtu: int
    mac: str
    master: int | None  # index of the bridge this link is enslaved to
    kind: str | None  # "bridge", "veth", ... (None for physical and loopback devices)

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True)
class Address:
    index: int
    address: str
    prefix: int


@dataclass(frozen=True)
class Route:
    dst: str  # "0.0.0.0" for the default route
    prefix: int
    gateway: str | None
    oif: int | None
    table: int


def parse_link(payload: bytes) -> Link:
    _, _, index, flags, _ = IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload[IFINFOMSG.size :])
    kind = None
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO])
        kind = get_str(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else None
    return Link(
        index=index,
        name=get_str(attrs.get(IFLA_IFNAME, b"")),
        flags=flags,
        mtu=get_u32(attrs[IFLA_MTU]) if IFLA_MTU in attrs else 0,
        mac=format_mac(attrs.get(IFLA_ADDRESS, b"")),
        master=get_u32(attrs[IFLA_MASTER]) if IFLA_MASTER in attrs else None,
        kind=kind,
    )


def parse_address(payload: bytes) -> Address:
    family, prefix, _, _, index = IFADDRMSG.unpack_from(payload)
    attrs = parse_attrs(payload[IFADDRMSG.size :])
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on point-to-point.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS, b"")
    return Address(index=index, address=socket.inet_ntop(family, raw), prefix=prefix)


def parse_route(payload: bytes) -> Route:
    family, dst_len, _, _, table, _, _, _, _ = RTMSG.unpack_from(payload)
    attrs = parse_attrs(payload[RTMSG.size :])
    dst = socket.inet_ntop(family, attrs[RTA_DST]) if RTA_DST in attrs else "0.0.0.0"
    gateway = socket.inet_ntop(family, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
    return Route(
        dst=dst,
        prefix=dst_len,
        gateway=gateway,
        oif=get_u32(attrs[RTA_OIF]) if RTA_OIF in attrs else None,
        table=get_u32(attrs[RTA_TABLE]) if RTA_TABLE in attrs else table,
    )


def netlink_error(code: int, what: str, detail: str = "") -> OSError:
    message = f"{what}: {os.strerror(code)}"
    if detail:
        message += f" ({detail})"
    return OSError(code, message)


# ---------------------------------------------------------------------------------------------
# the socket


class RouteSocket:
    """A NETLINK_ROUTE socket bound to the network namespace it was created in.

    Methods raise OSError with the kernel's errno and a message naming the operation. One
    request is in flight at a time (a lock serialises threads sharing the socket).
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                # Older kernels lack these: errors still arrive, only without the explanation.
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(SOL_NETLINK, option, 1)
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: int, payload: bytes, what: str, flags: int = 0) -> list[Message]:
        """Send one request (acknowledged) and return the data messages of its reply."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._sock.send(pack_message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, payload))
            return self._collect(seq, what)

    def _collect(self, seq: int, what: str) -> list[Message]:
        replies: list[Message] = []
        while True:
            data, _, msg_flags, _ = self._sock.recvmsg(RECV_BUFFER)
            if msg_flags & socket.MSG_TRUNC:
                raise OSError(errno.EMSGSIZE, f"{what}: netlink reply exceeds {RECV_BUFFER} bytes")
            for message in parse_messages(data):
                if message.seq != seq:
                    continue  # the tail of an earlier request that failed half-way
                if message.type == NLMSG_ERROR:
                    code, text = parse_error(message)
                    if code:
                        raise netlink_error(code, what, text)
                    return replies
                if message.type == NLMSG_DONE:  # end of a dump; its body is an errno
                    code = -NLMSGERR.unpack_from(message.payload)[0] if message.payload else 0
                    if code:
                        raise netlink_error(code, what)
                    return replies
                if message.type != NLMSG_NOOP:
                    replies.append(message)

    # links

    def get_link(self, name: str) -> Link | None:
        """The interface called name, or None."""
        try:
            replies = self.request(
                RTM_GETLINK, ifinfomsg() + attr_str(IFLA_IFNAME, name), f"look up link {name}"
            )
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return parse_link(replies[0].payload)

    def link_index(self, name: str) -> int:
        link = self.get_link(name)
        if link is None:
            raise OSError(errno.ENODEV, f"no network interface named {name!r}")
        return link.index

    def links(self) -> list[Link]:
        replies = self.request(RTM_GETLINK, ifinfomsg(), "list links", NLM_F_DUMP)
        return [parse_link(m.payload) for m in replies if m.type == RTM_NEWLINK]

    def create_bridge(self, name: str, mtu: int | None = None, mac: str | None = None) -> None:
        """Create a bridge; with a MAC given it keeps that one instead of following its ports'."""
        body = ifinfomsg() + attr_str(IFLA_IFNAME, name)
        if mtu is not None:
            body += attr_u32(IFLA_MTU, mtu)
        if mac is not None:
            body += attr(IFLA_ADDRESS, mac_to_bytes(mac))
        body += nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge"))
        self.request(RTM_NEWLINK, body, f"create bridge {name}", NLM_F_CREATE | NLM_F_EXCL)

    def create_veth(
        self,
        name: str,
        peer_name: str,
        *,
        peer_netns_fd: int | None = None,
        peer_mac: str | None = None,
        mtu: int | None = None,
        master: int | None = None,
        up: bool = False,
    ) -> None:
        """Create a veth pair in one request.

        The peer is created directly in the namespace of peer_netns_fd (so its name there may
        clash with nothing on this side), with its MAC; this side is enslaved to master and set
        up as asked. The peer stays down: the kernel configures it before the pair is linked,
        and bringing up an unlinked veth fails with ENOTCONN.
        """
        peer = ifinfomsg()
        peer += attr_str(IFLA_IFNAME, peer_name)
        if mtu is not None:
            peer += attr_u32(IFLA_MTU, mtu)
        if peer_mac is not None:
            peer += attr(IFLA_ADDRESS, mac_to_bytes(peer_mac))
        if peer_netns_fd is not None:
            peer += attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
        body = ifinfomsg(flags=IFF_UP if up else 0, change=IFF_UP)
        body += attr_str(IFLA_IFNAME, name)
        if mtu is not None:
            body += attr_u32(IFLA_MTU, mtu)
        if master is not None:
            body += attr_u32(IFLA_MASTER, master)
        body += nested(
            IFLA_LINKINFO,
            attr_str(IFLA_INFO_KIND, "veth"),
            nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer)),
        )
        self.request(
            RTM_NEWLINK, body, f"create veth pair {name}/{peer_name}", NLM_F_CREATE | NLM_F_EXCL
        )

    def set_link(
        self,
        index: int,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        master: int | None = None,
    ) -> None:
        """Change what is given of an existing link in one request (master 0 releases it)."""
        body = ifinfomsg(
            index=index,
            flags=IFF_UP if up else 0,
            change=IFF_UP if up is not None else 0,
        )
        if mtu is not None:
            body += attr_u32(IFLA_MTU, mtu)
        if mac is not None:
            body += attr(IFLA_ADDRESS, mac_to_bytes(mac))
        if master is not None:
            body += attr_u32(IFLA_MASTER, master)
        self.request(RTM_SETLINK, body, f"configure link #{index}")

    def set_up(self, index: int, up: bool = True) -> None:
        self.set_link(index, up=up)

    def set_mtu(self, index: int, mtu: int) -> None:
        self.set_link(index, mtu=mtu)

    def set_mac(self, index: int, mac: str) -> None:
        self.set_link(index, mac=mac)

    def set_master(self, index: int, master: int) -> None:
        self.set_link(index, master=master)

    def delete_link(self, link: int | str) -> None:
        """Delete a link by index or name (deleting one end of a veth pair deletes both)."""
        if isinstance(link, str):
            body = ifinfomsg() + attr_str(IFLA_IFNAME, link)
        else:
            body = ifinfomsg(index=link)
        self.request(RTM_DELLINK, body, f"delete link {link}")

    # addresses and routes

    def add_address(
        self, index: int, address: str, prefix: int, broadcast: str | None = None
    ) -> None:
        body = ifaddrmsg(index, prefix)
        body += attr(IFA_LOCAL, ipv4_bytes(address)) + attr(IFA_ADDRESS, ipv4_bytes(address))
        if broadcast is not None:
            body += attr(IFA_BROADCAST, ipv4_bytes(broadcast))
        self.request(
            RTM_NEWADDR,
            body,
            f"add address {address}/{prefix} to link #{index}",
            NLM_F_CREATE | NLM_F_EXCL,
        )

    def addresses(self, index: int | None = None) -> list[Address]:
        """IPv4 addresses, of one link or of all."""
        replies = self.request(RTM_GETADDR, ifaddrmsg(0, 0), "list addresses", NLM_F_DUMP)
        found = [parse_address(m.payload) for m in replies if m.type == RTM_NEWADDR]
        return [a for a in found if index is None or a.index == index]

    def add_default_route(self, gateway: str, index: int | None = None) -> None:
        body = rtmsg() + attr(RTA_GATEWAY, ipv4_bytes(gateway))
        if index is not None:
            body += attr_u32(RTA_OIF, index)
        self.request(
            RTM_NEWROUTE, body, f"add default route via {gateway}", NLM_F_CREATE | NLM_F_EXCL
        )

    def routes(self) -> list[Route]:
        """IPv4 routes of the main table."""
        replies = self.request(RTM_GETROUTE, rtmsg(), "list routes", NLM_F_DUMP)
        found = [parse_route(m.payload) for m in replies if m.type == RTM_NEWROUTE]
        return [r for r in found if r.table == RT_TABLE_MAIN]


# ---------------------------------------------------------------------------------------------
# namespaces

P = ParamSpec("P")
T = TypeVar("T")


def run_in_netns(netns_fd: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call fn in a new thread that first joins the network namespace of netns_fd.

    Only that thread changes namespace, and it ends with the call, so the caller's thread
    (and every other) stays where it was. Sockets fn creates belong to the joined namespace
    and keep working from any thread; processes it spawns start in that namespace.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            linux.setns(netns_fd, linux.CLONE_NEWNET)
            outcome.append(fn(*args, **kwargs))
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    thread = threading.Thread(target=work, name="netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def open_in_netns(netns_fd: int) -> RouteSocket:
    """A RouteSocket acting on the network namespace of netns_fd."""
    return run_in_netns(netns_fd, RouteSocket)
