"""The container's first process between fork and exec, in runc's order.

Runs in a child forked by the shim, single-threaded. It joins or creates the namespaces,
tells the daemon they exist (so it can put the process in its cgroup and plug in the
network), waits for the go-ahead, builds the mount tree, pivots into the root, confines
itself (masked and read-only paths, hostname, rlimits, no_new_privs, seccomp, capabilities,
user) and execs the command. A failure is written to the control socket as one line
("error <errno> <message>") and the child exits; a successful exec closes the socket
(close-on-exec), which is how the daemon learns the command runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import signal
import socket
import stat
import struct
import termios
from collections.abc import Callable
from typing import NoReturn

from agent.runtime import linux
from agent.runtime.capabilities import Applier
from agent.runtime.spec import DEV_LINKS, DEVICES, NAMESPACES, ContainerSpec, Mount, Process

PROC_FLAGS = linux.MS_NOSUID | linux.MS_NOEXEC | linux.MS_NODEV
EXEC_NOT_FOUND = 127
EXEC_NOT_RUNNABLE = 126
_TIOCSPTLCK = 0x40045431  # unlock a pty master's slave
_TIOCGPTN = 0x80045430  # the slave's number
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class InitFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def reset_signals() -> None:
    """Python ignores SIGPIPE and may catch others; exec keeps "ignored", so undo it all."""
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            continue  # untouched since the interpreter started: already the default
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _join_namespaces(spec: ContainerSpec) -> None:
    for kind, path in spec.join_namespaces.items():
        if kind == "pid":
            continue  # joined by the shim before the fork: only children enter a pid ns
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(fd, NAMESPACES[kind])
        finally:
            os.close(fd)


def _loopback_up() -> None:
    """A new network namespace starts with `lo` down; every container expects it up."""

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _target(root: str, path: str) -> str:
    return root + path if path != "/" else root


def _mknod_devices(dev: str, privileged: bool) -> None:
    old = os.umask(0)
    try:
        for name, major, minor, mode in DEVICES:
            os.mknod(f"{dev}/{name}", mode | 0o020000, os.makedev(major, minor))
        for name, target in DEV_LINKS:
            os.symlink(target, f"{dev}/{name}")
        if privileged:
            _copy_host_devices(dev)
    finally:
        os.umask(old)
    for name in ("pts", "shm", "mqueue"):
        os.mkdir(f"{dev}/{name}", 0o755)


def _copy_host_devices(dev: str) -> None:
    """--privileged: every device node the host's /dev has at its top level."""

    for entry in os.scandir("/dev"):
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            continue
        path = f"{dev}/{entry.name}"
        if os.path.lexists(path):
            continue
        os.mknod(path, info.st_mode, info.st_rdev)
        os.chown(path, info.st_uid, info.st_gid)


def _mount_defaults(spec: ContainerSpec, new_net: bool) -> None:
    root = spec.rootfs
    ro = 0 if spec.privileged else linux.MS_RDONLY
    linux.mount("proc", root + "/proc", "proc", PROC_FLAGS)
    dev = root + "/dev"
    linux.mount(
        "tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME, "mode=755,size=65536k"
    )
    _mknod_devices(dev, spec.privileged)
    linux.mount(
        "devpts",
        dev + "/pts",
        "devpts",
        linux.MS_NOSUID | linux.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    if spec.shm_source:
        linux.mount(spec.shm_source, dev + "/shm", None, linux.MS_BIND)
    else:
        linux.mount("shm", dev + "/shm", "tmpfs", PROC_FLAGS, f"mode=1777,size={spec.shm_size}")
    try:
        linux.mount("mqueue", dev + "/mqueue", "mqueue", PROC_FLAGS)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENODEV):
            raise
    sys_dir = root + "/sys"
    if new_net:
        linux.mount("sysfs", sys_dir, "sysfs", PROC_FLAGS | ro)
    else:
        # sysfs can only be mounted by the owner of the network namespace: bind the host's
        linux.mount("/sys", sys_dir, None, linux.MS_BIND | linux.MS_REC)
        if ro:
            linux.mount(
                None, sys_dir, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | PROC_FLAGS
            )
    # no cgroup2 support or no /sys/fs/cgroup: the container runs without it
    with contextlib.suppress(OSError):
        linux.mount(
            "cgroup", sys_dir + "/fs/cgroup", "cgroup2", PROC_FLAGS | linux.MS_RELATIME | ro
        )


