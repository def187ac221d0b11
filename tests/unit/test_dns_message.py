"""The embedded DNS: its message codec, local answers and upstream fallback."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from agent.network import dns_message as dm
from agent.network.dns import EmbeddedDns, upstream_servers


def test_query_round_trips() -> None:
    data = dm.query(0x1234, "Web.Example.")
    message = dm.parse(data)
    assert message.id == 0x1234 and message.flags & dm.FLAG_RD
    assert message.questions == [dm.Question("web.example", dm.TYPE_A, dm.CLASS_IN)]
    assert data[12:] == b"\x03web\x07example\x00\x00\x01\x00\x01"


def test_reply_carries_question_and_answers() -> None:
    request = dm.parse(dm.query(7, "db"))
    data = dm.reply(request, dm.RCODE_OK, [("db", 600, "172.18.0.2"), ("db", 600, "10.0.0.9")])
    message = dm.parse(data)
    assert message.is_response and message.id == 7 and message.flags & dm.FLAG_RD
    assert message.questions == request.questions
    assert dm.answer_addresses(data) == (0, ["172.18.0.2", "10.0.0.9"])
    assert dm.answer_addresses(dm.reply(request, dm.RCODE_NXDOMAIN)) == (3, [])


def test_compressed_names_are_followed() -> None:
    # header, question "a.b" at offset 12, then a name: "c" + pointer to offset 12
    body = b"\x01a\x01b\x00" + b"\x01c\xc0\x0c"
    assert dm.read_name(bytes(12) + body, 17) == ("c.a.b", 21)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01",  # shorter than a header
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x05ab",  # label past the end
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # loop
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a\x00\x00",  # question cut short
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x81a\x00\x00\x01\x00\x01",  # bad label
    ],
)
def test_malformed_messages_raise_message_error(data: bytes) -> None:
    with pytest.raises(dm.MessageError):
        dm.parse(data)


def test_long_labels_are_refused() -> None:
    with pytest.raises(dm.MessageError):
        dm.encode_name("x" * 64)


def _server(names: dict[str, list[str]], upstreams: list[str]) -> EmbeddedDns:
    def lookup(asker: str, name: str) -> list[str] | None:
        assert asker == "c1"
        return names.get(name)

    return EmbeddedDns(lookup, lambda asker: upstreams, timeout=0.5)


def test_local_names_are_answered() -> None:
    server = _server({"web": ["172.18.0.3"]}, [])
    answer = server.answer_locally("c1", dm.query(9, "WEB"))
    assert answer is not None and dm.answer_addresses(answer) == (0, ["172.18.0.3"])
    aaaa = server.answer_locally("c1", dm.query(9, "web", dm.TYPE_AAAA))
    assert aaaa is not None and dm.answer_addresses(aaaa) == (0, [])
    assert server.answer_locally("c1", dm.query(9, "elsewhere.org")) is None
    garbage = server.answer_locally("c1", b"\x00\x05\x00")
    assert garbage is not None and dm.parse(garbage).rcode == dm.RCODE_FORMERR


def test_unknown_names_go_upstream_or_fail_with_servfail() -> None:
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    port = upstream.getsockname()[1]

    def answer_once() -> None:
        data, peer = upstream.recvfrom(512)
        upstream.sendto(dm.reply(dm.parse(data), dm.RCODE_OK, [("x.org", 5, "192.0.2.1")]), peer)

    thread = threading.Thread(target=answer_once)
    thread.start()
    server = _server({}, ["127.0.0.1"])
    server.upstream_port = port
    try:
        reply = server.forward(dm.query(3, "x.org"), tcp=False)
    finally:
        thread.join(5)
        upstream.close()
    assert dm.answer_addresses(reply) == (0, ["192.0.2.1"])
    silent = _server({}, [])
    assert dm.parse(silent.forward(dm.query(4, "x.org"), tcp=False)).rcode == dm.RCODE_SERVFAIL


def test_upstream_servers_come_from_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("search lan\nnameserver 10.0.2.3\nnameserver fe80::1\nnameserver 127.0.0.53\n")
    assert upstream_servers(str(path)) == ["10.0.2.3", "127.0.0.53"]
    assert upstream_servers(str(path) + ".missing") == []


def test_tcp_queries_are_length_prefixed() -> None:
    server = _server({"db": ["172.18.0.4"]}, [])
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=server._serve_tcp, args=(theirs, "c1"))
    thread.start()
    try:
        for ident in (1, 2):  # two queries on one connection
            query = dm.query(ident, "db")
            ours.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", ours.recv(2))
            data = b""
            while len(data) < length:
                data += ours.recv(length - len(data))
            assert dm.parse(data).id == ident
            assert dm.answer_addresses(data) == (0, ["172.18.0.4"])
    finally:
        ours.close()
        thread.join(5)
    assert not thread.is_alive()
