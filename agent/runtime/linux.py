"""The Linux system calls Python 3.11's os module lacks, through ctypes on the C library.

Every wrapper raises OSError with errno on failure, like the os module, and accepts str or
bytes paths. They are cheap to call, so a forked child can use them between fork and exec;
the library handle and function objects are resolved once at import, before any fork.
"""

from __future__ import annotations

import ctypes
import os
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


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return check(_prctl(option, arg2, arg3, arg4, arg5), "prctl")
