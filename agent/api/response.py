"""Writing responses: whole bodies, streamed (chunked) bodies, and hijacked raw streams."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from agent import __version__
from agent.api.buffered_socket import BufferedSocket
from agent.api.request import Request
from agent.api.versions import API_VERSION
from agent.errors import AgentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
RAW_STREAM_TYPE = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM_TYPE = "application/vnd.docker.multiplexed-stream"

SERVER_NAME = f"vmctl-agent/{__version__} (linux)"
# dockerd's middlewares put these on every response; clients read Api-Version and Ostype
# from whatever answers first, so they go on errors too
COMMON_HEADERS = (
    ("Api-Version", API_VERSION),
    ("Docker-Experimental", "false"),
    ("Ostype", "linux"),
    ("Server", SERVER_NAME),
)

REASONS = {
    100: "Continue",
    101: "UPGRADED",  # what dockerd sends; the docker Go client checks only the code
    200: "OK",
    201: "Created",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

STREAM_FLUSH_SIZE = 65536


def encode_json(value: object) -> bytes:
    """Compact JSON plus a newline, as Go's json.Encoder (which dockerd uses) writes it."""
    import json  # here, not at the top: /_ping, the first request at boot, needs no JSON

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _http_date() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


def build_head(status: int, fields: list[tuple[str, str]], connection: str | None) -> bytes:
    """Status line and header fields (the common ones first), ending with the blank line."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines.extend(f"{name}: {value}" for name, value in COMMON_HEADERS)
    lines.append(f"Date: {_http_date()}")
    lines.extend(f"{name}: {value}" for name, value in fields)
    if connection:
        lines.append(f"Connection: {connection}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def send_error_and_close(conn: BufferedSocket, error: AgentError) -> None:
    """Answer a request we could not parse (so there is no ResponseWriter for it)."""
    body = encode_json({"message": error.message})
    fields = [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body)))]
    conn.sendall(build_head(error.status, fields, "close") + body)


class ResponseAlreadyStarted(RuntimeError):
    """A handler tried to send a second status line."""


class ResponseWriter:
    """What a handler answers through: exactly one of send*, start_stream or hijack.

    Extra headers set with ``set_header`` before that call go out with the response.
    """

    def __init__(self, conn: BufferedSocket, request: Request) -> None:
        self._conn = conn
        self._request = request
        self._extra: list[tuple[str, str]] = []
        self._stream: ResponseStream | None = None
        self.status = 0  # 0 until the status line has been sent
        self.keep_alive = request.keep_alive
        self.hijacked = False
        self.complete = False  # the whole response has been written
        request.body.call_before_first_read(self._send_continue)

    @property
    def started(self) -> bool:
        return self.status != 0

    def set_header(self, name: str, value: str) -> None:
        lower = name.lower()
        self._extra = [(n, v) for n, v in self._extra if n.lower() != lower]
        self._extra.append((name, value))

    # -- whole responses ------------------------------------------------------------------

    def send(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        """A complete response with a Content-Length (no body for HEAD, 1xx, 204, 304)."""
        bodiless = status in (204, 304) or status < 200
        headers: list[tuple[str, str]] = []
        if content_type and not bodiless:
            headers.append(("Content-Type", content_type))
        if not bodiless:
            headers.append(("Content-Length", str(len(body))))
        head = self._head(status, headers)
        if self._request.method == "HEAD" or bodiless:
            self._conn.sendall(head)
        else:
            self._conn.sendall(head + body)
        self.complete = True

    def send_json(self, value: object, status: int = 200) -> None:
        self.send(status, encode_json(value), JSON_TYPE)

    def send_text(self, text: str, status: int = 200, content_type: str = TEXT_TYPE) -> None:
        self.send(status, text.encode(), content_type)

    def send_error(self, error: AgentError) -> None:
        """The Engine API error body: ``{"message": …}`` with the error's status."""
        self.send_json({"message": error.message}, error.status)

    # -- streamed responses ---------------------------------------------------------------

    def start_stream(self, status: int = 200, content_type: str = JSON_TYPE) -> ResponseStream:
        """Send the head now and return a stream for the body (chunked for HTTP/1.1).

        The head goes out immediately, so a client that waits for it (``docker run`` waits
        for the head of ``/containers/{id}/wait`` before it starts the container) is served.
        """
        chunked = self._request.http_version >= (1, 1)
        headers = [("Content-Type", content_type)]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            self.keep_alive = False  # an HTTP/1.0 body without length ends at close
        self._conn.sendall(self._head(status, headers))
        head_only = self._request.method == "HEAD"
        self._stream = ResponseStream(self, self._conn, chunked, head_only)
        if head_only:
            self._stream.close()
        return self._stream

    # -- hijacking ------------------------------------------------------------------------

    def hijack(
        self, content_type: str = RAW_STREAM_TYPE, headers: Iterable[tuple[str, str]] = ()
    ) -> HijackedConnection:
        """Answer with a raw stream and hand the socket over to the caller.

        With ``Connection: Upgrade`` / ``Upgrade: tcp`` in the request (what the docker CLI
        sends for attach and exec) the answer is ``101 UPGRADED``; otherwise ``200 OK``, as
        dockerd does. Any unread request body is discarded first, so the bytes returned in
        ``HijackedConnection.buffered`` are the client's first stream bytes. From then on the
        HTTP layer never touches the socket again: the caller must close it.
        """
        if not self._request.body.drain(self._request.body.limits.max_drain):
            raise AgentError(413, "request body too large to discard before the raw stream")
        for name, value in headers:
            self.set_header(name, value)
        if self._request.wants_upgrade:
            status = 101
            head_fields = [
                ("Content-Type", content_type),
                ("Connection", "Upgrade"),
                ("Upgrade", "tcp"),
            ]
        else:
            status = 200
            head_fields = [("Content-Type", content_type)]
        self._conn.sendall(self._head(status, head_fields, connection_header=False))
        self.hijacked = True
        self.keep_alive = False
        self.complete = True
        return HijackedConnection(self._conn.sock, self._conn.take_buffered())

    # -- for the connection loop ----------------------------------------------------------

    def peer_closed(self) -> bool:
        """Whether the client has gone away (checked without blocking); see BufferedSocket."""
        return self._conn.peer_closed()

    def finish(self) -> None:
        """Complete what the handler left open: close a stream, or send an empty 200."""
        if self.hijacked or self.complete:
            return
        if self._stream is not None:
            self._stream.close()
        elif not self.started:
            self.send(200)

    def abandon(self) -> None:
        """The response cannot be completed: make sure the connection is closed after it.

        This includes a hijacked connection whose handler failed: the HTTP layer takes it
        back so that it gets closed.
        """
        self.keep_alive = False
        self.hijacked = False

    def _head(
        self, status: int, fields: list[tuple[str, str]], connection_header: bool = True
    ) -> bytes:
        if self.started:
            raise ResponseAlreadyStarted(f"response already started with {self.status}")
        self.status = status
        connection = None
        if connection_header:
            if not self.keep_alive:
                connection = "close"
            elif self._request.http_version < (1, 1):
                connection = "keep-alive"
        return build_head(status, self._extra + fields, connection)

    def _send_continue(self) -> None:
        """Let a client that sent ``Expect: 100-continue`` know it may send the body."""
        if self._request.expect_continue and not self.started:
            self._conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _stream_closed(self) -> None:
        self.complete = True


