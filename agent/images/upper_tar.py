"""A container's overlayfs upper directory written as an image layer tar (`docker commit`).

The upper directory holds exactly what the container changed, in overlayfs' own notation:
a deleted entry is a 0/0 character device and a directory whose lower contents were
replaced carries ``trusted.overlay.opaque=y``. A layer tar says the same in the OCI
notation, ``.wh.<name>`` and ``.wh..wh..opq`` (:mod:`agent.images.layers` turns them back
into overlay markers when the layer is stored).

Entries keep their owner, mode, mtime (whole seconds, as dockerd writes them), extended
attributes (not overlay's own) and link targets; hard links are written once, then as
links. The order is fixed (names sorted, parents first), so the same upper directory gives
the same tar and DiffID.

What the runtime put there for its own mounts is not the container's doing and stays out:
the empty files and directories made as mount points (the managed /etc files, volumes and
binds, /proc, /sys, /dev), the directories made only to hold them, and directories that
were copied up unchanged and hold nothing that goes in.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from agent.containers.changes import LowerView, is_opaque, is_whiteout, names_in
from agent.images.layers import OPAQUE_MARKER, WHITEOUT_PREFIX, XATTR_PAX_PREFIX

log = logging.getLogger(__name__)

_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Entry:
    name: str  # in the tar, relative ("etc/passwd", "tmp/.wh.gone")
    path: str  # on the host (the upper entry it comes from)
    kind: str  # "whiteout", "opaque" or "node"


class _Planner:
    """Decides which upper entries go into the layer, in tar order."""

    def __init__(self, upper: str, lower: LowerView, mount_points: frozenset[str]) -> None:
        self.upper = upper
        self.lower = lower
        self.mount_points = mount_points  # relative paths ("etc/hosts", "data")

    def plan(self, relative_dir: str = "", in_opaque: bool = False) -> tuple[list[_Entry], bool]:
        """The entries of one upper directory (recursively) and whether any was left out
        as a mount point."""
        directory = os.path.join(self.upper, relative_dir)
        children: list[tuple[str, list[_Entry]]] = []
        skipped_any = False
        for name in names_in(directory):
            relative = f"{relative_dir}/{name}" if relative_dir else name
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if relative in self.mount_points and _empty_mount_point(path, info):
                skipped_any = True
                continue
            if is_whiteout(info):
                tar_name = _join(relative_dir, WHITEOUT_PREFIX + name)
                children.append((tar_name, [_Entry(tar_name, path, "whiteout")]))
                continue
            if not stat.S_ISDIR(info.st_mode):
                children.append((relative, [_Entry(relative, path, "node")]))
                continue
            opaque = is_opaque(path)
            below, skipped = self.plan(relative, in_opaque or opaque)
            skipped_any = skipped_any or skipped
            if not below and not opaque and self._copied_up_only(relative, info, in_opaque):
                continue
            entries = [_Entry(relative, path, "node")]
            if opaque:
                marker = _join(relative, OPAQUE_MARKER)
                entries.append(_Entry(marker, path, "opaque"))
            children.append((relative, entries + below))
        children.sort(key=lambda child: child[0])
        return [entry for _name, entries in children for entry in entries], skipped_any

    def _copied_up_only(self, relative: str, info: os.stat_result, in_opaque: bool) -> bool:
        """An empty upper directory the image has with the same owner and mode: overlayfs
        copied it up to hold something that is not going in (or was removed again)."""
        if in_opaque:
            return False
        below = self.lower.lstat(relative)
        if below is None:
            # made only to hold a mount point (e.g. -v /a/b/c made /a and /a/b)
            return any(p.startswith(relative + "/") for p in self.mount_points)
        return stat.S_ISDIR(below.st_mode) and (info.st_mode, info.st_uid, info.st_gid) == (
            below.st_mode,
            below.st_uid,
            below.st_gid,
        )


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _empty_mount_point(path: str, info: os.stat_result) -> bool:
    if stat.S_ISDIR(info.st_mode):
        return not names_in(path)
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def _xattrs(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    headers: dict[str, str] = {}
    for name in sorted(names):
        if name.startswith(_OVERLAY_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        headers[XATTR_PAX_PREFIX + name] = value.decode("utf-8", "surrogateescape")
    return headers


class _Exactly:
    """``size`` bytes of a file that a running container may change while it is read."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.left = size

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        data = self.handle.read(want) if want else b""
        if len(data) < want:
            data += b"\0" * (want - len(data))
        self.left -= len(data)
        return data


class _Writer:
    def __init__(self, out: BinaryIO) -> None:
        # the owner closes the archive (its end) through close()
        self.tar = tarfile.open(fileobj=cast(IO[bytes], out), mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.inodes: dict[tuple[int, int], str] = {}
        self.count = 0

    def close(self) -> None:
        self.tar.close()

    def add(self, entry: _Entry) -> None:
        try:
            info = os.lstat(entry.path)
        except FileNotFoundError:
            return  # removed meanwhile by a container that runs on
        header = tarfile.TarInfo(entry.name)
        header.mode = stat.S_IMODE(info.st_mode)
        header.uid, header.gid = info.st_uid, info.st_gid
        header.uname = header.gname = ""
        header.mtime = int(info.st_mtime)
        if entry.kind in ("whiteout", "opaque"):
            header.type = tarfile.REGTYPE
            self._emit(header)
            return
        header.pax_headers = _xattrs(entry.path)
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFDIR:
            header.type = tarfile.DIRTYPE
        elif kind == stat.S_IFLNK:
            header.type = tarfile.SYMTYPE
            header.linkname = os.readlink(entry.path)
        elif kind == stat.S_IFIFO:
            header.type = tarfile.FIFOTYPE
        elif kind == stat.S_IFREG:
            key = (info.st_dev, info.st_ino)
            if info.st_nlink > 1 and key in self.inodes:
                header.type = tarfile.LNKTYPE
                header.linkname = self.inodes[key]
            else:
                self._add_file(header, entry.path, key, info.st_nlink)
                return
        else:
            # device nodes and sockets: an image layer must not ship them (the runtime
            # makes /dev), and the store would refuse the layer
            log.info("commit leaves out %s: not a file, directory, link or fifo", entry.name)
            return
        self._emit(header)

    def _add_file(
        self, header: tarfile.TarInfo, path: str, key: tuple[int, int], links: int
    ) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as handle:
            header.size = os.fstat(fd).st_size
            self.tar.addfile(header, cast(IO[bytes], _Exactly(handle, header.size)))
        self.count += 1
        if links > 1:
            self.inodes[key] = header.name

    def _emit(self, header: tarfile.TarInfo) -> None:
        self.tar.addfile(header)
        self.count += 1


def write_upper_tar(
    upper: str,
    layers_lowest_first: Sequence[str],
    out: BinaryIO,
    mount_points: Iterable[str] = (),
) -> int:
    """Write the layer tar of ``upper`` (over the image's layers) to ``out``; the number
    of entries written (0: the container changed nothing that goes into a layer).
    ``mount_points`` are container paths ("/etc/hosts") the runtime mounts onto."""
    points = frozenset(p.strip("/") for p in mount_points if p.strip("/"))
    planner = _Planner(upper, LowerView(layers_lowest_first), points)
    entries, _ = planner.plan()
    writer = _Writer(out)
    try:
        for entry in entries:
            writer.add(entry)
    finally:
        writer.close()
    return writer.count
