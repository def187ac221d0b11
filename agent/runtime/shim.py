"""The per-container monitor: parent of the container's init, owner of its I/O.

The daemon forks one shim per started container (no new interpreter: the fork is a few
milliseconds). The shim forks the container's init into the new pid namespace, then, until
the init exits, copies the container's stdout and stderr (or its terminal) into the
json-file log and to every attached client, and feeds attached clients' input to the
container's stdin. When the init exits it writes ``exit.json`` and quits. Because the shim,
not the daemon, holds the pipes and reaps the init, a daemon that dies or restarts loses
neither output nor exit codes: it finds the shim again by pid (docs/runtime.md).

Attach protocol on ``attach.sock`` (a 0600 unix socket in the container's run directory):
the client sends one JSON line, either ``{"stdin": bool, "stdout": bool, "stderr": bool}``
followed by raw input bytes (EOF closes the container's stdin), or ``{"resize": [rows,
cols]}``. The shim sends frames ``<stream:1><length:4 big-endian><payload>`` (stream 1
stdout, 2 stderr; a terminal's output is stream 1) and closes the connection when the
container's output ends.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass

from agent.runtime.linux import set_window_size
from agent.runtime.logfile import JsonLogWriter, LogOptions, timestamp

DRAIN_AFTER_EXIT = 1.0  # seconds to keep copying output once the init has exited
READ_SIZE = 65536
HEADER_TIMEOUT = 2.0  # seconds a new attach client has to send its request line


@dataclass
class ShimPaths:
    exit_file: str  # exit.json, written once the init has exited
    log_file: str  # the json-file log
    attach_socket: str  # attach.sock


@dataclass
class _Client:
    sock: socket.socket
    header: bytes = b""
    wants: tuple[bool, bool, bool] | None = None  # stdin, stdout, stderr once known
    registered: bool = False  # in the selector (reading its input)


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BI", stream, len(payload)) + payload


class Shim:
    """Runs in the forked shim process; :meth:`serve` never returns."""

    def __init__(
        self,
        paths: ShimPaths,
        log_options: LogOptions,
        init_pid: int,
        outputs: dict[int, int],  # fd -> stream number (1 stdout, 2 stderr)
        stdin_fd: int | None,  # write end of the container's stdin, or a terminal master
        terminal: int | None,
        listener: socket.socket,
        wakeup: int,  # read end of the SIGCHLD self-pipe
    ) -> None:
        self.paths = paths
        self.log = JsonLogWriter(paths.log_file, log_options)
        self.init_pid = init_pid
        self.outputs = outputs
        self.stdin_fd = stdin_fd
        self.terminal = terminal
        self.listener = listener
        self.wakeup = wakeup
        self.clients: dict[int, _Client] = {}
        self.selector = selectors.DefaultSelector()
        self.status: int | None = None

    def serve(self) -> None:
        sel = self.selector
        for fd in self.outputs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, "output")
        sel.register(self.listener, selectors.EVENT_READ, "listen")
        sel.register(self.wakeup, selectors.EVENT_READ, "signal")
        deadline: float | None = None
        self._reap()
        while self.outputs:
            if self.status is not None and deadline is None:
                deadline = time.monotonic() + DRAIN_AFTER_EXIT
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if deadline is not None and timeout == 0:
                break
            for key, _ in sel.select(timeout):
                kind = key.data
                if kind == "output":
                    self._copy_output(int(key.fd))
                elif kind == "listen":
                    self._accept()
                elif kind == "signal":
                    os.read(self.wakeup, 512)
                    self._reap()
                else:
                    self._client_readable(int(key.fd))
        while self.status is None:
            self._reap(block=True)
        self.log.close()
        self._write_exit()
        for client in list(self.clients.values()):
            client.sock.close()

    # --- output -------------------------------------------------------------------------
    def _copy_output(self, fd: int) -> None:
        self._accept()  # clients that connected before the output began get all of it
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno != errno.EIO:  # EIO: a terminal whose last holder closed it
                raise
            data = b""
        if not data:
            self.selector.unregister(fd)
            del self.outputs[fd]
            if fd != self.terminal:
                os.close(fd)
            return
        stream = self.outputs[fd]
        self.log.write("stderr" if stream == 2 else "stdout", data)
        message = frame(stream, data)
        for client in list(self.clients.values()):
            if client.wants and client.wants[stream]:
                self._send(client, message)

    def _send(self, client: _Client, data: bytes) -> None:
        try:
            client.sock.sendall(data)
        except OSError:
            self._drop(client)

    # --- clients ------------------------------------------------------------------------
    def _accept(self) -> None:
        """Take every pending connection and read its request line at once."""
        self.listener.setblocking(False)
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.settimeout(HEADER_TIMEOUT)
            client = _Client(sock)
            try:
                while b"\n" not in client.header and len(client.header) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    client.header += chunk
            except OSError:
                sock.close()
                continue
            line, _, rest = client.header.partition(b"\n")
            self.clients[sock.fileno()] = client
            if not self._handle_header(client, line):
                continue
            sock.settimeout(None)
            sock.setblocking(True)
            self.selector.register(sock, selectors.EVENT_READ, "client")
            client.registered = True
            if rest:
                self._input(client, rest)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        self.clients.pop(fd, None)
        if client.registered:
            self.selector.unregister(client.sock)
            client.registered = False
        client.sock.close()

    def _client_readable(self, fd: int) -> None:
        client = self.clients[fd]
        try:
            data = client.sock.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:  # the client closed its input
            if client.wants and client.wants[0]:
                self._close_stdin()
            self.selector.unregister(client.sock)  # keep sending output until it ends
            client.registered = False
            return
        self._input(client, data)

    def _input(self, client: _Client, data: bytes) -> None:
        if client.wants and client.wants[0] and self.stdin_fd is not None:
            try:
                os.write(self.stdin_fd, data)
            except OSError:
                self._close_stdin()

    def _handle_header(self, client: _Client, line: bytes) -> bool:
        try:
            request = json.loads(line)
        except ValueError:
            self._drop(client)
            return False
        if "resize" in request:
            rows, cols = (int(v) for v in request["resize"])
            if self.terminal is not None:
                set_window_size(self.terminal, rows, cols)
            self._drop(client)
            return False
        client.wants = (
            bool(request.get("stdin")),
            bool(request.get("stdout")),
            bool(request.get("stderr")),
        )
        return True

    def _close_stdin(self) -> None:
        if self.stdin_fd is not None and self.stdin_fd != self.terminal:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    # --- exit ---------------------------------------------------------------------------
    def _reap(self, block: bool = False) -> None:
        if self.status is not None:
            return
        try:
            pid, status = os.waitpid(self.init_pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.status = 255 << 8
            return
        if pid == self.init_pid:
            self.status = status

    def _write_exit(self) -> None:
        status = self.status or 0
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            code = 128 + signum
        else:
            signum = 0
            code = os.WEXITSTATUS(status)
        record = {"ExitCode": code, "Signal": signum, "FinishedAt": timestamp()}
        temporary = self.paths.exit_file + ".tmp"
        with open(temporary, "w") as handle:
            json.dump(record, handle)
        os.replace(temporary, self.paths.exit_file)


def install_sigchld_pipe() -> int:
    """A self-pipe the SIGCHLD handler writes to, so select() wakes when the init exits."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    return read_end
