"""rtnetlink message packing and parsing, and the request loop, without sockets or root."""

from __future__ import annotations

import errno
import socket
import struct
import threading

import pytest

from agent.network import netlink as nl


def test_attribute_is_padded_to_four_bytes() -> None:
    # length 9 (4 header + "eth0\0"), type 3, then 3 bytes of padding
    assert nl.attr_str(nl.IFLA_IFNAME, "eth0") == b"\x09\x00\x03\x00eth0\x00\x00\x00\x00"
    assert nl.attr_u32(nl.IFLA_MTU, 1500) == struct.pack("=HHI", 8, nl.IFLA_MTU, 1500)


def test_attributes_round_trip() -> None:
    data = (
        nl.attr_str(nl.IFLA_IFNAME, "vmctl0")
        + nl.attr_u32(nl.IFLA_MTU, 9000)
        + nl.attr(nl.IFLA_ADDRESS, bytes.fromhex("0242ac110002"))
    )
    attrs = nl.parse_attrs(data)
    assert nl.get_str(attrs[nl.IFLA_IFNAME]) == "vmctl0"
    assert nl.get_u32(attrs[nl.IFLA_MTU]) == 9000
    assert nl.format_mac(attrs[nl.IFLA_ADDRESS]) == "02:42:ac:11:00:02"


def test_nested_attributes_round_trip_three_levels() -> None:
    peer = nl.ifinfomsg() + nl.attr_str(nl.IFLA_IFNAME, "eth0") + nl.attr_u32(nl.IFLA_NET_NS_FD, 7)
    info = nl.nested(
        nl.IFLA_LINKINFO,
        nl.attr_str(nl.IFLA_INFO_KIND, "veth"),
        nl.nested(nl.IFLA_INFO_DATA, nl.nested(nl.VETH_INFO_PEER, peer)),
    )
    linkinfo = nl.parse_attrs(nl.parse_attrs(info)[nl.IFLA_LINKINFO])
    assert nl.get_str(linkinfo[nl.IFLA_INFO_KIND]) == "veth"
    peer_raw = nl.parse_attrs(linkinfo[nl.IFLA_INFO_DATA])[nl.VETH_INFO_PEER]
    assert peer_raw[: nl.IFINFOMSG.size] == nl.ifinfomsg()
    peer_attrs = nl.parse_attrs(peer_raw[nl.IFINFOMSG.size :])
    assert nl.get_str(peer_attrs[nl.IFLA_IFNAME]) == "eth0"
    assert nl.get_u32(peer_attrs[nl.IFLA_NET_NS_FD]) == 7


def test_flag_bits_are_removed_from_attribute_types() -> None:
    data = nl.attr(nl.IFLA_LINKINFO | nl.NLA_F_NESTED, nl.attr_str(nl.IFLA_INFO_KIND, "bridge"))
    assert list(nl.parse_attrs(data)) == [nl.IFLA_LINKINFO]


def test_malformed_attribute_is_rejected() -> None:
    with pytest.raises(ValueError, match="length 64"):
        nl.parse_attrs(struct.pack("=HH", 64, 1) + b"abcd")


def test_messages_round_trip_several_per_datagram() -> None:
    first = nl.pack_message(nl.RTM_NEWLINK, nl.NLM_F_MULTI, 5, nl.ifinfomsg(index=3))
    second = nl.pack_message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 5, struct.pack("=i", 0), pid=42)
    messages = nl.parse_messages(first + second)
    assert [(m.type, m.seq) for m in messages] == [(nl.RTM_NEWLINK, 5), (nl.NLMSG_DONE, 5)]
    assert messages[0].payload == nl.ifinfomsg(index=3)
    assert messages[1].pid == 42
    assert struct.unpack_from("=I", first)[0] == len(first) == 32


def test_truncated_message_is_rejected() -> None:
    data = nl.pack_message(nl.RTM_NEWLINK, 0, 1, nl.ifinfomsg())
    with pytest.raises(ValueError, match="malformed netlink message"):
        nl.parse_messages(data[:-4])


