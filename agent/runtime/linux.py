"""The Linux system calls Python 3.11's os module lacks, through ctypes on the C library.

Every wrapper raises OSError with errno on failure, like the os module, and accepts str or
bytes paths. They are cheap to call, so a forked child can use them between fork and exec;
the library handle and function objects are resolved once at import, before any fork.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct
from typing import Any

StrPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]

libc = ctypes.CDLL(None, use_errno=True)

# clone(2)/unshare(2) namespace flags
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# x86-64 system call numbers for calls glibc has no wrapper for (or an awkward one)
SYS_CAPGET = 125
SYS_CAPSET = 126
SYS_PIVOT_ROOT = 155
SYS_SECCOMP = 317

_mount = libc.mount
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_umount2 = libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_unshare = libc.unshare
_unshare.argtypes = [ctypes.c_int]
_setns = libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_sethostname = libc.sethostname
_sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_prctl = libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
syscall = libc.syscall
syscall.restype = ctypes.c_long


def check(result: int, what: str, path: Any = None) -> int:
    """Raise OSError (errno from the C library) when a call returned -1."""
    if result == -1:
        err = ctypes.get_errno()
        message = f"{what}: {os.strerror(err)}"
        if path is not None:
            raise OSError(err, message, os.fsdecode(path))
        raise OSError(err, message)
    return result


def _b(path: StrPath | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def mount(
    source: StrPath | None,
    target: StrPath,
    fstype: str | bytes | None = None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    fs = fstype.encode() if isinstance(fstype, str) else fstype
    options = data.encode() if isinstance(data, str) else data
    check(_mount(_b(source), _b(target), fs, flags, options), "mount", target)


def umount(target: StrPath, flags: int = 0) -> None:
    check(_umount2(_b(target), flags), "umount", target)


def unshare(flags: int) -> None:
    check(_unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    check(_setns(fd, nstype), "setns")


def pivot_root(new_root: StrPath, put_old: StrPath) -> None:
    check(syscall(SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root", new_root)


def sethostname(name: str) -> None:
    data = name.encode()
    check(_sethostname(data, len(data)), "sethostname")


TIOCSWINSZ = 0x5414


def set_window_size(terminal: int, rows: int, cols: int) -> None:
    """Set a terminal's size (what `stty size` reads and SIGWINCH announces)."""
    fcntl.ioctl(terminal, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return check(_prctl(option, arg2, arg3, arg4, arg5), "prctl")


# --- fork straight into a cgroup (clone3 with CLONE_INTO_CGROUP) -------------------------------
SYS_CLONE3 = 435
CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


# Through PyDLL the call keeps the GIL, like os.fork(): no other thread runs across it.
_py_syscall = ctypes.PyDLL(None, use_errno=True).syscall
_py_syscall.restype = ctypes.c_long
_before_fork = ctypes.pythonapi.PyOS_BeforeFork
_after_fork_child = ctypes.pythonapi.PyOS_AfterFork_Child
_after_fork_parent = ctypes.pythonapi.PyOS_AfterFork_Parent


def fork_into_cgroup(cgroup_fd: int) -> int:
    """Like os.fork(), but the child starts life in the cgroup of ``cgroup_fd``.

    Moving a running process into a cgroup waits for an RCU grace period (around 10 ms)
    unless the hierarchy is mounted with favordynmods; creating it there does not. Only for
    single-threaded callers (the shim): unlike glibc's fork() this skips the C library's
    own fork handlers, which only matter when other threads may hold its locks.
    Raises OSError (ENOSYS, EINVAL …) when the kernel cannot: fall back to fork + move.
    """

    args = _CloneArgs()
    args.flags = CLONE_INTO_CGROUP
    args.exit_signal = signal.SIGCHLD
    args.cgroup = cgroup_fd
    _before_fork()
    pid = _py_syscall(SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        _after_fork_child()
        return 0
    err = ctypes.get_errno()
    _after_fork_parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return int(pid)
