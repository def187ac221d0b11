"""Serve a host unix socket whose connections are each relayed over their own upstream stream.

The host agent listens on ``<machine dir>/engine.sock`` and, per accepted client, opens one
SSH channel to the guest engine socket. Half-close is relayed in both directions: Docker's
attach and exec endpoints hijack the HTTP connection, and the CLI shuts its write side when
stdin ends while still reading output (and vice versa).

Concurrency model: one thread per direction per connection. The upstream is a paramiko
Channel, whose ``send`` blocks on the SSH window and whose readiness is not a plain socket
event; blocking reads and writes in two threads keep the flow control and the half-close
logic obvious, and Docker clients hold tens of connections, not thousands.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from vmctl.errors import VmctlError

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
# umask is per process: serialise our own binds (other threads creating files in that
# window would get a 0600-ish mode; the agent creates no files concurrently with a bind).
_umask_lock = threading.Lock()


class Upstream(Protocol):
    """The part of ``paramiko.Channel`` the relay uses."""

    def recv(self, nbytes: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


class UnixSocketForwarder:
    """Accept on ``listen_path`` (mode 0600) and relay each client to ``open_upstream()``."""

    def __init__(self, listen_path: Path, open_upstream: Callable[[], Upstream]) -> None:
        self.listen_path = Path(listen_path)
        self._open_upstream = open_upstream
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._relays: set[_Relay] = set()
        self._relays_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError("forwarder already started")
        self._remove_stale()
        self._listener = self._bind()
        st = os.stat(self.listen_path)
        self._identity = (st.st_dev, st.st_ino)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"forward-accept:{self.listen_path.name}", daemon=True
        )
        self._accept_thread.start()
        log.info("listening on %s", self.listen_path)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut every active relay, and remove the socket file if still ours."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._relays_lock:
            relays = list(self._relays)
        for relay in relays:
            relay.abort()
        for relay in relays:
            relay.join(timeout)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._unlink_if_ours()
        self._wake_r.close()
        self._wake_w.close()
        log.info("stopped listening on %s", self.listen_path)

    def active_connections(self) -> int:
        with self._relays_lock:
            return len(self._relays)

    def __enter__(self) -> UnixSocketForwarder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- binding -------------------------------------------------------------------------

    def _remove_stale(self) -> None:
        path = self.listen_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise VmctlError(
                f"{path} exists and is not a socket",
                hint="move that file away; vmctl will not delete it",
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale socket %s", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except OSError as exc:  # a timeout (full backlog) or EACCES: alive, or not ours
            raise _in_use(path) from exc
        finally:
            probe.close()
        raise _in_use(path)

    def _bind(self) -> socket.socket:
        path = str(self.listen_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _umask_lock:
                # The file is created by bind(): the umask is the only way to give it 0600
                # from its first instant, before a chmod could.
                old = os.umask(0o177)
                try:
                    sock.bind(path)
                finally:
                    os.umask(old)
            os.chmod(path, 0o600)  # defence in depth; verified below
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                raise VmctlError(f"cannot restrict {path} to its owner (mode {mode:o})")
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise _in_use(self.listen_path) from exc
            raise VmctlError(
                f"cannot listen on {path}: {exc.strerror or exc}",
                hint="unix socket paths are limited to about 100 bytes; "
                "set VMCTL_HOME to a shorter directory"
                if len(os.fsencode(path)) > 100
                else "",
            ) from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def _unlink_if_ours(self) -> None:
        # Another agent may have replaced the file after we stopped caring; leave theirs.
        try:
            st = os.lstat(self.listen_path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen_path)

    # -- accepting -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._stopping.is_set():
                        return
                    self._accept_ready()

    def _accept_ready(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: log, and do not spin on it
                log.warning("accept on %s failed: %s", self.listen_path, exc)
                self._stopping.wait(0.2)
                return
            client.setblocking(True)
            relay = _Relay(client, self._open_upstream, self._forget)
            with self._relays_lock:
                if self._stopping.is_set():
                    client.close()
                    return
                self._relays.add(relay)
            relay.start()

    def _forget(self, relay: _Relay) -> None:
        with self._relays_lock:
            self._relays.discard(relay)


class _Relay:
    """One client connection and its upstream; two pumping threads, one per direction."""

    def __init__(
        self,
        client: socket.socket,
        open_upstream: Callable[[], Upstream],
        on_done: Callable[[_Relay], None],
    ) -> None:
        self.client = client
        self.upstream: Upstream | None = None
        self._open_upstream = open_upstream
        self._on_done = on_done
        self._lock = threading.Lock()
        self._aborted = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # Opening the upstream is a network round trip: do it off the accept thread.
        t = threading.Thread(target=self._run, name="forward-up", daemon=True)
        self._threads.append(t)
        t.start()

    def join(self, timeout: float) -> None:
        for t in list(self._threads):
            t.join(timeout)

    def abort(self) -> None:
        """Cut both directions now; blocked reads in the pump threads return."""
        with self._lock:
            self._aborted = True
            upstream = self.upstream
        # shutdown, not just close: close() alone does not wake a recv() blocked in
        # another thread on Linux.
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)
        if upstream is not None:
            with contextlib.suppress(Exception):
                upstream.close()

    def _run(self) -> None:
        try:
            try:
                upstream = self._open_upstream()
            except Exception as exc:
                detail = f": {exc.detail}" if isinstance(exc, VmctlError) and exc.detail else ""
                log.warning("dropping client: cannot open upstream: %s%s", exc, detail)
                return
            with self._lock:
                self.upstream = upstream
                aborted = self._aborted
            if aborted:
                return
            down = threading.Thread(target=self._downstream, name="forward-down", daemon=True)
            self._threads.append(down)
            down.start()
            self._upstream_pump(upstream)
            down.join()
        finally:
            self._close()
            self._on_done(self)

    def _upstream_pump(self, upstream: Upstream) -> None:
        """client -> upstream; the client's EOF becomes the channel's EOF."""
        try:
            while True:
                data = self.client.recv(_CHUNK)
                if not data:
                    upstream.shutdown_write()
                    return
                upstream.sendall(data)
        except Exception as exc:
            self._fail("client->upstream", exc)

    def _downstream(self) -> None:
        """upstream -> client; the channel's EOF becomes the client's EOF."""
        upstream = self.upstream
        assert upstream is not None
        try:
            while True:
                data = upstream.recv(_CHUNK)
                if not data:
                    self.client.shutdown(socket.SHUT_WR)
                    return
                self.client.sendall(data)
        except Exception as exc:
            self._fail("upstream->client", exc)

    def _fail(self, direction: str, exc: Exception) -> None:
        # After an abort or a reset by one side, the other direction cannot finish either.
        if not self._aborted:
            log.debug("relay %s ended: %s", direction, exc)
        self.abort()

    def _close(self) -> None:
        with self._lock:
            upstream = self.upstream
        if upstream is not None:
            with contextlib.suppress(Exception):
                upstream.close()
        self.client.close()


def _in_use(path: Path) -> VmctlError:
    return VmctlError(
        f"{path} is in use by another process",
        hint="another vmctl host agent may be serving this machine; stop it (`vmctl machine stop`) "
        "or remove the socket if you are sure nothing uses it",
    )
