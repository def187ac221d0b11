"""Resolve paths inside a container's root filesystem without ever leaving it.

An image is untrusted input: `/etc/passwd` or a mount target may be a symlink to `/` or to
`../../..`. Every path the daemon touches inside a root is resolved here component by
component, treating absolute symlink targets as relative to the root and clamping `..` at
the root, the way the path would resolve for a process chrooted into it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable

_MAX_LINKS = 40  # the kernel's own limit on symlink hops


def secure_join(root: str, path: str) -> str:
    """The host path of ``path`` as seen inside ``root``; missing tails are kept as is."""
    root = os.path.abspath(root)
    inside = resolve(path, lambda p: os.lstat(root + p), lambda p: os.readlink(root + p))
    return os.path.join(root, *inside.split("/")[1:]) if inside != "/" else root


def resolve(
    path: str,
    lstat: Callable[[str], os.stat_result],
    readlink: Callable[[str], str],
    follow_last: bool = True,
    missing: tuple[type[OSError], ...] = (FileNotFoundError,),
) -> str:
    """``path`` with every symlink resolved inside a tree seen through ``lstat`` and
    ``readlink`` (both given absolute paths of the tree), as "/a/b"; the last component is
    followed only with ``follow_last``; a tail that is ``missing`` is kept as it is."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/" + "/".join([*resolved, part])
        try:
            info = lstat(candidate)
        except missing:
            resolved.append(part)
            continue
        if stat.S_ISLNK(info.st_mode) and (parts or follow_last):
            hops += 1
            if hops > _MAX_LINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


def makedirs_in(root: str, path: str, mode: int = 0o755) -> str:
    """Create ``path`` inside ``root`` (parents too, as mkdir -p would in a chroot)."""
    target = secure_join(root, path)
    relative = posixpath.relpath(target, root)
    current = root
    if relative == ".":
        return target
    for part in relative.split("/"):
        current = os.path.join(current, part)
        try:
            os.mkdir(current, mode)
        except FileExistsError:
            if not os.path.isdir(current) or os.path.islink(current):
                raise NotADirectoryError(
                    errno.ENOTDIR, "not a directory", posixpath.join("/", relative)
                ) from None
    return target


def ensure_file_in(root: str, path: str, mode: int = 0o644) -> str:
    """Create an empty file at ``path`` inside ``root`` unless something is there already
    (a bind mount of a file needs a file to land on)."""
    target = secure_join(root, path)
    makedirs_in(root, posixpath.dirname(posixpath.join("/", posixpath.relpath(target, root))))
    if not os.path.lexists(target):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        os.close(fd)
    return target
