"""The host agent's event subscriber against a fake engine on a unix socket."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmctl.guest_events import EventHooks, EventSubscriber, describe

pytestmark = pytest.mark.timeout(60)


def event(action: str, stamp: int, exit_code: str = "") -> dict[str, Any]:
    attributes = {"image": "busybox", "name": "web"}
    if exit_code:
        attributes["exitCode"] = exit_code
    return {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": "ab" * 32, "Attributes": attributes},
        "scope": "local",
        "time": stamp // 1_000_000_000,
        "timeNano": stamp,
    }


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


HEAD_200 = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class FakeEngine:
    """A unix socket server standing in for the guest engine: ``handler(conn, request line)``
    answers each connection; the request lines are kept in ``requests``."""

    def __init__(self, path: Path, handler: Callable[[socket.socket, str], None]) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(4096)
            if not piece:
                return
            data += piece
        line = data.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        self.handler(conn, line)

    def stop_listening(self) -> None:
        """The engine goes away: new connections are refused (the socket file is gone)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop_listening()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def socket_path() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="ge", dir="/tmp"))
    yield directory / "engine.sock"
    shutil.rmtree(directory, ignore_errors=True)


def unix_opener(path: Path) -> Callable[[], socket.socket]:
    def open_stream() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
        return sock

    return open_stream


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def test_reconnects_with_backoff_and_replays_what_it_missed(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vmctl.guest_events")
    first_done = threading.Event()
    keep_open = threading.Event()

    def first(conn: socket.socket, line: str) -> None:
        # the agent sends two events, then restarts: its socket vanishes with it
        conn.sendall(HEAD_200 + chunk(json.dumps(event("start", 1_000)).encode() + b"\n"))
        conn.sendall(chunk(json.dumps(event("die", 2_000, "3")).encode() + b"\n"))
        first_server.stop_listening()
        conn.close()
        first_done.set()

    def second(conn: socket.socket, line: str) -> None:
        # the backlog replay repeats the last event seen; then new ones, one stamped before
        # it (the restarted agent's clock is behind) and one split over chunks
        replay = json.dumps(event("die", 2_000, "3")).encode() + b"\n"
        behind = json.dumps(event("create", 1_500)).encode() + b"\n"
        fresh = json.dumps(event("start", 3_000)).encode() + b"\n"
        conn.sendall(HEAD_200 + chunk(replay + behind) + chunk(fresh[:10]) + chunk(fresh[10:]))
        keep_open.wait(30)
        conn.close()

    first_server = FakeEngine(socket_path, first)
    seen: list[tuple[str, int]] = []
    connects: list[float] = []
    hooks = EventHooks()
    hooks.register(lambda e: seen.append((e["Action"], e["timeNano"])))
    hooks.on_connect(lambda: connects.append(time.monotonic()))
    subscriber = EventSubscriber(
        unix_opener(socket_path), hooks, backoff_start=0.05, backoff_max=0.2
    )
    subscriber.start()
    second_server = None
    try:
        assert first_done.wait(10)
        wait_for(lambda: len(subscriber.retry_delays) >= 4, "failed reconnection attempts")
        second_server = FakeEngine(socket_path, second)
        wait_for(lambda: len(seen) == 4, "the events after the reconnection")
        assert seen == [("start", 1_000), ("die", 2_000), ("create", 1_500), ("start", 3_000)]
        assert first_server.requests == ["GET /events HTTP/1.1"]
        assert second_server.requests == ["GET /events?since=0.000002000 HTTP/1.1"]
        assert len(connects) == 2
        delays = subscriber.retry_delays
        assert delays[:4] == [0.05, 0.1, 0.2, 0.2]  # reset after a session, doubling, capped
        started = time.monotonic()
        subscriber.stop()
        assert time.monotonic() - started < 2, "stop must cut an idle stream at once"
        assert not subscriber.running
    finally:
        keep_open.set()
        subscriber.stop()
        first_server.close()
        if second_server is not None:
            second_server.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "vmctl.guest_events"]
    who = f"container web ({'ab' * 6})"
    assert lines.count(f"{who} started from busybox") == 2
    assert lines.count(f"{who} exited with code 3") == 1
    assert sum("event stream lost" in line for line in lines) == 1  # once per outage


def test_engine_still_starting_is_retried(socket_path: Path) -> None:
    answers = iter([503, 200])
    release = threading.Event()

    def handler(conn: socket.socket, line: str) -> None:
        status = next(answers, 200)
        if status == 503:
            body = b'{"message":"the engine is still starting; try again"}'
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
            )
            conn.close()
            return
        conn.sendall(HEAD_200 + chunk(json.dumps(event("start", 5)).encode() + b"\n"))
        release.wait(30)
        conn.close()

    server = FakeEngine(socket_path, handler)
    seen: list[dict[str, Any]] = []
    subscriber = EventSubscriber(unix_opener(socket_path), backoff_start=0.02, backoff_max=0.1)
    subscriber.hooks.register(seen.append)
    subscriber.start()
    try:
        wait_for(lambda: len(seen) == 1, "the event after a 503")
        assert len(server.requests) == 2
        assert subscriber.retry_delays == [0.02]
    finally:
        release.set()
        subscriber.stop()
        server.close()


def test_a_failing_hook_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    hooks = EventHooks()
    got: list[str] = []

    def broken(e: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    hooks.register(broken)
    unregister = hooks.register(lambda e: got.append(e["Action"]))
    hooks.dispatch(event("start", 1))
    assert got == ["start"]
    assert any("event hook failed" in r.getMessage() for r in caplog.records)
    unregister()
    hooks.dispatch(event("die", 2))
    assert got == ["start"]


def test_only_container_starts_and_exits_are_logged() -> None:
    assert describe(event("create", 1)) is None
    assert describe({**event("start", 1), "Type": "volume"}) is None
    assert describe(event("die", 1, "137")) == f"container web ({'ab' * 6}) exited with code 137"


def test_the_host_agent_follows_the_engines_events(
    socket_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve_engine() starts the subscriber on the host agent's own channel opener and
    shutdown() stops it; events reach the hooks registered on the host agent."""
    from vmctl.hostagent import HostAgent
    from vmctl.paths import MachineFiles, Paths

    caplog.set_level(logging.INFO)
    release = threading.Event()

    def handler(conn: socket.socket, line: str) -> None:
        if line.startswith("GET /events"):
            conn.sendall(HEAD_200 + chunk(json.dumps(event("start", 7)).encode() + b"\n"))
            release.wait(30)
        conn.close()

    engine = FakeEngine(socket_path, handler)
    machine = socket_path.parent / "m"
    machine.mkdir()
    host = HostAgent(Paths(machine, machine, machine), MachineFiles(machine))
    monkeypatch.setattr(host, "open_engine_channel", unix_opener(socket_path))
    seen: list[dict[str, Any]] = []
    host.event_hooks.register(seen.append)
    host.serve_engine()
    try:
        wait_for(lambda: len(seen) == 1, "the event through the host agent")
        # (the port publisher opens GET /_vmctl/publisher beside it)
        events = [r for r in engine.requests if not r.startswith("GET /_vmctl/publisher")]
        assert events == ["GET /events HTTP/1.1"]
        assert host.events is not None and host.events.running
    finally:
        release.set()
        host.shutdown()
        engine.close()
    assert host.events is None
    assert f"container web ({'ab' * 6}) started from busybox" in caplog.messages