def _mount_one(root: str, mount: Mount) -> None:
    target = _target(root, mount.target)
    if mount.fstype is None:
        flags = linux.MS_BIND | (linux.MS_REC if mount.recursive else 0)
        linux.mount(mount.source, target, None, flags)
        extra = mount.flags | (linux.MS_RDONLY if mount.readonly else 0)
        if extra:
            linux.mount(None, target, None, linux.MS_BIND | linux.MS_REMOUNT | extra)
    else:
        flags = mount.flags | (linux.MS_RDONLY if mount.readonly else 0)
        linux.mount(mount.source, target, mount.fstype, flags, mount.data)
    if mount.propagation:
        linux.mount(None, target, None, mount.propagation)


def open_terminal(root: str, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """A new terminal from the devpts at ``root``/dev/pts: (master, slave), of ``size``
    (rows, cols) when known, so the first prompt already fits the client's window."""

    master = os.open(root + "/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0\0\0\0"))[0]
    slave = os.open(f"{root}/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    if size is not None:
        linux.set_window_size(master, *size)
    return master, slave


def make_controlling(terminal: int) -> None:
    """The terminal becomes this (session leader) process's controlling terminal."""

    fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)


def _setup_console(root: str, tty_sock: socket.socket, size: tuple[int, int] | None) -> int:
    """Make the terminal inside the container's own devpts, hand its master to the shim."""
    master, slave = open_terminal(root, size)
    console = root + "/dev/console"
    os.close(os.open(console, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    linux.mount(os.readlink(f"/proc/self/fd/{slave}"), console, None, linux.MS_BIND)
    socket.send_fds(tty_sock, [b"tty"], [master])
    os.close(master)
    make_controlling(slave)
    return slave


def _pivot(root: str) -> None:
    os.chdir(root)
    # pivot_root(".", "."): the old root is stacked under the new one, then detached
    linux.pivot_root(".", ".")
    linux.umount(".", linux.MNT_DETACH)
    os.chdir("/")


def _readonly_path(path: str) -> None:
    try:
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
    except FileNotFoundError:
        return
    linux.mount(
        None,
        path,
        None,
        linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | PROC_FLAGS | linux.MS_REC,
    )


def _mask_path(path: str) -> None:
    try:
        linux.mount("/dev/null", path, None, linux.MS_BIND)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        pass
    except OSError as error:
        if error.errno != errno.ENOTDIR:
            raise
    else:
        return
    linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY)


def _exec(argv: list[str], env: list[str]) -> NoReturn:
    environment = {}
    for item in env:
        key, _, value = item.partition("=")
        environment[key] = value
    try:
        os.execvpe(argv[0], argv, environment)
    except FileNotFoundError:
        where = "in $PATH" if "/" not in argv[0] else ""
        what = "executable file not found" if where else "no such file or directory"
        raise InitFailure(EXEC_NOT_FOUND, f'exec: "{argv[0]}": {what} {where}'.rstrip()) from None
    except PermissionError:
        raise InitFailure(EXEC_NOT_RUNNABLE, f'exec: "{argv[0]}": permission denied') from None
    except OSError as error:
        raise InitFailure(EXEC_NOT_RUNNABLE, f'exec: "{argv[0]}": {error.strerror}') from None


def run(
    spec: ContainerSpec,
    control: socket.socket,
    stdio: tuple[int, int, int] | None,
    tty_sock: socket.socket | None,
    caps: Applier,
    seccomp_install: object | None,
) -> NoReturn:
    """Become the container. Never returns; the exit status reports an early failure."""
    guarded(control, lambda: _become(spec, control, stdio, tty_sock, caps, seccomp_install))


def guarded(control: socket.socket, body: Callable[[], None]) -> NoReturn:
    """Run a child's body; any failure becomes an "error" line for the daemon and an exit."""
    code = EXEC_NOT_RUNNABLE
    try:
        body()
    except InitFailure as failure:
        code = failure.code
        _report(control, failure.code, str(failure))
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        _report(control, error.errno or 0, f"{error.strerror or error}{where}")
    except BaseException as error:  # anything else must still reach the daemon
        _report(control, 0, f"{type(error).__name__}: {error}")
    os._exit(code)


def _report(control: socket.socket, code: int, message: str) -> None:
    with contextlib.suppress(OSError):
        control.sendall(f"error {code} {message}\n".encode())


def _become(
    spec: ContainerSpec,
    control: socket.socket,
    stdio: tuple[int, int, int] | None,
    tty_sock: socket.socket | None,
    caps: Applier,
    seccomp_install: object | None,
) -> None:
    reset_signals()
    os.setsid()
    if stdio is not None:
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
    _join_namespaces(spec)
    flags = spec.clone_flags() & ~linux.CLONE_NEWCGROUP
    if flags:
        linux.unshare(flags)
    if flags & linux.CLONE_NEWNET:
        _loopback_up()
    control.sendall(b"ns\n")
    if control.recv(16) != b"go\n":
        os._exit(EXEC_NOT_RUNNABLE)  # the daemon gave up on this start
    if "cgroup" in spec.new_namespaces:
        linux.unshare(linux.CLONE_NEWCGROUP)  # now that we are in our cgroup

    root = spec.rootfs
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    linux.mount(root, root, None, linux.MS_BIND | linux.MS_REC)
    _mount_defaults(spec, new_net="net" in spec.new_namespaces)
    for mount in spec.mounts:
        _mount_one(root, mount)
    terminal = (
        _setup_console(root, tty_sock, spec.process.console_size) if tty_sock is not None else None
    )
    _pivot(root)
    if not spec.privileged:
        for path in spec.readonly_paths:
            _readonly_path(path)
        for path in spec.masked_paths:
            _mask_path(path)
    if spec.readonly_rootfs:
        linux.mount(None, "/", None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)
    if "uts" in spec.new_namespaces and spec.hostname:
        linux.sethostname(spec.hostname)
    enter_process(spec.process, control, caps, seccomp_install, terminal)


def enter_process(
    process: Process,
    control: socket.socket,
    caps: Applier,
    seccomp_install: object | None,
    terminal: int | None = None,
) -> NoReturn:
    """The tail shared by a container's init and `exec`: limits, terminal, working
    directory, no_new_privs, capabilities, seccomp and user, in runc's order, then exec."""
    for which, soft, hard in process.rlimits:
        resource.setrlimit(which, (soft, hard))
    os.umask(process.umask)
    if terminal is not None:
        for target in (0, 1, 2):
            os.dup2(terminal, target)
        if terminal > 2:
            os.close(terminal)
    try:
        os.chdir(process.cwd)
    except OSError as error:
        raise InitFailure(
            EXEC_NOT_RUNNABLE,
            f"cannot change to the working directory {process.cwd}: {error.strerror}",
        ) from None
    if process.no_new_privileges:
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    caps.bound()
    install = getattr(seccomp_install, "install", None)
    if install is not None and not process.no_new_privileges:
        install()  # needs CAP_SYS_ADMIN, so before the user switch
    caps.keep_across_setuid()
    os.setgroups(list(process.groups))
    os.setgid(process.gid)
    os.setuid(process.uid)
    caps.set_sets()
    if install is not None and process.no_new_privileges:
        install()  # as late as possible: the filter then also covers the user switch
    _close_inherited(control.fileno())
    if process.reaper:
        _become_reaper(control)
    _exec(process.argv, process.env)


# Signals an init passes on to its child (SIGKILL and SIGSTOP cannot be caught).
FORWARDED = (
    "SIGTERM",
    "SIGINT",
    "SIGHUP",
    "SIGQUIT",
    "SIGUSR1",
    "SIGUSR2",
    "SIGWINCH",
    "SIGCONT",
    "SIGALRM",
)


def _become_reaper(control: socket.socket) -> None:
    """--init: fork; the child goes on to exec the command, this process stays as PID 1,
    passing signals on and reaping every orphan, and exits with the command's status."""
    child = os.fork()
    if child == 0:
        return
    control.close()  # the child's copy reports its exec; ours must not hold the socket open
    linux.prctl(_PR_SET_NAME, ctypes_name(b"init"))

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for name in FORWARDED:
        signal.signal(getattr(signal, name), forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            os._exit(code)


_PR_SET_NAME = 15
_name_buffers: list[object] = []


def ctypes_name(name: bytes) -> int:
    """The address of a NUL-terminated copy of ``name`` that lives as long as the process."""

    buffer = ctypes.create_string_buffer(name)
    _name_buffers.append(buffer)
    return ctypes.addressof(buffer)


def _close_inherited(keep: int) -> None:
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