def test_parse_link() -> None:
    payload = (
        nl.ifinfomsg(index=4, flags=nl.IFF_UP | nl.IFF_BROADCAST)
        + nl.attr_str(nl.IFLA_IFNAME, "veth1234abcd")
        + nl.attr_u32(nl.IFLA_MTU, 1500)
        + nl.attr(nl.IFLA_ADDRESS, nl.mac_to_bytes("0a:0b:0c:0d:0e:0f"))
        + nl.attr_u32(nl.IFLA_MASTER, 2)
        + nl.nested(nl.IFLA_LINKINFO, nl.attr_str(nl.IFLA_INFO_KIND, "veth"))
    )
    link = nl.parse_link(payload)
    assert link == nl.Link(
        index=4,
        name="veth1234abcd",
        flags=nl.IFF_UP | nl.IFF_BROADCAST,
        mtu=1500,
        mac="0a:0b:0c:0d:0e:0f",
        master=2,
        kind="veth",
    )
    assert link.up
    bare = nl.parse_link(nl.ifinfomsg(index=1) + nl.attr_str(nl.IFLA_IFNAME, "lo"))
    assert (bare.kind, bare.master, bare.up) == (None, None, False)


def test_parse_address_and_route() -> None:
    address = nl.parse_address(
        nl.ifaddrmsg(6, 16)
        + nl.attr(nl.IFA_ADDRESS, nl.ipv4_bytes("172.17.0.2"))
        + nl.attr(nl.IFA_LOCAL, nl.ipv4_bytes("172.17.0.2"))
    )
    assert address == nl.Address(index=6, address="172.17.0.2", prefix=16)
    route = nl.parse_route(
        nl.rtmsg()
        + nl.attr(nl.RTA_GATEWAY, nl.ipv4_bytes("172.17.0.1"))
        + nl.attr_u32(nl.RTA_OIF, 6)
    )
    assert route == nl.Route(dst="0.0.0.0", prefix=0, gateway="172.17.0.1", oif=6, table=254)
    subnet = nl.parse_route(nl.rtmsg(dst_len=16) + nl.attr(nl.RTA_DST, nl.ipv4_bytes("172.17.0.0")))
    assert (subnet.dst, subnet.prefix, subnet.gateway) == ("172.17.0.0", 16, None)


def _error(code: int, text: str = "", capped: bool = True) -> nl.Message:
    request = nl.pack_message(nl.RTM_NEWLINK, nl.NLM_F_REQUEST, 9, nl.ifinfomsg())
    echoed = request[: nl.NLMSGHDR.size] if capped else request
    flags = nl.NLM_F_CAPPED if capped else 0
    tlvs = b""
    if text:
        flags |= nl.NLM_F_ACK_TLVS
        tlvs = nl.attr_str(nl.NLMSGERR_ATTR_MSG, text)
    return nl.Message(nl.NLMSG_ERROR, flags, 9, 0, struct.pack("=i", code) + echoed + tlvs)


def test_parse_error_with_and_without_extended_ack() -> None:
    assert nl.parse_error(_error(0)) == (0, "")
    assert nl.parse_error(_error(-errno.EEXIST)) == (errno.EEXIST, "")
    assert nl.parse_error(_error(-errno.EINVAL, "Unknown device type")) == (
        errno.EINVAL,
        "Unknown device type",
    )
    uncapped = _error(-errno.EINVAL, "MTU too large", capped=False)
    assert nl.parse_error(uncapped) == (errno.EINVAL, "MTU too large")


def test_mac_conversion() -> None:
    assert nl.mac_to_bytes("02:42:AC:11:00:02") == b"\x02\x42\xac\x11\x00\x02"
    assert nl.format_mac(b"\x02\x42\xac\x11\x00\x02") == "02:42:ac:11:00:02"
    with pytest.raises(ValueError, match="invalid MAC address '02:42'"):
        nl.mac_to_bytes("02:42")


# --- the request loop, fed canned datagrams ---------------------------------------------------


class FakeKernel:
    """Stands in for the AF_NETLINK socket: records what is sent, replays queued datagrams."""

    def __init__(self, *datagrams: bytes) -> None:
        self.sent: list[bytes] = []
        self.datagrams = list(datagrams)

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recvmsg(self, size: int) -> tuple[bytes, list[object], int, object]:
        return self.datagrams.pop(0), [], 0, None

    def close(self) -> None:
        pass


def fake_socket(*datagrams: bytes) -> tuple[nl.RouteSocket, FakeKernel]:
    sock = nl.RouteSocket.__new__(nl.RouteSocket)
    kernel = FakeKernel(*datagrams)
    sock._sock = kernel  # type: ignore[assignment]
    sock._seq = 0
    sock._lock = threading.Lock()
    return sock, kernel


def ack(seq: int, code: int = 0, text: str = "") -> bytes:
    message = _error(code, text)
    return nl.pack_message(nl.NLMSG_ERROR, message.flags, seq, message.payload)


