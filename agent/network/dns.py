"""The embedded DNS server of user-defined networks, at 127.0.0.11:53 in each container.

Each container on a user-defined network gets a UDP and a TCP socket bound to
127.0.0.11:53 inside its own network namespace: a short-lived thread joins the namespace,
creates the sockets and hands them back (netlink.run_in_netns), so no iptables DNAT is
needed and the server knows who asks from the socket a query arrives on. One thread serves
every UDP socket through a selector; TCP connections and queries forwarded upstream get a
thread each, so a slow upstream never stalls the local answers.

Names the engine knows (container names, aliases, short IDs on the networks the asker is
on; host.docker.internal) are answered here; everything else is forwarded, from the
agent's namespace and with a timeout, to the asker's --dns servers or else the agent's own
resolvers (its /etc/resolv.conf): SERVFAIL if none answers.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from agent.network import dns_message as dm
from agent.network.netlink import run_in_netns

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.11"
PORT = 53
TTL = 600
UPSTREAM_TIMEOUT = 3.0
TCP_IDLE_TIMEOUT = 10.0
MAX_UDP = 4096

# (asking container id, lower-case name) -> addresses, or None when the name is not ours
Lookup = Callable[[str, str], "list[str] | None"]


def upstream_servers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    try:
        with open(resolv_conf) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    servers = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and ":" not in words[1]:
            servers.append(words[1])
    return servers


def _bind_sockets() -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((ADDRESS, PORT))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((ADDRESS, PORT))
        tcp.listen(16)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


class EmbeddedDns:
    """The resolver; `lookup` answers for the engine's names."""

    def __init__(
        self,
        lookup: Lookup,
        upstreams: Callable[[str], list[str]] = lambda asker: upstream_servers(),
        timeout: float = UPSTREAM_TIMEOUT,
    ) -> None:
        self.lookup = lookup
        self.upstreams = upstreams
        self.timeout = timeout
        self.upstream_port = 53
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._sockets: dict[str, tuple[socket.socket, socket.socket]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None

    # --- sockets per container -------------------------------------------------------
    def listen(self, container_id: str, netns_fd: int) -> None:
        """Serve the container whose network namespace is netns_fd (idempotent)."""
        with self._lock:
            if container_id in self._sockets:
                return
            udp, tcp = run_in_netns(netns_fd, _bind_sockets)
            self._sockets[container_id] = (udp, tcp)
            self._selector.register(udp, selectors.EVENT_READ, ("udp", container_id))
            self._selector.register(tcp, selectors.EVENT_READ, ("tcp", container_id))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)
                self._thread.start()

    def close(self, container_id: str) -> None:
        with self._lock:
            pair = self._sockets.pop(container_id, None)
            if pair is None:
                return
            for sock in pair:
                self._selector.unregister(sock)
                sock.close()
        self._wake_w.send(b"x")  # the selector may still hold the closed sockets

    def serving(self) -> list[str]:
        with self._lock:
            return list(self._sockets)

    # --- the loop ------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(512)
                    continue
                kind, asker = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if kind == "udp":
                        data, peer = sock.recvfrom(MAX_UDP)
                        self._on_udp(sock, asker, data, peer)
                    else:
                        conn, _ = sock.accept()
                        threading.Thread(
                            target=self._serve_tcp, args=(conn, asker), daemon=True
                        ).start()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as error:  # a socket closed under us
                    log.debug("dns socket of %s: %s", asker[:12], error)

    def _on_udp(self, sock: socket.socket, asker: str, data: bytes, peer: Any) -> None:
        local = self.answer_locally(asker, data)
        if local is not None:
            self._send_udp(sock, local, peer)
            return

        def forward() -> None:
            self._send_udp(sock, self.forward(data, tcp=False, asker=asker), peer)

        threading.Thread(target=forward, daemon=True).start()

    @staticmethod
    def _send_udp(sock: socket.socket, data: bytes, peer: Any) -> None:
        with contextlib.suppress(OSError):  # the container went away
            sock.sendto(data, peer)

    def _serve_tcp(self, conn: socket.socket, asker: str) -> None:
        conn.setblocking(True)
        conn.settimeout(TCP_IDLE_TIMEOUT)
        with conn:
            try:
                while True:
                    head = _read_exact(conn, 2)
                    if head is None:
                        return
                    data = _read_exact(conn, struct.unpack("!H", head)[0])
                    if data is None:
                        return
                    answer = self.answer_locally(asker, data)
                    if answer is None:
                        answer = self.forward(data, tcp=True, asker=asker)
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
            except OSError:
                return

    # --- answers -------------------------------------------------------------------------
    def answer_locally(self, asker: str, data: bytes) -> bytes | None:
        """The reply to a query the engine can answer, or None to forward it upstream."""
        try:
            message = dm.parse(data)
        except dm.MessageError:
            if len(data) >= 2:
                return dm.encode(dm.Message(struct.unpack("!H", data[:2])[0], dm.FLAG_QR | 1))
            return b""
        if message.is_response:
            return b""
        if message.opcode != dm.OPCODE_QUERY or len(message.questions) != 1:
            return dm.reply(message, dm.RCODE_NOTIMP)
        question = message.questions[0]
        addresses = self.lookup(asker, question.name)
        if addresses is None:
            return None
        if question.qtype != dm.TYPE_A or question.qclass != dm.CLASS_IN:
            return dm.reply(message, dm.RCODE_OK)  # the name exists, but has no such record
        return dm.reply(message, dm.RCODE_OK, [(question.name, TTL, a) for a in addresses])

    def forward(self, data: bytes, tcp: bool, asker: str = "") -> bytes:
        """Ask the upstream servers in turn; SERVFAIL when none answers in time."""
        for server in self.upstreams(asker):
            try:
                if tcp:
                    with socket.create_connection(
                        (server, self.upstream_port), timeout=self.timeout
                    ) as conn:
                        conn.sendall(struct.pack("!H", len(data)) + data)
                        head = _read_exact(conn, 2)
                        body = _read_exact(conn, struct.unpack("!H", head)[0]) if head else None
                        if body:
                            return body
                else:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                        out.settimeout(self.timeout)
                        out.connect((server, self.upstream_port))
                        out.send(data)
                        reply = out.recv(MAX_UDP)
                        if reply[:2] == data[:2]:
                            return reply
            except OSError as error:
                log.debug("upstream %s: %s", server, error)
        try:
            return dm.reply(dm.parse(data), dm.RCODE_SERVFAIL)
        except dm.MessageError:
            return b""


def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks
