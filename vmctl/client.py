"""A minimal Engine API client: enough to check a machine's engine and read its version.

It speaks HTTP/1.1 with `Connection: close` over anything with sendall/recv, so the same
code checks the host socket and, in the host agent, an SSH channel to the guest socket.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vmctl.errors import VmctlError

MAX_RESPONSE = 4 * 1024 * 1024
AGENT_HINT = "the guest agent's log may say why: `vmctl machine logs --agent`"


class Stream(Protocol):
    def sendall(self, data: bytes, /) -> Any: ...
    def recv(self, size: int, /) -> bytes: ...
    def close(self) -> Any: ...


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(conn: Stream, method: str, path: str) -> Response:
    """One request on a fresh connection; the connection is closed afterwards."""
    try:
        conn.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while len(data) < MAX_RESPONSE:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        conn.close()
    return parse_response(data)


def parse_response(data: bytes) -> Response:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise VmctlError(
            "the engine closed the connection without a complete answer", hint=AGENT_HINT
        )
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise VmctlError(f"the engine sent a malformed status line: {lines[0]!r}", hint=AGENT_HINT)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Response(int(parts[1]), headers, body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def connect_unix(path: Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise VmctlError(
            f"cannot connect to the engine at {path}: {e.strerror or e}",
            hint="is the machine running? see `vmctl machine status`",
        ) from None
    return sock


def ping(conn: Stream) -> None:
    _check_ping(request(conn, "GET", "/_ping"))


def ping_keep_open(conn: Stream) -> bool:
    """``ping`` on a connection left open: True if it can carry the next request (the
    answer gave its length and did not ask to close), else False and it is closed."""
    try:
        conn.sendall(b"GET /_ping HTTP/1.1\r\nHost: engine\r\n\r\n")
        resp, reusable = _read_one_response(conn)
        _check_ping(resp)
    except BaseException:
        conn.close()
        raise
    if not reusable:
        conn.close()
    return reusable


def _read_one_response(conn: Stream) -> tuple[Response, bool]:
    """One response, read no further than its end when its length is known; whether the
    connection may carry another request."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_RESPONSE:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    resp = parse_response(data)
    length = resp.headers.get("content-length", "")
    if not length.isdigit() or resp.headers.get("connection", "").lower() == "close":
        # the end of the answer is the end of the connection: read it all
        while len(data) < MAX_RESPONSE and (chunk := conn.recv(65536)):
            data += chunk
        return parse_response(data), False
    body = resp.body
    while len(body) < int(length):
        chunk = conn.recv(65536)
        if not chunk:
            return Response(resp.status, resp.headers, body), False
        body += chunk
    return Response(resp.status, resp.headers, body), len(body) == int(length)


def _check_ping(resp: Response) -> None:
    if resp.status != 200 or resp.body.strip() != b"OK":
        raise VmctlError(
            f"the engine answered /_ping with {resp.status}: {resp.body[:200]!r}", hint=AGENT_HINT
        )


def version(conn: Stream) -> dict[str, Any]:
    resp = request(conn, "GET", "/version")
    if resp.status != 200:
        raise VmctlError(f"the engine answered /version with {resp.status}", hint=AGENT_HINT)
    data = resp.json()
    if not isinstance(data, dict):
        raise VmctlError("the engine's /version answer is not a JSON object", hint=AGENT_HINT)
    return data
