"""The accept loop: one thread per client connection, stoppable from a signal handler."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time

from agent.api.connection import serve_connection
from agent.api.limits import DEFAULT_LIMITS, Limits
from agent.api.router import Router
from agent.logsetup import get_logger

log = get_logger(__name__)

# accept() failures that mean "out of resources for now", not "the listener is broken"
_TRANSIENT_ACCEPT_ERRORS = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO)
)


class Server:
    """Serves the Engine API on a listening socket until ``shutdown`` is called."""

    def __init__(
        self, listener: socket.socket, router: Router, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.listener = listener
        self.router = router
        self.limits = limits
        # shutdown() writes here to wake the poll in serve_forever: it is safe to call from
        # a signal handler or another thread, unlike closing the socket under accept()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._stopping = False
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._serial = 0

    def serve_forever(self) -> None:
        self.listener.setblocking(False)
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stopping:
            for fd, _events in poller.poll():
                if fd == self._wake_read or self._stopping:
                    continue
                self._accept()

    def _accept(self) -> None:
        try:
            sock, _address = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another wake-up took it, or the client gave up already
        except OSError as error:
            if error.errno not in _TRANSIENT_ACCEPT_ERRORS:
                raise
            log.warning("accept failed, retrying shortly: %s", error)
            time.sleep(0.1)
            return
        sock.setblocking(True)
        with self._lock:
            self._serial += 1
            serial = self._serial
            self._connections.add(sock)
        thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"conn-{serial}", daemon=True
        )
        thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            serve_connection(sock, self.router, self.limits)
        except Exception:
            log.exception("connection handler crashed")
            sock.close()
        finally:
            with self._lock:
                self._connections.discard(sock)

    def shutdown(self) -> None:
        """Make serve_forever return (callable from signal handlers and other threads)."""
        self._stopping = True
        # a full pipe means a wake-up is pending already; a closed one, that we are done
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    def close(self) -> None:
        """Close the listener and shut down every connection whose thread is still running."""
        self.listener.close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        os.close(self._wake_read)
        os.close(self._wake_write)
