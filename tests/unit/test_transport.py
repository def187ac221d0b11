"""SSHTransport against a real SSH server: paramiko's server side, run by the test.

The server parses ``direct-streamlocal@openssh.com`` opens itself (paramiko does not) and
connects them to real unix sockets, so these tests prove the wire encoding, not a mock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_CONNECT_FAILED,
    OPEN_SUCCEEDED,
)

from vmctl.errors import VmctlError
from vmctl.forward import UnixSocketForwarder
from vmctl.keys import generate_keypair, parse_public_line, write_known_hosts
from vmctl.transport import STREAMLOCAL_KIND, HostKeyMismatchError, SSHTransport

pytestmark = pytest.mark.timeout(120)


# -- a small SSH server ------------------------------------------------------------------


class StreamlocalServerTransport(paramiko.Transport):
    """Server-side Transport that parses the streamlocal fields paramiko leaves unread."""

    last_streamlocal: tuple[str, str, int] | None = None

    def _parse_channel_open(self, m: paramiko.Message) -> None:
        probe = paramiko.Message(m.asbytes())
        kind = probe.get_text()
        probe.get_int(), probe.get_int(), probe.get_int()  # sender id, window, max packet
        if kind == STREAMLOCAL_KIND:
            # Runs on the transport thread, right before check_channel_request reads it.
            self.last_streamlocal = (probe.get_text(), probe.get_text(), probe.get_int())
        super()._parse_channel_open(m)  # type: ignore[misc]


@dataclass
class ServerState:
    host_key: paramiko.PKey
    authorized: bytes  # the accepted client key blob
    allowed_auths: str = "publickey,password"
    drop_first: int = 0  # connections to close before the banner (a booting guest)
    hold_first: int = 0  # connections to accept and leave silent (a guest not yet up)
    held: list[socket.socket] = field(default_factory=list)
    publickey_attempts: list[str] = field(default_factory=list)
    password_attempts: list[str] = field(default_factory=list)
    streamlocal_opens: list[tuple[str, str, int]] = field(default_factory=list)


class Handler(paramiko.ServerInterface):
    def __init__(self, state: ServerState, transport: StreamlocalServerTransport) -> None:
        self.state = state
        self.transport = transport
        self.unix: dict[int, socket.socket] = {}

    def get_allowed_auths(self, username: str) -> str:
        return self.state.allowed_auths

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.state.publickey_attempts.append(username)
        if "publickey" not in self.state.allowed_auths.split(","):
            return AUTH_FAILED
        if username == "root" and key.asbytes() == self.state.authorized:
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        self.state.password_attempts.append(username)
        return AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        if kind == STREAMLOCAL_KIND and self.transport.last_streamlocal is not None:
            opened = self.transport.last_streamlocal
            self.transport.last_streamlocal = None
            self.state.streamlocal_opens.append(opened)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(opened[0])
            except OSError:
                sock.close()
                return OPEN_FAILED_CONNECT_FAILED
            self.unix[chanid] = sock
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=_exec, args=(channel, command), daemon=True).start()
        return True


def _exec(chan: paramiko.Channel, command: bytes) -> None:
    proc = subprocess.run(command, shell=True, capture_output=True, timeout=30)
    with contextlib.suppress(OSError, paramiko.SSHException):  # the client may have gone
        chan.sendall(proc.stdout)
        chan.sendall_stderr(proc.stderr)
        chan.send_exit_status(proc.returncode)
    chan.close()


def _pump_channel(chan: paramiko.Channel, sock: socket.socket) -> None:
    """What sshd does with a streamlocal channel: relay, relaying half-close too."""

    def to_sock() -> None:
        with contextlib.suppress(OSError):
            while data := chan.recv(65536):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=to_sock, daemon=True)
    t.start()
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            chan.sendall(data)
        chan.shutdown_write()
    t.join()
    # The client may have torn the whole connection down already (end of a test).
    with contextlib.suppress(EOFError, OSError):
        chan.close()
    sock.close()


class SSHServer:
    def __init__(self, state: ServerState, port: int = 0) -> None:
        self.state = state
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.state.drop_first > 0:
                self.state.drop_first -= 1
                conn.close()  # EOF before the banner, as QEMU's forward does while booting
                continue
            if self.state.hold_first > 0:
                self.state.hold_first -= 1
                self.state.held.append(conn)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        t = StreamlocalServerTransport(conn)
        t.add_server_key(self.state.host_key)
        handler = Handler(self.state, t)
        self.transports.append(t)
        try:
            t.start_server(server=handler)
        except (paramiko.SSHException, EOFError, OSError):
            return  # e.g. the client hung up after rejecting our host key
        self._channels(t, handler)

    def _channels(self, t: paramiko.Transport, handler: Handler) -> None:
        while t.is_active():
            chan = t.accept(timeout=0.2)
            if chan is None:
                continue
            sock = handler.unix.pop(chan.get_id(), None)
            if sock is not None:
                threading.Thread(target=_pump_channel, args=(chan, sock), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for t in self.transports:
            t.close()
        for conn in self.state.held:
            conn.close()


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class Keys:
    dir: Path
    client: Path
    client_line: str
    host: Path
    host_line: str


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vt", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def keys(short_dir: Path) -> Keys:
    client, host = short_dir / "id_ed25519", short_dir / "host_key"
    return Keys(
        short_dir,
        client,
        generate_keypair(client, "vmctl client"),
        host,
        generate_keypair(host, "vmctl host"),
    )


def _state(keys: Keys, **kw: object) -> ServerState:
    return ServerState(
        host_key=paramiko.PKey.from_path(keys.host),
        authorized=parse_public_line(keys.client_line)[1],
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def server(keys: Keys) -> Iterator[SSHServer]:
    srv = SSHServer(_state(keys))
    yield srv
    srv.close()


@pytest.fixture
def transport(keys: Keys, server: SSHServer) -> Iterator[SSHTransport]:
    t = SSHTransport(server.port, keys.client, keys.host_line)
    t.connect(timeout=10)
    yield t
    t.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


class UnixServer:
    def __init__(self, path: Path, handler: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(128)
        self.handler = handler
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def engine(short_dir: Path) -> Iterator[UnixServer]:
    srv = UnixServer(short_dir / "engine.sock", echo)
    yield srv
    srv.close()


def recv_all(recv: Callable[[int], bytes]) -> bytes:
    chunks = []
    while data := recv(65536):
        chunks.append(data)
    return b"".join(chunks)


# -- connecting and authenticating ---------------------------------------------------------


def test_connects_with_the_client_key_only(transport: SSHTransport, server: SSHServer) -> None:
    assert transport.is_active()
    assert server.state.publickey_attempts == ["root"]
    assert server.state.password_attempts == []  # never tried, though the server offers it


def test_wrong_pinned_host_key_refuses_before_authenticating(keys: Keys, server: SSHServer) -> None:
    other = generate_keypair(keys.dir / "other_host", "not the VM")
    t = SSHTransport(server.port, keys.client, other)
    with pytest.raises(HostKeyMismatchError, match="did not match the machine's pinned key") as e:
        t.connect(timeout=10)
    assert e.value.hint
    assert not t.is_active()
    assert server.state.publickey_attempts == []  # our key was never offered


def test_host_key_mismatch_is_not_retried(keys: Keys, server: SSHServer) -> None:
    other = generate_keypair(keys.dir / "other_host", "not the VM")
    attempts: list[int] = []
    t = SSHTransport(server.port, keys.client, other)
    with pytest.raises(HostKeyMismatchError):
        t.wait_until_connected(time.monotonic() + 30, lambda n, _e: attempts.append(n))
    assert attempts == [1]


def test_server_without_the_pinned_key_type_is_refused(keys: Keys) -> None:
    state = _state(keys)
    state.host_key = paramiko.ECDSAKey.generate()
    srv = SSHServer(state)
    try:
        t = SSHTransport(srv.port, keys.client, keys.host_line)
        with pytest.raises(VmctlError, match="cannot talk to vmctl"):
            t.wait_until_connected(time.monotonic() + 30)
        assert state.publickey_attempts == []
    finally:
        srv.close()


def test_rejected_client_key_is_an_error_and_not_retried(keys: Keys, server: SSHServer) -> None:
    stranger = keys.dir / "stranger"
    generate_keypair(stranger, "unknown")
    attempts: list[int] = []
    t = SSHTransport(server.port, stranger, keys.host_line)
    with pytest.raises(VmctlError, match="rejected the machine's SSH key"):
        t.wait_until_connected(time.monotonic() + 30, lambda n, _e: attempts.append(n))
    assert attempts == [1]
    assert server.state.password_attempts == []


def test_password_only_server_is_refused(keys: Keys) -> None:
    srv = SSHServer(_state(keys, allowed_auths="password"))
    try:
        t = SSHTransport(srv.port, keys.client, keys.host_line)
        with pytest.raises(VmctlError, match="does not accept key authentication"):
            t.connect(timeout=10)
        assert srv.state.password_attempts == []
    finally:
        srv.close()


def test_connect_to_nothing_is_an_actionable_error(keys: Keys) -> None:
    port = _free_port()
    with pytest.raises(VmctlError, match="cannot reach") as e:
        SSHTransport(port, keys.client, keys.host_line).connect(timeout=2)
    assert "vmctl machine status" in e.value.hint


def test_wait_retries_eof_during_banner(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    srv = SSHServer(_state(keys, drop_first=3))
    try:
        attempts: list[tuple[int, BaseException | None]] = []
        t = SSHTransport(srv.port, keys.client, keys.host_line)
        with caplog.at_level(logging.DEBUG):
            t.wait_until_connected(time.monotonic() + 30, lambda n, e: attempts.append((n, e)))
        assert t.is_active()
        assert [n for n, _ in attempts] == [1, 2, 3, 4]
        assert attempts[0][1] is None and attempts[1][1] is not None
        # Expected boot-time failures must not fill the agent log with ERROR tracebacks.
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        t.close()
    finally:
        srv.close()


def test_wait_does_not_linger_on_a_silent_connection(keys: Keys) -> None:
    srv = SSHServer(_state(keys, hold_first=1))
    try:
        attempts: list[int] = []
        t = SSHTransport(srv.port, keys.client, keys.host_line)
        started = time.monotonic()
        t.wait_until_connected(started + 60, lambda n, _e: attempts.append(n))
        assert attempts == [1, 2]
        assert time.monotonic() - started < 8  # a short banner wait, not the full timeout
        t.close()
    finally:
        srv.close()


def test_wait_retries_refused_until_the_server_appears(keys: Keys) -> None:
    port = _free_port()
    servers: list[SSHServer] = []
    timer = threading.Timer(1.0, lambda: servers.append(SSHServer(_state(keys), port=port)))
    timer.start()
    try:
        t = SSHTransport(port, keys.client, keys.host_line)
        attempts: list[int] = []
        t.wait_until_connected(time.monotonic() + 30, lambda n, _e: attempts.append(n))
        assert t.is_active()
        assert len(attempts) > 1
        t.close()
    finally:
        timer.join()
        for s in servers:
            s.close()


def test_wait_gives_up_at_the_deadline(keys: Keys) -> None:
    t = SSHTransport(_free_port(), keys.client, keys.host_line)
    started = time.monotonic()
    with pytest.raises(VmctlError, match="did not come up in time") as e:
        t.wait_until_connected(started + 1.5)
    assert 1.4 < time.monotonic() - started < 5
    assert "attempts" in e.value.detail


def test_close_makes_the_transport_inactive(transport: SSHTransport, engine: UnixServer) -> None:
    transport.close()
    assert not transport.is_active()
    with pytest.raises(VmctlError, match="not connected"):
        transport.open_unix_channel(str(engine.path))
    with pytest.raises(VmctlError, match="not connected"):
        transport.run("true")


# -- run -----------------------------------------------------------------------------------


def test_run_returns_exit_code_and_both_streams(transport: SSHTransport) -> None:
    code, out, err = transport.run("echo out; echo err >&2; exit 3", timeout=20)
    assert (code, out, err) == (3, b"out\n", b"err\n")


def test_run_large_output_on_both_streams(transport: SSHTransport) -> None:
    # Larger than the SSH window on each stream: both must be drained together.
    cmd = "head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2"
    code, out, err = transport.run(cmd, timeout=60)
    assert code == 0
    assert out == err == b"\0" * 3_000_000


def test_run_times_out(transport: SSHTransport) -> None:
    started = time.monotonic()
    with pytest.raises(VmctlError, match="did not finish within"):
        transport.run("sleep 3", timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert transport.run("echo alive", timeout=20)[1] == b"alive\n"


# -- streamlocal channels ------------------------------------------------------------------


def test_unix_channel_payload_is_parsed_by_the_server(
    transport: SSHTransport, server: SSHServer, engine: UnixServer
) -> None:
    chan = transport.open_unix_channel(str(engine.path))
    try:
        chan.sendall(b"GET /_ping HTTP/1.1\r\n\r\n")
        chan.shutdown_write()
        assert recv_all(chan.recv) == b"GET /_ping HTTP/1.1\r\n\r\n"
    finally:
        chan.close()
    assert server.state.streamlocal_opens == [(str(engine.path), "", 0)]


def test_refused_unix_channel_is_an_actionable_error(
    transport: SSHTransport, short_dir: Path
) -> None:
    with pytest.raises(VmctlError, match="refused a connection") as e:
        transport.open_unix_channel(str(short_dir / "absent.sock"))
    assert "engine" in e.value.hint
    assert transport.is_active()  # one refused channel does not hurt the connection


def test_concurrent_opens_reach_the_right_sockets(transport: SSHTransport, short_dir: Path) -> None:
    def greeter(name: bytes) -> Callable[[socket.socket], None]:
        def handle(conn: socket.socket) -> None:
            conn.sendall(name)
            conn.shutdown(socket.SHUT_WR)

        return handle

    servers = [UnixServer(short_dir / f"s{i}.sock", greeter(b"server%d" % i)) for i in range(4)]
    results: dict[int, bytes] = {}
    barrier = threading.Barrier(40)

    def worker(i: int) -> None:
        barrier.wait()
        chan = transport.open_unix_channel(str(servers[i % 4].path))
        try:
            results[i] = recv_all(chan.recv)
        finally:
            chan.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert results == {i: b"server%d" % (i % 4) for i in range(40)}
    finally:
        for s in servers:
            s.close()


# -- the forwarder over SSH, end to end ----------------------------------------------------


@pytest.fixture
def forwarded(transport: SSHTransport, engine: UnixServer, short_dir: Path) -> Iterator[Path]:
    path = short_dir / "host.sock"
    fwd = UnixSocketForwarder(path, lambda: transport.open_unix_channel(str(engine.path)))
    fwd.start()
    yield path
    fwd.stop()


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(str(path))
    return s


def test_forwarder_over_ssh_with_half_close(forwarded: Path) -> None:
    with _connect(forwarded) as s:
        s.sendall(b"hello engine")
        assert s.recv(64) == b"hello engine"
        s.shutdown(socket.SHUT_WR)  # client EOF -> channel EOF -> engine EOF -> back
        assert recv_all(s.recv) == b""


def test_forwarder_over_ssh_bulk_transfer(forwarded: Path) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    with _connect(forwarded) as s:
        sender = threading.Thread(target=_send_and_close, args=(s, payload))
        sender.start()
        got = recv_all(s.recv)
        sender.join()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_forwarder_over_ssh_concurrent_clients(forwarded: Path) -> None:
    results: dict[int, bool] = {}

    def client(i: int) -> None:
        payload = b"%05d" % i * 20_000
        with _connect(forwarded) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            results[i] = recv_all(s.recv) == payload

    threads = [threading.Thread(target=client, args=(i,)) for i in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: True for i in range(25)}


# -- the system ssh client with the pinned known_hosts -------------------------------------


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_system_ssh_accepts_only_the_pinned_host_key(keys: Keys, server: SSHServer) -> None:
    def ssh(known_hosts: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(server.port), "-i", str(keys.client),
             "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
             "-o", "HostKeyAlias=vmctl-test", "-o", "StrictHostKeyChecking=yes",
             "root@127.0.0.1", "echo pinned-ok"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    good, bad = keys.dir / "known_hosts", keys.dir / "known_hosts.bad"
    write_known_hosts(good, "vmctl-test", keys.host_line)
    write_known_hosts(bad, "vmctl-test", generate_keypair(keys.dir / "x", "other"))
    ok = ssh(good)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "pinned-ok\n"
    refused = ssh(bad)
    assert refused.returncode != 0
    assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr or "verification" in refused.stderr


def _send_and_close(s: socket.socket, payload: bytes) -> None:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