def link_message(seq: int, index: int, name: str) -> bytes:
    payload = nl.ifinfomsg(index=index) + nl.attr_str(nl.IFLA_IFNAME, name)
    return nl.pack_message(nl.RTM_NEWLINK, nl.NLM_F_MULTI, seq, payload)


def test_dump_spanning_datagrams_skips_stale_replies() -> None:
    done = nl.pack_message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, struct.pack("=i", 0))
    sock, kernel = fake_socket(
        ack(0) + link_message(1, 1, "lo"),  # seq 0: left over from an abandoned request
        link_message(1, 2, "vmctl0") + done,
    )
    assert [(link.index, link.name) for link in sock.links()] == [(1, "lo"), (2, "vmctl0")]
    (request,) = nl.parse_messages(kernel.sent[0])
    assert request.type == nl.RTM_GETLINK
    assert request.flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_DUMP


def test_error_becomes_oserror_with_errno_and_kernel_text() -> None:
    sock, _ = fake_socket(ack(1, -errno.EEXIST, "interface already exists"))
    with pytest.raises(FileExistsError) as caught:
        sock.create_bridge("vmctl0")
    assert caught.value.errno == errno.EEXIST
    assert str(caught.value.strerror) == (
        "create bridge vmctl0: File exists (interface already exists)"
    )


def test_missing_link_is_none() -> None:
    sock, _ = fake_socket(ack(1, -errno.ENODEV))
    assert sock.get_link("nope0") is None
    sock, _ = fake_socket(ack(1, -errno.ENODEV))
    with pytest.raises(OSError, match="no network interface named 'nope0'"):
        sock.link_index("nope0")


def test_create_veth_request_layout() -> None:
    sock, kernel = fake_socket(ack(1))
    sock.create_veth(
        "vethabcd1234", "eth0", peer_netns_fd=9, peer_mac="02:42:ac:11:00:02", master=3, up=True
    )
    (request,) = nl.parse_messages(kernel.sent[0])
    assert request.type == nl.RTM_NEWLINK
    assert request.flags & (nl.NLM_F_CREATE | nl.NLM_F_EXCL) == nl.NLM_F_CREATE | nl.NLM_F_EXCL
    _, _, index, flags, change = nl.IFINFOMSG.unpack_from(request.payload)
    assert (index, flags & nl.IFF_UP, change & nl.IFF_UP) == (0, nl.IFF_UP, nl.IFF_UP)
    attrs = nl.parse_attrs(request.payload[nl.IFINFOMSG.size :])
    assert nl.get_str(attrs[nl.IFLA_IFNAME]) == "vethabcd1234"
    assert nl.get_u32(attrs[nl.IFLA_MASTER]) == 3
    info = nl.parse_attrs(attrs[nl.IFLA_LINKINFO])
    assert nl.get_str(info[nl.IFLA_INFO_KIND]) == "veth"
    peer = nl.parse_attrs(info[nl.IFLA_INFO_DATA])[nl.VETH_INFO_PEER]
    assert peer[: nl.IFINFOMSG.size] == nl.ifinfomsg()  # the peer's own header comes first
    peer_attrs = nl.parse_attrs(peer[nl.IFINFOMSG.size :])
    assert nl.get_str(peer_attrs[nl.IFLA_IFNAME]) == "eth0"
    assert nl.get_u32(peer_attrs[nl.IFLA_NET_NS_FD]) == 9
    assert nl.format_mac(peer_attrs[nl.IFLA_ADDRESS]) == "02:42:ac:11:00:02"


def test_add_address_and_default_route_requests() -> None:
    sock, kernel = fake_socket(ack(1), ack(2))
    sock.add_address(5, "172.17.0.2", 16, broadcast="172.17.255.255")
    sock.add_default_route("172.17.0.1", 5)
    address, route = (nl.parse_messages(d)[0] for d in kernel.sent)
    assert address.type == nl.RTM_NEWADDR
    assert nl.IFADDRMSG.unpack_from(address.payload) == (socket.AF_INET, 16, 0, 0, 5)
    attrs = nl.parse_attrs(address.payload[nl.IFADDRMSG.size :])
    assert attrs[nl.IFA_LOCAL] == socket.inet_aton("172.17.0.2")
    assert attrs[nl.IFA_BROADCAST] == socket.inet_aton("172.17.255.255")
    assert route.type == nl.RTM_NEWROUTE
    assert nl.parse_route(route.payload) == nl.Route("0.0.0.0", 0, "172.17.0.1", 5, 254)
