"""The guest's seed config and the small Engine API client's HTTP parsing."""

from __future__ import annotations

import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vmctl import client
from vmctl.config import MachineConfig, Mount
from vmctl.errors import VmctlError
from vmctl.seed import seed_config_text


def test_seed_config_is_shell_safe(tmp_path: Path) -> None:
    odd = tmp_path / "it's a dir"
    odd.mkdir()
    config = MachineConfig(name="dev", mounts=(Mount(str(tmp_path)), Mount(str(odd), False)))
    text = seed_config_text(config)
    # Source it with a real shell and read the values back.
    out = subprocess.run(
        ["sh", "-c", text + 'printf "%s\\n---\\n%s\\n" "$VMCTL_MACHINE" "$VMCTL_SHARES"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    machine, shares = out.split("\n---\n")
    assert machine == "dev"
    assert shares.strip().splitlines() == [f"share0 rw {tmp_path}", f"share1 ro {odd}"]
    assert shlex.quote("dev") in text


def test_parse_response_plain_and_chunked() -> None:
    resp = client.parse_response(b"HTTP/1.1 200 OK\r\nApi-Version: 1.50\r\n\r\nOK")
    assert resp.status == 200 and resp.headers["api-version"] == "1.50" and resp.body == b"OK"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert client.parse_response(chunked).json() == {}


def test_parse_response_rejects_garbage() -> None:
    with pytest.raises(VmctlError, match="without a complete answer"):
        client.parse_response(b"HTTP/1.1 200")
    with pytest.raises(VmctlError, match="malformed status line"):
        client.parse_response(b"nonsense\r\n\r\n")


def test_ping_over_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        request = conn.recv(1000)
        assert request.startswith(b"GET /_ping HTTP/1.1\r\n")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    client.ping(client.connect_unix(path))
    thread.join()
    server.close()


def test_connect_to_nothing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VmctlError, match="cannot connect to the engine"):
        client.connect_unix(tmp_path / "absent.sock")


def serve_answers(answers: list[bytes]) -> socket.socket:
    """One end of a connection whose other end reads a request before each answer, then
    closes: an engine answering keep-alive requests on one connection."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        with theirs:
            for answer in answers:
                if not theirs.recv(4096):
                    return
                theirs.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return ours


OK_KEEP_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nApi-Version: 1.50\r\n\r\nOK"


def test_ping_keep_open_leaves_the_connection_usable() -> None:
    conn = serve_answers([OK_KEEP_ALIVE, OK_KEEP_ALIVE])
    assert client.ping_keep_open(conn) is True
    assert client.ping_keep_open(conn) is True  # the same connection carried a second one
    conn.close()


def test_ping_keep_open_closes_what_cannot_be_reused() -> None:
    conn = serve_answers([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nOK"])
    assert client.ping_keep_open(conn) is False
    assert conn.fileno() == -1  # closed


def test_ping_keep_open_refused_answer_raises_and_closes() -> None:
    conn = serve_answers([b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"])
    with pytest.raises(VmctlError, match="500"):
        client.ping_keep_open(conn)
    assert conn.fileno() == -1


def test_ping_keep_open_reads_a_closing_answer_to_its_end() -> None:
    """An answer that ends with its connection may come in pieces: the body is read whole."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        with theirs:
            theirs.recv(4096)
            theirs.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            time.sleep(0.1)
            theirs.sendall(b"OK")

    threading.Thread(target=serve, daemon=True).start()
    assert client.ping_keep_open(ours) is False
