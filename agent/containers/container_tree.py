"""A container's file tree as its processes see it, for `docker cp` (the archive endpoints).

Paths are resolved component by component in the container's own path space, the way
:func:`agent.runtime.rootpath.secure_join` does for a bare root: an absolute symlink target
starts again at the container's root, and `..` stops at it, so no symlink in the image or
written by the container leads outside. On top of that, each resolved container path is
mapped to the host directory that holds it: the root filesystem, or the source of the
volume or bind mount whose destination is its longest prefix (a stopped container's mounts
exist only as its record says). For a running container the tree is
``/proc/<init>/root``, where the kernel already shows its mounts (tmpfs included).
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import stat
import time
from dataclasses import dataclass

from agent.errors import AgentError, BadRequest, NotFound
from agent.runtime import rootpath

# Go's os.FileMode bits: docker's path stat header carries them, not st_mode
GO_DIR = 1 << 31
GO_SYMLINK = 1 << 27
GO_DEVICE = 1 << 26
GO_NAMED_PIPE = 1 << 25
GO_SOCKET = 1 << 24
GO_SETUID = 1 << 23
GO_SETGID = 1 << 22
GO_CHAR_DEVICE = 1 << 21
GO_STICKY = 1 << 20


@dataclass(frozen=True)
class MountPoint:
    destination: str  # normalised absolute container path
    source: str  # host path
    writable: bool


class ReadOnly(AgentError):
    """403, as dockerd answers a copy into a read-only root or volume."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


def clean(path: str) -> str:
    """An absolute, normalised container path ("" and "." are the root)."""
    # lstrip: normpath keeps a leading "//" as it is (POSIX lets it mean something else)
    return posixpath.normpath("/" + path.lstrip("/"))


def go_file_mode(mode: int) -> int:
    """st_mode as Go's os.FileMode (what docker clients test with IsDir and friends)."""
    bits = stat.S_IMODE(mode) & 0o777
    kind = stat.S_IFMT(mode)
    bits |= {
        stat.S_IFDIR: GO_DIR,
        stat.S_IFLNK: GO_SYMLINK,
        stat.S_IFIFO: GO_NAMED_PIPE,
        stat.S_IFSOCK: GO_SOCKET,
        stat.S_IFBLK: GO_DEVICE,
        stat.S_IFCHR: GO_DEVICE | GO_CHAR_DEVICE,
    }.get(kind, 0)
    if mode & stat.S_ISUID:
        bits |= GO_SETUID
    if mode & stat.S_ISGID:
        bits |= GO_SETGID
    if mode & stat.S_ISVTX:
        bits |= GO_STICKY
    return bits


def rfc3339(ns: int) -> str:
    """Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return text + (f".{digits}" if digits else "") + "Z"


class ContainerTree:
    def __init__(
        self,
        root: str,
        mounts: list[MountPoint] | None = None,
        readonly_root: bool = False,
        name: str = "",
    ) -> None:
        self.root = root
        # longest destination first: the first prefix that matches is the right one
        self.mounts = sorted(mounts or [], key=lambda m: len(m.destination), reverse=True)
        self.readonly_root = readonly_root
        self.name = name  # for messages
        self.skip: frozenset[str] = frozenset()  # directories a copy does not descend into

    # --- mapping --------------------------------------------------------------------------
    def _mount_of(self, cpath: str) -> MountPoint | None:
        for mount in self.mounts:
            dest = mount.destination
            if cpath == dest or cpath.startswith(dest.rstrip("/") + "/"):
                return mount
        return None

    def host_path(self, cpath: str) -> str:
        """The host path that holds container path ``cpath`` (already resolved)."""
        mount = self._mount_of(cpath)
        if mount is None:
            return self.root + (cpath if cpath != "/" else "")
        rest = cpath[len(mount.destination) :].lstrip("/")
        return os.path.join(mount.source, rest) if rest else mount.source

    def is_mount_root(self, cpath: str) -> bool:
        return cpath == "/" or any(m.destination == cpath for m in self.mounts)

    def lstat(self, cpath: str) -> os.stat_result:
        """lstat of a resolved container path; a mount's root (or the tree's, which may be
        the /proc/<pid>/root magic link) is what is mounted there, so it is followed."""
        host = self.host_path(cpath)
        return os.stat(host) if self.is_mount_root(cpath) else os.lstat(host)

    def check_writable(self, cpath: str) -> None:
        mount = self._mount_of(cpath)
        if mount is not None and not mount.writable:
            raise ReadOnly(f"mounted volume is marked read-only: {mount.destination}")
        if mount is None and self.readonly_root:
            raise ReadOnly("container rootfs is marked read-only")

    # --- resolution -----------------------------------------------------------------------
    def resolve(self, path: str, follow_last: bool = True) -> str:
        """The container path ``path`` names with every symlink resolved inside the tree
        (the last component only with ``follow_last``); missing tails are kept as they are."""
        return rootpath.resolve(
            path,
            self.lstat,
            lambda cpath: os.readlink(self.host_path(cpath)),
            follow_last,
            missing=(FileNotFoundError, NotADirectoryError),
        )

    def locate(self, path: str) -> tuple[str, str]:
        """What an archive request names: (resolved container path, its base name).

        As docker does, the parent directories are resolved and the last component is not
        followed, unless the path ends in "/" or "/." (then it must be a directory)."""
        if not path:
            raise BadRequest("path cannot be empty")
        if "\0" in path:
            raise BadRequest("path must not contain a NUL byte")
        absolute = clean(path)
        trailing = path.endswith("/") or path.endswith("/.") or path in (".",)
        try:
            cpath = self.resolve(absolute, follow_last=trailing)
            info = self.lstat(cpath)
        except (FileNotFoundError, NotADirectoryError) as error:
            if isinstance(error, NotADirectoryError) or _through_file(self, absolute):
                raise BadRequest(f"{path}: not a directory") from None
            raise NotFound(f"Could not find the file {path} in container {self.name}") from None
        except OSError as error:
            raise BadRequest(f"{path}: {error.strerror or error}") from None
        if trailing and not stat.S_ISDIR(info.st_mode):
            raise BadRequest(f"{path}: not a directory")
        if path.endswith("/.") or path == ".":
            base = "."
        elif absolute == "/":
            base = "/"
        else:
            base = posixpath.basename(absolute)
        return cpath, base

    def path_stat(self, cpath: str, base: str) -> dict[str, object]:
        """docker's ContainerPathStat of a located path."""
        info = self.lstat(cpath)
        link_target = ""
        if stat.S_ISLNK(info.st_mode):
            link_target = self.resolve(cpath, follow_last=True)
        return {
            "name": base,
            "size": info.st_size,
            "mode": go_file_mode(info.st_mode),
            "mtime": rfc3339(info.st_mtime_ns),
            "linkTarget": link_target,
        }


def stat_header(document: dict[str, object]) -> str:
    """The X-Docker-Container-Path-Stat value: base64 of the JSON."""
    return base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()


def _through_file(tree: ContainerTree, absolute: str) -> bool:
    """Whether a missing path goes through a non-directory (a 400, not a 404)."""
    parent = posixpath.dirname(absolute)
    while parent != "/":
        try:
            info = tree.lstat(tree.resolve(parent))
        except OSError:
            parent = posixpath.dirname(parent)
            continue
        return not stat.S_ISDIR(info.st_mode)
    return False
