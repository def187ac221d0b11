"""UnixSocketForwarder against a local unix socket server standing in for the SSH channel."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmctl.errors import VmctlError
from vmctl.forward import UnixSocketForwarder

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the ~104-byte unix socket path limit.
    d = Path(tempfile.mkdtemp(prefix="vf", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class SocketUpstream:
    """A unix socket with the channel-like interface the forwarder expects."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))

    def recv(self, nbytes: int) -> bytes:
        return self.sock.recv(nbytes)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class UnixServer:
    """A threaded unix socket server running ``handler(conn)`` per connection."""

    def __init__(self, path: Path, handler: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.handler = handler
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(256)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


def echo(conn: socket.socket) -> None:
    """Echo until EOF, then half-close: the reply to a half-closed request."""
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def send_and_close(s: socket.socket, payload: bytes) -> None:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)


def connect(path: Path, timeout: float = 30.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


@pytest.fixture
def echo_server(short_dir: Path) -> Iterator[UnixServer]:
    server = UnixServer(short_dir / "up.sock", echo)
    yield server
    server.close()


@pytest.fixture
def forwarder(short_dir: Path, echo_server: UnixServer) -> Iterator[UnixSocketForwarder]:
    fwd = UnixSocketForwarder(short_dir / "engine.sock", lambda: SocketUpstream(echo_server.path))
    fwd.start()
    yield fwd
    fwd.stop()


def test_socket_is_0600_and_relays(forwarder: UnixSocketForwarder) -> None:
    assert stat.S_IMODE(os.stat(forwarder.listen_path).st_mode) == 0o600
    with connect(forwarder.listen_path) as s:
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b""


def test_socket_is_0600_even_with_permissive_umask(short_dir: Path) -> None:
    old = os.umask(0)
    try:
        with UnixSocketForwarder(short_dir / "s.sock", lambda: SocketUpstream(Path("/nope"))):
            assert stat.S_IMODE(os.stat(short_dir / "s.sock").st_mode) == 0o600
    finally:
        os.umask(old)


def test_client_half_close_reaches_upstream_and_reply_still_flows(short_dir: Path) -> None:
    # The upstream answers only after it sees EOF: like `docker exec -i` with stdin closed.
    def count_then_reply(conn: socket.socket) -> None:
        n = len(recv_all(conn))
        conn.sendall(f"got {n} bytes".encode())
        conn.shutdown(socket.SHUT_WR)

    server = UnixServer(short_dir / "up.sock", count_then_reply)
    try:
        fwd = UnixSocketForwarder(short_dir / "e.sock", lambda: SocketUpstream(server.path))
        with fwd, connect(short_dir / "e.sock") as s:
            s.sendall(b"x" * 100_000)
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b"got 100000 bytes"
    finally:
        server.close()


def test_upstream_half_close_reaches_client_and_client_can_still_send(short_dir: Path) -> None:
    # The upstream says its piece and shuts its write side, then keeps reading.
    received: list[bytes] = []
    done = threading.Event()

    def speak_then_listen(conn: socket.socket) -> None:
        conn.sendall(b"banner")
        conn.shutdown(socket.SHUT_WR)
        received.append(recv_all(conn))
        done.set()

    server = UnixServer(short_dir / "up.sock", speak_then_listen)
    try:
        fwd = UnixSocketForwarder(short_dir / "e.sock", lambda: SocketUpstream(server.path))
        with fwd, connect(short_dir / "e.sock") as s:
            assert recv_all(s) == b"banner"  # EOF seen by the client
            s.sendall(b"still talking")
            s.shutdown(socket.SHUT_WR)
            assert done.wait(10)
        assert received == [b"still talking"]
    finally:
        server.close()


def test_replaces_a_stale_socket(short_dir: Path, echo_server: UnixServer) -> None:
    path = short_dir / "engine.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a crashed agent leaves behind
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with UnixSocketForwarder(path, lambda: SocketUpstream(echo_server.path)), connect(path) as s:
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"


def test_refuses_a_live_socket(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    other = UnixServer(path, echo)
    try:
        fwd = UnixSocketForwarder(path, lambda: SocketUpstream(Path("/nope")))
        with pytest.raises(VmctlError, match="in use by another process") as info:
            fwd.start()
        assert info.value.hint
        with connect(path) as s:  # the other listener is untouched
            s.sendall(b"ok")
            assert s.recv(2) == b"ok"
    finally:
        other.close()


def test_refuses_to_delete_a_regular_file(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    path.write_text("precious")
    with pytest.raises(VmctlError, match="not a socket"):
        UnixSocketForwarder(path, lambda: SocketUpstream(Path("/nope"))).start()
    assert path.read_text() == "precious"


def test_too_long_path_is_an_actionable_error(short_dir: Path) -> None:
    path = short_dir / ("x" * 120)
    with pytest.raises(VmctlError, match="cannot listen") as info:
        UnixSocketForwarder(path, lambda: SocketUpstream(Path("/nope"))).start()
    assert "VMCTL_HOME" in info.value.hint


def test_64_mib_round_trip(forwarder: UnixSocketForwarder) -> None:
    payload = os.urandom(64 * 1024 * 1024)
    with connect(forwarder.listen_path, timeout=60) as s:

        def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(view), 1 << 20):
                s.sendall(view[i : i + (1 << 20)])
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        h = hashlib.sha256()
        total = 0
        while data := s.recv(1 << 20):
            h.update(data)
            total += len(data)
        sender.join()
    assert total == len(payload)
    assert h.digest() == hashlib.sha256(payload).digest()


def test_50_concurrent_connections(forwarder: UnixSocketForwarder) -> None:
    n = 50
    results: dict[int, bool] = {}
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        payload = (f"{i:04d}".encode()) * 50_000  # 200 KB, distinct per client
        with connect(forwarder.listen_path) as s:
            barrier.wait()
            sender = threading.Thread(target=send_and_close, args=(s, payload))
            sender.start()
            got = recv_all(s)
            sender.join()
        results[i] = got == payload

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: True for i in range(n)}
    _wait_for(lambda: forwarder.active_connections() == 0)


def test_upstream_failure_closes_only_that_client(short_dir: Path, echo_server: UnixServer) -> None:
    calls = []

    def flaky() -> SocketUpstream:
        calls.append(1)
        if len(calls) == 1:
            raise VmctlError("the VM refused a connection", detail="agent down")
        return SocketUpstream(echo_server.path)

    with UnixSocketForwarder(short_dir / "e.sock", flaky):
        with connect(short_dir / "e.sock") as s:
            assert recv_all(s) == b""  # closed without a byte
        with connect(short_dir / "e.sock") as s:
            s.sendall(b"next")
            assert s.recv(4) == b"next"


def test_stop_cuts_active_connections_and_removes_the_socket(
    short_dir: Path, echo_server: UnixServer
) -> None:
    path = short_dir / "engine.sock"
    fwd = UnixSocketForwarder(path, lambda: SocketUpstream(echo_server.path))
    fwd.start()
    clients = [connect(path, timeout=10) for _ in range(5)]
    for c in clients:
        c.sendall(b"a")
        assert c.recv(1) == b"a"
    assert fwd.active_connections() == 5
    before = threading.active_count()
    started = time.monotonic()
    fwd.stop()
    assert time.monotonic() - started < 5
    assert not path.exists()
    assert fwd.active_connections() == 0
    for c in clients:
        with contextlib.suppress(ConnectionResetError):
            assert c.recv(1) == b""
        c.close()
    assert threading.active_count() <= before - 5 * 2  # both pumps of each relay ended
    with pytest.raises(OSError):
        connect(path)


def test_stop_leaves_a_socket_that_is_no_longer_ours(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    fwd = UnixSocketForwarder(path, lambda: SocketUpstream(Path("/nope")))
    fwd.start()
    path.unlink()
    successor = UnixServer(path, echo)  # e.g. a newer agent took over the path
    try:
        fwd.stop()
        assert path.exists()
        with connect(path) as s:
            s.sendall(b"mine")
            assert s.recv(4) == b"mine"
    finally:
        successor.close()


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