class ResponseStream:
    """A response body written piece by piece: ``write`` buffers, ``flush`` sends a chunk.

    Used for progress (pull, build), follow modes (logs -f, events, stats) and long waits.
    Several threads may write to one stream (say, a stdout and a stderr pump).
    """

    def __init__(
        self, owner: ResponseWriter, conn: BufferedSocket, chunked: bool, head_only: bool
    ) -> None:
        self._owner = owner
        self._conn = conn
        self._chunked = chunked
        self._head_only = head_only  # HEAD: the head went out, every write is discarded
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._lock = threading.Lock()
        self.closed = False

    def write(self, data: bytes) -> None:
        """Queue bytes; they are sent at ``flush`` (or once enough has piled up)."""
        if self._head_only or not data:
            return
        with self._lock:
            if self.closed:
                raise ValueError("write to a closed response stream")
            self._pending.append(bytes(data))
            self._pending_size += len(data)
            if self._pending_size >= STREAM_FLUSH_SIZE:
                self._send_pending()

    def write_json(self, value: object, flush: bool = True) -> None:
        """One JSON message and a newline (events, stats, progress), sent at once by default."""
        self.write(encode_json(value))
        if flush:
            self.flush()

    def flush(self) -> None:
        """Send everything queued so far to the client, as one chunk."""
        with self._lock:
            self._send_pending()

    def _send_pending(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if self._chunked:
            self._conn.sendall(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._conn.sendall(data)

    def close(self) -> None:
        """Flush and end the body (the zero-length chunk); closing twice is harmless."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._send_pending()
            if self._chunked and not self._head_only:
                self._conn.sendall(b"0\r\n\r\n")
        self._owner._stream_closed()

    def __enter__(self) -> ResponseStream:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()


class HijackedConnection:
    """The raw, bidirectional client connection after a hijack; the handler owns it.

    ``buffered`` holds bytes the client had already sent after the request; ``recv``
    returns those first. ``close_write`` half-closes (the client sees end of output).
    """

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self.buffered = buffered

    def recv(self, size: int = 65536) -> bytes:
        if self.buffered:
            data, self.buffered = self.buffered[:size], self.buffered[size:]
            return data
        return self.sock.recv(size)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        # shutdown first: a thread blocked in recv() on this socket keeps it open otherwise,
        # and the client would never see the end of the stream
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> HijackedConnection:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()
