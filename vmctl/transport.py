"""One persistent SSH connection from the host agent to the guest, with the host key pinned.

The host agent keeps a single ``SSHTransport`` per machine and opens one channel per client
connection (``open_unix_channel``), so no connection pays for an SSH handshake. Trust is never
established on first use: the guest's host key was generated on the host, and the key the
server presents must equal it byte for byte before we even offer our client key.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmctl.errors import VmctlError
from vmctl.import_paramiko import IncompatiblePeer, paramiko
from vmctl.keys import parse_public_line, read_public_line
from vmctl.paths import MachineFiles

log = logging.getLogger(__name__)

STREAMLOCAL_KIND = "direct-streamlocal@openssh.com"
_MSG_CHANNEL_OPEN = 90  # RFC 4254 section 5.1
FAST_RETRIES_FOR = 3.0  # seconds of connection attempts every 50 ms before backing off

# paramiko logs expected boot-time failures (EOF while reading the banner) at ERROR with a
# traceback; attempts log to a child logger that demotes them so the agent log stays readable.
_PARAMIKO_LOG = f"{__name__}.paramiko"
_ATTEMPT_LOG = f"{_PARAMIKO_LOG}.connect"


class _DemoteToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # The level check ran before the demotion: drop the record unless DEBUG is wanted.
        return logging.getLogger(_ATTEMPT_LOG).isEnabledFor(logging.DEBUG)


logging.getLogger(_ATTEMPT_LOG).addFilter(_DemoteToDebug())


class HostKeyMismatchError(VmctlError):
    """The server's host key is not the pinned one; never retried, never learned."""


class _NotReady(Exception):
    """The server is not (yet) answering SSH: worth retrying while the guest boots."""


class _StreamlocalTransport(paramiko.Transport):
    """A Transport that can open ``direct-streamlocal@openssh.com`` channels.

    ``open_channel`` writes the kind-specific fields only for the kinds paramiko knows. Rather
    than re-implementing ``open_channel`` (which would copy its channel bookkeeping: ids,
    events, window setup, all private and changed across releases), we let it build and
    register the channel as usual and append the streamlocal fields to its CHANNEL_OPEN
    message on the way out. ``open_channel`` sends that message from the calling thread via
    ``_send_user_message``, so a thread-local carries the socket path from
    ``open_streamlocal`` to that hook; concurrent opens from other threads cannot see it.
    The hook checks the message really is our CHANNEL_OPEN before touching it, and
    ``open_streamlocal`` verifies the fields were attached, so a future paramiko that stops
    routing through the hook fails loudly instead of sending a malformed open.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._pending = threading.local()

    def open_streamlocal(self, socket_path: str, timeout: float | None) -> paramiko.Channel:
        self._pending.path = socket_path
        self._pending.attached = False
        try:
            chan = self.open_channel(STREAMLOCAL_KIND, timeout=timeout)
        finally:
            attached = self._pending.attached
            self._pending.path = None
        if not attached:  # pragma: no cover - only if paramiko's internals change
            chan.close()
            raise RuntimeError("paramiko did not route CHANNEL_OPEN through _send_user_message")
        return chan

    def _send_user_message(self, data: paramiko.Message) -> None:
        path = getattr(self._pending, "path", None)
        if path is not None and _is_streamlocal_open(data):
            # RFC 4254-style fields after the standard ones (OpenSSH PROTOCOL, section 2.4):
            # string socket path, string reserved, uint32 reserved.
            data.add_string(path)
            data.add_string("")
            data.add_int(0)
            self._pending.path = None
            self._pending.attached = True
        super()._send_user_message(data)  # type: ignore[misc]


def _is_streamlocal_open(m: paramiko.Message) -> bool:
    probe = paramiko.Message(m.asbytes())  # a copy: reading must not move m's write position
    try:
        return probe.get_byte() == bytes([_MSG_CHANNEL_OPEN]) and probe.get_text() == (
            STREAMLOCAL_KIND
        )
    except Exception:
        return False


class SSHTransport:
    """A pinned, key-authenticated SSH connection to ``host:port`` (the VM's sshd forward).

    Thread-safe: any number of threads may open channels concurrently; ``connect`` and
    ``close`` are serialised. After the connection drops, ``connect`` may be called again.
    """

    def __init__(
        self,
        port: int,
        client_key: Path,
        host_public_line: str,
        *,
        host: str = "127.0.0.1",
        user: str = "root",
        keepalive: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.keepalive = keepalive
        self._client_key_path = Path(client_key)
        try:
            self._host_key_type, self._host_key_blob = parse_public_line(host_public_line)
        except ValueError as exc:
            raise VmctlError(
                "the machine's pinned host key is malformed",
                hint="recreate the machine to generate its keys again",
                detail=str(exc),
            ) from exc
        self._client_key: paramiko.PKey | None = None
        self._transport: _StreamlocalTransport | None = None
        self._lock = threading.Lock()

    # -- connecting ----------------------------------------------------------------------

    def connect(self, timeout: float = 15.0) -> None:
        """Connect once; any failure, including "not reachable", is a VmctlError."""
        try:
            self._attempt(timeout)
        except _NotReady as exc:
            raise VmctlError(
                f"cannot reach the VM's SSH server at {self.host}:{self.port}",
                hint="check that the machine is running (`vmctl machine status`)",
                detail=str(exc.__cause__ or exc),
            ) from exc

    def wait_until_connected(
        self,
        deadline: float,
        on_attempt: Callable[[int, BaseException | None], None] | None = None,
    ) -> None:
        """Retry until connected or ``deadline`` (a ``time.monotonic()`` value) passes.

        Only "not answering yet" failures are retried (refused, reset, EOF or silence during
        the banner: QEMU's port forward accepts before the guest's sshd listens). A host key
        mismatch or a rejected key raise at once: retrying cannot fix them.
        ``on_attempt(n, last_error)`` is called before each attempt, for progress display.
        """
        attempt = 0
        last: BaseException | None = None
        # Every 50 ms for the first seconds: a refused attempt costs a few ms, and at boot
        # the host agent connects as soon as ssh is reachable, so sshd listens moments later
        # (~0.5 s under tcg), and a grown delay would be waited out on top of that.
        delay = 0.05
        fast_until = time.monotonic() + FAST_RETRIES_FOR
        # A short banner wait first: a connection QEMU accepted while the guest was still
        # booting may hang rather than fail, and a fresh one is cheap. It grows after each
        # wait that ran out, so a slow (tcg) sshd still gets the time it needs.
        banner_wait = 3.0
        while True:
            attempt += 1
            if on_attempt is not None:
                on_attempt(attempt, last)
            timeout = max(1.0, min(deadline - time.monotonic(), 10.0))
            started = time.monotonic()
            try:
                self._attempt(timeout, banner_timeout=min(banner_wait, timeout))
                return
            except _NotReady as exc:
                last = exc.__cause__ or exc
                log.debug("SSH attempt %d to %s:%d: %s", attempt, self.host, self.port, last)
                if time.monotonic() - started >= banner_wait:
                    banner_wait = min(banner_wait * 2, 10.0)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VmctlError(
                    f"the VM's SSH server at {self.host}:{self.port} did not come up in time",
                    hint="look at the console log (`vmctl machine logs --console`) for boot errors",
                    detail=f"{attempt} attempts; last error: {last}",
                )
            time.sleep(min(delay, remaining))
            if time.monotonic() > fast_until:
                delay = min(delay * 1.5, 1.0)

    def _attempt(self, timeout: float, banner_timeout: float | None = None) -> None:
        with self._lock:
            self._close_locked()
            key = self._load_client_key()
            t = self._handshake(timeout, banner_timeout or timeout)
            try:
                self._check_host_key(t)
                self._authenticate(t, key)
            except BaseException:
                t.close()
                raise
            t.set_log_channel(_PARAMIKO_LOG)
            t.set_keepalive(max(1.0, self.keepalive))
            self._transport = t
            log.info("SSH connected to %s:%d", self.host, self.port)

    def _handshake(self, timeout: float, banner_timeout: float) -> _StreamlocalTransport:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:  # refused while the VM starts, or a timeout
            raise _NotReady(str(exc)) from exc
        t = _StreamlocalTransport(sock)
        t.set_log_channel(_ATTEMPT_LOG)
        t.banner_timeout = banner_timeout
        # Ask only for the pinned key's type, so a server holding several host keys
        # presents the one we can compare.
        t.get_security_options().key_types = [self._host_key_type]
        try:
            t.start_client(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            t.close()
            if isinstance(exc, IncompatiblePeer):  # e.g. it has no key of the pinned type
                raise VmctlError(
                    f"the SSH server at {self.host}:{self.port} cannot talk to vmctl",
                    hint="is another service using this port?",
                    detail=str(exc),
                ) from exc
            raise _NotReady(str(exc) or type(exc).__name__) from exc
        return t

    def _check_host_key(self, t: paramiko.Transport) -> None:
        key = t.get_remote_server_key()
        if key.get_name() != self._host_key_type or key.asbytes() != self._host_key_blob:
            raise HostKeyMismatchError(
                f"the SSH host key at {self.host}:{self.port} did not match the machine's "
                "pinned key (possible tampering, or a different VM on that port)",
                hint="check that this port is the machine's own forward (`vmctl machine status`); "
                "if it is, the VM's disk or image may have been altered: recreate the machine",
                detail=f"got {key.get_name()} {key.get_base64()}",
            )

    def _authenticate(self, t: paramiko.Transport, key: paramiko.PKey) -> None:
        # Only our one key: no password, no agent, no ~/.ssh, no keyboard-interactive.
        try:
            remaining = t.auth_publickey(self.user, key)
        except paramiko.BadAuthenticationType as exc:
            raise VmctlError(
                f"the VM's SSH server does not accept key authentication for {self.user}",
                hint="the guest's sshd configuration is wrong; rebuild the guest image",
                detail=f"allowed methods: {', '.join(exc.allowed_types)}",
            ) from exc
        except paramiko.AuthenticationException as exc:
            raise VmctlError(
                f"the VM rejected the machine's SSH key for {self.user}",
                hint="restart the machine (`vmctl machine restart`) "
                "so the guest receives the key again",
                detail=str(exc),
            ) from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _NotReady(f"connection lost during authentication: {exc}") from exc
        if not t.is_authenticated():  # the server wants a second factor we will not give
            raise VmctlError(
                f"the VM's SSH server wants more than a key for {self.user}",
                hint="the guest's sshd configuration is wrong; rebuild the guest image",
                detail=f"further methods: {', '.join(remaining)}",
            )

    def _load_client_key(self) -> paramiko.PKey:
        if self._client_key is None:
            try:
                self._client_key = paramiko.PKey.from_path(self._client_key_path)
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise VmctlError(
                    f"cannot load the SSH client key {self._client_key_path}",
                    hint="recreate the machine to generate its keys again",
                    detail=str(exc),
                ) from exc
        return self._client_key

    # -- using the connection ------------------------------------------------------------

    def is_active(self) -> bool:
        t = self._transport
        return t is not None and t.is_active() and t.is_authenticated()

    def open_unix_channel(self, path: str, timeout: float = 10.0) -> paramiko.Channel:
        """A channel connected to the unix socket ``path`` inside the guest."""
        t = self._active()
        try:
            return t.open_streamlocal(path, timeout)
        except paramiko.ChannelException as exc:
            raise VmctlError(
                f"the VM refused a connection to {path}",
                hint="the engine inside the VM may be down; see `vmctl machine logs --agent`",
                detail=f"{exc.text or 'open failed'} (code {exc.code})",
            ) from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if t.is_active():
                # The open failed but the connection lives: a refusal whose reason another
                # thread's failing open consumed (paramiko keeps one saved exception), or
                # a timeout.
                raise VmctlError(
                    f"the VM did not accept a connection to {path}",
                    hint="the engine inside the VM may be down or overloaded; "
                    "see `vmctl machine logs --agent`",
                    detail=str(exc),
                ) from exc
            raise VmctlError(
                f"could not open a channel to {path} in the VM",
                hint="the SSH connection to the VM may have dropped; see `vmctl machine status`",
                detail=str(exc),
            ) from exc

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
        """Run ``command`` in the guest; return (exit code, stdout, stderr).

        The exit code is -1 if the server sent none (e.g. the command died by a signal).
        """
        t = self._active()
        deadline = time.monotonic() + timeout
        try:
            chan = t.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise VmctlError(
                "could not open an SSH session to the VM",
                hint="see `vmctl machine status`",
                detail=str(exc),
            ) from exc
        try:
            chan.exec_command(command)
            out, err = _drain(chan, deadline, command, timeout)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise _timed_out(command, timeout)
            return chan.recv_exit_status(), out, err
        except paramiko.SSHException as exc:
            raise VmctlError(
                f"running {command!r} in the VM failed",
                hint="see `vmctl machine logs --agent`",
                detail=str(exc),
            ) from exc
        finally:
            chan.close()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _active(self) -> _StreamlocalTransport:
        t = self._transport
        if t is None or not t.is_active():
            raise VmctlError(
                "not connected to the VM over SSH",
                hint="check that the machine is running (`vmctl machine status`)",
            )
        return t

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def idle_channel_usable(chan: paramiko.Channel) -> bool:
    """Whether an idle channel to the engine can still carry a request: the engine never
    speaks first, so an end seen or data waiting means the engine behind it has gone."""
    transport = chan.get_transport()
    if transport is None or not transport.is_active():
        return False
    return not (chan.closed or chan.eof_received or chan.recv_ready())


def _drain(
    chan: paramiko.Channel, deadline: float, command: str, timeout: float
) -> tuple[bytes, bytes]:
    """Read stdout and stderr together (either may fill its window first) until EOF."""
    out, err = bytearray(), bytearray()
    while True:
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        # EOF comes after all data on both streams; closed covers a server that skips EOF.
        if (chan.eof_received or chan.closed) and not (
            chan.recv_ready() or chan.recv_stderr_ready()
        ):
            return bytes(out), bytes(err)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(command, timeout)
        # The channel's fileno becomes readable when either stream has data or on EOF.
        select.select([chan], [], [], min(remaining, 1.0))


def _timed_out(command: str, timeout: float) -> VmctlError:
    return VmctlError(
        f"{command!r} in the VM did not finish within {timeout:g} s",
        hint="the VM may be overloaded or the command hung",
    )


def machine_transport(files: MachineFiles, port: int) -> SSHTransport:
    """The transport to a machine's guest: its client key, its pinned host key."""
    return SSHTransport(
        port=port,
        client_key=files.client_key,
        host_public_line=read_public_line(files.host_key.with_suffix(".pub")),
    )
