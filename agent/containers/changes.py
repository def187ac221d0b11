"""`docker diff`: what a container changed, read from its overlay upper directory.

Every entry of the upper directory is a change against the image's layers (the lower
view): a whiteout (a 0/0 character device) is a deletion, an entry the image has is a
modification, any other an addition. An opaque directory hides the image's whole
directory, so each of the image's entries in it is a deletion too. What the agent itself
put there to mount onto (/proc, /sys, /dev and the managed /etc files, Docker's "init
layer") is not the container's doing and is left out, as is a directory that was only
copied up to hold it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

MODIFIED, ADDED, DELETED = 0, 1, 2

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# created by agent.containers.rootfs.prepare as mount points, when the image lacks them
INIT_PATHS = frozenset(("/proc", "/sys", "/dev", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf"))


def is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


class LowerView:
    """The image's layers merged as overlayfs merges them (top layer first)."""

    def __init__(self, layers_lowest_first: Sequence[str]) -> None:
        self.layers = list(reversed(layers_lowest_first))

    def lstat(self, relative: str) -> os.stat_result | None:
        """The entry the image shows at ``relative`` ("a/b"), or None."""
        parts = relative.split("/")
        for layer in self.layers:
            try:
                info = os.lstat(os.path.join(layer, relative))
            except (FileNotFoundError, NotADirectoryError):
                info = None
            if info is not None:
                return None if is_whiteout(info) else info
            if self._hidden_below(layer, parts):
                return None
        return None

    def _hidden_below(self, layer: str, parts: list[str]) -> bool:
        """Whether this layer hides the lower ones at this path (a whiteout or an opaque
        directory on the way down)."""
        for depth in range(1, len(parts)):
            ancestor = os.path.join(layer, *parts[:depth])
            try:
                info = os.lstat(ancestor)
            except (FileNotFoundError, NotADirectoryError):
                return False
            if is_whiteout(info) or not stat.S_ISDIR(info.st_mode):
                return True
            if is_opaque(ancestor):
                return True
        return False

    def listdir(self, relative: str) -> set[str]:
        """The names the image shows in directory ``relative``."""
        parts = relative.split("/")
        names: set[str] = set()
        hidden: set[str] = set()
        for layer in self.layers:
            directory = os.path.join(layer, relative)
            try:
                info = os.lstat(directory)
            except (FileNotFoundError, NotADirectoryError):
                if self._hidden_below(layer, parts):
                    break
                continue
            if is_whiteout(info) or not stat.S_ISDIR(info.st_mode):
                break
            for name in os.listdir(directory):
                if name in names or name in hidden:
                    continue
                if is_whiteout(os.lstat(os.path.join(directory, name))):
                    hidden.add(name)
                else:
                    names.add(name)
            if is_opaque(directory) or self._hidden_below(layer, parts):
                break
        return names


def container_changes(upper: str, layers_lowest_first: Sequence[str]) -> list[dict[str, object]]:
    """GET /containers/{id}/changes: [{"Path": "/etc/x", "Kind": 0|1|2}], by path."""
    lower = LowerView(layers_lowest_first)
    changes: dict[str, int] = {}
    removable: set[str] = set()  # directories that changed only to hold other changes
    stack: list[tuple[str, bool]] = [("", False)]  # (directory, under an opaque one)
    while stack:
        relative_dir, in_opaque = stack.pop()
        for name in names_in(os.path.join(upper, relative_dir)):
            relative = f"{relative_dir}/{name}".lstrip("/")
            path = os.path.join(upper, relative)
            info = os.lstat(path)
            key = "/" + relative
            below = None if in_opaque else lower.lstat(relative)
            if is_whiteout(info):
                if below is not None:
                    changes[key] = DELETED
                continue
            if not stat.S_ISDIR(info.st_mode):
                changes[key] = ADDED if below is None else MODIFIED
                continue
            if below is None or not stat.S_ISDIR(below.st_mode):
                changes[key] = ADDED
                stack.append((relative, in_opaque))
                if key == "/etc":  # made to hold the managed /etc files
                    removable.add(key)
                continue
            opaque = is_opaque(path)
            stack.append((relative, opaque))
            changes[key] = MODIFIED
            if opaque:
                for hidden in lower.listdir(relative) - set(names_in(path)):
                    changes[f"{key}/{hidden}"] = DELETED
            elif _same_owner_and_mode(info, below):
                removable.add(key)
    for path in INIT_PATHS & set(changes):
        if _empty_mount_point(os.path.join(upper, path.lstrip("/"))):
            del changes[path]
    for path in sorted(removable, key=len, reverse=True):
        prefix = path + "/"
        if not any(other.startswith(prefix) for other in changes):
            del changes[path]
    return [{"Path": path, "Kind": kind} for path, kind in sorted(changes.items())]


def names_in(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _same_owner_and_mode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid)


def _empty_mount_point(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISDIR(info.st_mode):
        return not names_in(path)
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def upper_size(upper: str) -> int:
    """Bytes the container wrote (its upper directory), each inode counted once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, _dirs, files in os.walk(upper):
        for name in files:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if key not in seen:
                seen.add(key)
                total += info.st_size
    return total
