"""The daemon's side of a shim's attach socket (protocol in :mod:`agent.runtime.shim`)."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator


def connect(path: str, stdin: bool, stdout: bool, stderr: bool) -> socket.socket:
    """A connection that receives the chosen output streams and carries input."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    header = {"stdin": stdin, "stdout": stdout, "stderr": stderr}
    sock.sendall(json.dumps(header).encode() + b"\n")
    return sock


def resize(path: str, rows: int, cols: int) -> None:
    """Set the container's terminal size."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(json.dumps({"resize": [rows, cols]}).encode() + b"\n")
        sock.recv(1)  # the shim closes the connection once the size is set


def frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(stream, payload) pairs until the container's output ends."""
    buffer = b""
    while True:
        while len(buffer) >= 5:
            stream, size = struct.unpack(">BI", buffer[:5])
            if len(buffer) < 5 + size:
                break
            yield stream, buffer[5 : 5 + size]
            buffer = buffer[5 + size :]
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk
