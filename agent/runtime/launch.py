"""Start a container: fork the shim, which forks the init; wire them up; report the result.

Daemon                     shim (forked)                 init (forked by the shim)
  fork ───────────────────▶ setsid, pipes, attach.sock
                            [unshare/setns pid]
                            fork ───────────────────────▶ setns/unshare namespaces
  ◀──────── "pid <N>" ──────                              "ns" ──────────────────▶ daemon
  cgroup, network (on_ready)
  "go" ──────────────────────────────────────────────────▶ mounts, pivot_root, confine
  ◀──────────── EOF (exec succeeded) or "error <code> <message>" ───────── exec

Only the calling thread exists in a forked child, and the child only runs code that takes
no lock another thread could hold (no logging, no imports of new modules).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from agent.runtime import init as container_init
from agent.runtime import linux
from agent.runtime.capabilities import Applier
from agent.runtime.logfile import LogOptions
from agent.runtime.shim import Shim, ShimPaths, install_sigchld_pipe
from agent.runtime.spec import ContainerSpec

START_TIMEOUT = 60.0


class StartError(Exception):
    """The container could not start; ``code`` is the exit code Docker reports (126/127)."""

    def __init__(self, message: str, code: int = 126, errno_value: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.errno = errno_value


@dataclass(frozen=True)
class Started:
    shim_pid: int
    init_pid: int


def recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def start(
    spec: ContainerSpec,
    paths: ShimPaths,
    log_options: LogOptions,
    on_ready: Callable[[int, bool], None],
    seccomp: object | None = None,
    cgroup_dir: str | None = None,
) -> Started:
    """Fork the shim and the init; ``on_ready(init_pid, in_cgroup)`` runs once the
    namespaces exist. With ``cgroup_dir`` the init is created inside that cgroup when the
    kernel can (``in_cgroup``); otherwise ``on_ready`` must move it there."""
    caps = Applier(spec.process.capabilities, as_root=spec.process.uid == 0)
    for path in (paths.attach_socket, paths.exit_file):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask stays as it is: it is the whole process's, containers start from several
    # threads at once, and two save-and-restore pairs interleaving left it at 0177 (layers
    # extracted later then had directories no container user could enter). The socket's
    # directory, the run root, is 0700; the file itself is narrowed at once.
    listener.bind(paths.attach_socket)
    os.chmod(paths.attach_socket, 0o600)
    listener.listen(16)
    daemon_end, child_end = socket.socketpair()
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    cgroup_fd = (
        os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if cgroup_dir else -1
    )
    try:
        shim_pid = os.fork()
    except OSError:
        for fd in (status_read, status_write, cgroup_fd):
            if fd >= 0:
                os.close(fd)
        daemon_end.close()
        child_end.close()
        listener.close()
        raise
    if shim_pid == 0:
        _shim_child(
            spec,
            paths,
            log_options,
            child_end,
            status_write,
            listener,
            caps,
            seccomp,
            cgroup_fd,
        )
    if cgroup_fd >= 0:
        os.close(cgroup_fd)
    os.close(status_write)
    child_end.close()
    listener.close()
    try:
        with os.fdopen(status_read, "rb") as status:
            line = status.readline()
        if not line.startswith(b"pid "):
            raise StartError(f"the container's shim failed: {line.decode().strip()}")
        words = line.split()
        init_pid = int(words[1])
        daemon_end.settimeout(START_TIMEOUT)
        message = recv_line(daemon_end)
        if message != b"ns\n":
            raise failure_from(message)
        on_ready(init_pid, b"in-cgroup" in words)
        daemon_end.sendall(b"go\n")
        message = recv_line(daemon_end)
        if message:
            raise failure_from(message)
        return Started(shim_pid, init_pid)
    except BaseException:
        _abandon(shim_pid)
        raise
    finally:
        daemon_end.close()


def failure_from(message: bytes) -> StartError:
    text = message.decode(errors="replace").strip()
    if text.startswith("error "):
        _, code, detail = (text.split(" ", 2) + ["", ""])[:3]
        number = int(code) if code.isdigit() else 0
        if number in (container_init.EXEC_NOT_FOUND, container_init.EXEC_NOT_RUNNABLE):
            return StartError(detail, number)
        return StartError(detail, 126, number)
    return StartError("the container's init exited before it was set up")


def _abandon(shim_pid: int) -> None:
    """A start that failed half-way: the shim (and with it the init) must not linger."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(shim_pid, 9)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(shim_pid, 0)


def _shim_child(
    spec: ContainerSpec,
    paths: ShimPaths,
    log_options: LogOptions,
    control: socket.socket,
    status_write: int,
    listener: socket.socket,
    caps: Applier,
    seccomp: object | None,
    cgroup_fd: int,
) -> None:
    """The shim process. Never returns."""
    code = 0
    try:
        os.setsid()
        # The daemon's stdio (a supervisor's pipe, a terminal) must not stay open in a
        # process that outlives it.
        null = os.open("/dev/null", os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        if null > 2:
            os.close(null)
        keep = {control.fileno(), status_write, listener.fileno(), cgroup_fd}
        _close_all_but(keep)
        wakeup = install_sigchld_pipe()
        process = spec.process
        tty_pair = socket.socketpair() if process.tty else None
        if process.tty:
            stdio = None
            outputs: dict[int, int] = {}
            stdin_keep: int | None = None
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            if process.stdin:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                stdin_keep = in_w
            else:
                in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                stdin_keep = None
            stdio = (in_r, out_w, err_w)
            outputs = {out_r: 1, err_r: 2}
        if "pid" in spec.join_namespaces:
            fd = os.open(spec.join_namespaces["pid"], os.O_RDONLY | os.O_CLOEXEC)
            linux.setns(fd, linux.CLONE_NEWPID)
            os.close(fd)
        elif "pid" in spec.new_namespaces:
            linux.unshare(linux.CLONE_NEWPID)
        in_cgroup = False
        if cgroup_fd >= 0:
            try:
                init_pid = linux.fork_into_cgroup(cgroup_fd)
                in_cgroup = True
            except OSError:  # an older kernel: the daemon moves the init instead
                init_pid = os.fork()
            if init_pid == 0:
                os.close(cgroup_fd)
        else:
            init_pid = os.fork()
        if init_pid == 0:
            os.close(status_write)
            listener.close()
            container_init.run(
                spec, control, stdio, tty_pair[1] if tty_pair else None, caps, seccomp
            )
        control.close()
        placed = " in-cgroup" if in_cgroup else ""
        os.write(status_write, f"pid {init_pid}{placed}\n".encode())
        if cgroup_fd >= 0:
            os.close(cgroup_fd)
        os.close(status_write)
        terminal = None
        if stdio is not None:
            for fd in stdio:
                os.close(fd)
        if tty_pair is not None:
            tty_pair[1].close()
            try:
                _, fds, _, _ = socket.recv_fds(tty_pair[0], 16, 1)
            except OSError:
                fds = []
            tty_pair[0].close()
            if fds:
                terminal = fds[0]
                outputs = {terminal: 1}
                stdin_keep = terminal
        Shim(paths, log_options, init_pid, outputs, stdin_keep, terminal, listener, wakeup).serve()
    except BaseException as error:  # the daemon reads this line instead of a pid
        code = 1
        with contextlib.suppress(OSError):
            os.write(status_write, f"error {type(error).__name__}: {error}\n".encode())
    os._exit(code)


def _close_all_but(keep: set[int]) -> None:
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 16)
