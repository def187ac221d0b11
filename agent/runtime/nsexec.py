"""`docker exec`: run another process inside a running container.

The daemon forks a helper that joins the container's cgroup and namespaces (a pid
namespace only applies to children, so the helper forks once more); the grandchild takes
the same confinement as the container (capabilities, seccomp, no_new_privs, user) and execs.
The helper waits for it and exits with its status, so the daemon reaps the helper to learn
the exit code. Exec'd processes are the daemon's own: unlike a container's init they do not
outlive a daemon restart.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

from agent.runtime import init as container_init
from agent.runtime import linux
from agent.runtime.capabilities import Applier
from agent.runtime.launch import StartError, failure_from, recv_line
from agent.runtime.spec import NAMESPACES, Process

# mnt last: joining it changes what /proc/<pid>/ns resolves to for the rest
JOIN_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


@dataclass
class ExecProcess:
    pid: int  # the helper; its exit status is the command's
    stdin: int | None  # write end (or the terminal master)
    stdout: int | None  # read end (or the terminal master)
    stderr: int | None
    terminal: int | None

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return (
            os.waitstatus_to_exitcode(status)
            if not os.WIFSIGNALED(status)
            else (128 + os.WTERMSIG(status))
        )

    def close(self) -> None:
        for fd in {self.stdin, self.stdout, self.stderr, self.terminal} - {None}:
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]


def start(
    target_pid: int,
    cgroup_procs: str | None,
    process: Process,
    seccomp: object | None,
) -> ExecProcess:
    """Start ``process`` in the namespaces of ``target_pid``; raise StartError on failure."""
    caps = Applier(process.capabilities, as_root=process.uid == 0)
    ns_paths = [(kind, f"/proc/{target_pid}/ns/{kind}") for kind in JOIN_ORDER]
    own = {kind: os.stat(f"/proc/self/ns/{kind}").st_ino for kind in JOIN_ORDER}
    joins = [(k, p) for k, p in ns_paths if os.stat(p).st_ino != own[k]]
    daemon_end, child_end = socket.socketpair()
    if process.tty:
        stdio = None
        parent_fds: list[int] = []
    else:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if process.stdin:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
        else:
            in_r, in_w = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), -1
        stdio = (in_r, out_w, err_w)
        parent_fds = [out_r, err_r] + ([in_w] if in_w >= 0 else [])
    pid = os.fork()
    if pid == 0:
        daemon_end.close()
        for fd in parent_fds:
            os.close(fd)
        container_init.guarded(
            child_end,
            lambda: _helper(joins, cgroup_procs, process, child_end, stdio, caps, seccomp),
        )
    child_end.close()
    if stdio is not None:
        for fd in stdio:
            os.close(fd)
    terminal = None
    try:
        daemon_end.settimeout(30)
        if process.tty:
            message, fds, _, _ = socket.recv_fds(daemon_end, 64, 1)
            if not fds:
                raise failure_from(message + recv_line(daemon_end))
            terminal = fds[0]
        message = recv_line(daemon_end)
        if message:
            raise failure_from(message)
    except (StartError, OSError):
        if terminal is not None:
            os.close(terminal)
        for fd in parent_fds:
            os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise
    finally:
        daemon_end.close()
    if terminal is not None:
        return ExecProcess(pid, terminal, terminal, None, terminal)
    return ExecProcess(
        pid, parent_fds[2] if process.stdin else None, parent_fds[0], parent_fds[1], None
    )


def _helper(
    joins: list[tuple[str, str]],
    cgroup_procs: str | None,
    process: Process,
    control: socket.socket,
    stdio: tuple[int, int, int] | None,
    caps: Applier,
    seccomp: object | None,
) -> None:
    container_init.reset_signals()
    if cgroup_procs:
        with open(cgroup_procs, "w") as handle:
            handle.write(str(os.getpid()))
    fds = [(kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)) for kind, path in joins]
    for kind, fd in fds:
        linux.setns(fd, NAMESPACES[kind])
        os.close(fd)
    terminal = None
    if process.tty:
        master, terminal = container_init.open_terminal("", process.console_size)
        socket.send_fds(control, [b"tty"], [master])
        os.close(master)
    child = os.fork()
    if child == 0:
        os.setsid()
        if terminal is not None:
            container_init.make_controlling(terminal)
        elif stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        container_init.enter_process(process, control, caps, seccomp, terminal)
    control.close()
    if terminal is not None:
        os.close(terminal)
    if stdio is not None:
        for fd in stdio:
            os.close(fd)
    _, status = os.waitpid(child, 0)
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
