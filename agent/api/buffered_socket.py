"""A connected socket with a read buffer we control.

We keep our own buffer (instead of ``socket.makefile``) so that, when a handler hijacks the
connection, the bytes the client already sent past the HTTP head can be handed over exactly.
"""

from __future__ import annotations

import contextlib
import select
import socket

RECV_SIZE = 65536


class LineTooLong(Exception):
    """No line end within the allowed number of bytes."""


class BufferedSocket:
    """Line and block reads over a stream socket; writes go straight through."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        """Receive more bytes into the buffer; False at end of stream."""
        if self._eof:
            return False
        data = self.sock.recv(RECV_SIZE)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def read_line(self, limit: int) -> bytes | None:
        """One line without its CRLF or LF; None at a clean end of stream.

        Raises LineTooLong when no line end shows within ``limit`` bytes and EOFError when
        the stream ends in the middle of a line.
        """
        scanned = 0
        while True:
            end = self._buf.find(b"\n", scanned)
            if end >= 0:
                if end > limit:
                    raise LineTooLong
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buf) > limit:
                raise LineTooLong
            scanned = len(self._buf)
            if not self._fill():
                if self._buf:
                    raise EOFError("connection closed in the middle of a line")
                return None

    def read_some(self, size: int) -> bytes:
        """Up to ``size`` bytes (buffered ones first, else one receive); b"" at end of stream."""
        if not self._buf and not self._fill():
            return b""
        chunk = bytes(self._buf[:size])
        del self._buf[:size]
        return chunk

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes; EOFError if the stream ends first."""
        while len(self._buf) < size:
            if not self._fill():
                raise EOFError("connection closed before the expected bytes arrived")
        chunk = bytes(self._buf[:size])
        del self._buf[:size]
        return chunk

    def take_buffered(self) -> bytes:
        """Hand over (and forget) every byte received but not consumed yet."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def peer_closed(self) -> bool:
        """True when the client has closed or half-closed its side, without blocking.

        Long-polling handlers (wait, events, logs -f) use this to notice a client that went
        away while nothing was being written. Unconsumed request bytes mean "still there".
        """
        if self._buf:
            return False
        if self._eof:
            return True
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | select.POLLHUP | select.POLLRDHUP)
        if not poller.poll(0):
            return False
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if not data:
            self._eof = True
            return True
        self._buf += data
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
