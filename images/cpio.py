"""A deterministic writer (and a reader, for checks) of newc cpio archives.

The kernel unpacks newc archives into the initramfs. Writing them ourselves means no
root is needed for device nodes or uid 0, and the bytes depend only on the tree: paths
sorted, one fixed mtime, inode numbers assigned in path order.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from images.errors import ImageBuildError
from images.tree import Device, Dir, File, HardLink, Symlink, Tree

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _entry(
    name: str,
    ino: int,
    mode: int,
    nlink: int,
    mtime: int,
    data: bytes,
    rdev: tuple[int, int] = (0, 0),
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = _MAGIC + b"".join(b"%08X" % value for value in fields)
    head = header + encoded
    return head + _pad4(len(head)) + data + _pad4(len(data))


def write_cpio(tree: Tree, mtime: int = 0, first_ino: int = 1) -> bytes:
    """Serialise `tree` (root excluded) as a newc archive.

    Hard links share an inode; as GNU cpio does, only the last name carries the data
    (the kernel links earlier names to the first and fills the inode from the last).
    `first_ino` lets stacked archives use disjoint inode numbers.
    """
    paths = tree.sorted_paths()
    ino_of: dict[str, int] = {}
    for index, path in enumerate(paths):
        ino_of[path] = first_ino + index
    # Group hard links with the file they name: all get that file's inode.
    names_of: dict[str, list[str]] = {}
    for path in paths:
        node = tree.get(path)
        if isinstance(node, HardLink):
            names_of.setdefault(node.target, []).append(path)
    last_name = {target: ([target, *links])[-1] for target, links in names_of.items()}
    out = bytearray()
    for path in paths:
        node = tree.get(path)
        if isinstance(node, Dir):
            out += _entry(path, ino_of[path], stat.S_IFDIR | node.mode, 2, mtime, b"")
        elif isinstance(node, Symlink):
            out += _entry(path, ino_of[path], stat.S_IFLNK | 0o777, 1, mtime, node.target.encode())
        elif isinstance(node, Device):
            kind = stat.S_IFCHR if node.kind == "c" else stat.S_IFBLK
            out += _entry(
                path, ino_of[path], kind | node.mode, 1, mtime, b"", (node.major, node.minor)
            )
        elif isinstance(node, File | HardLink):
            target = node.target if isinstance(node, HardLink) else path
            file = tree.get(target)
            if not isinstance(file, File):
                raise ImageBuildError(f"hard link {path!r} points at non-file {target!r}")
            links = 1 + len(names_of.get(target, []))
            data = file.data if last_name.get(target, target) == path else b""
            out += _entry(path, ino_of[target], stat.S_IFREG | file.mode, links, mtime, data)
    out += _entry(_TRAILER, 0, 0, 1, 0, b"")
    return bytes(out)


@dataclass(frozen=True)
class CpioEntry:
    name: str
    ino: int
    mode: int
    nlink: int
    mtime: int
    data: bytes
    rdev: tuple[int, int]


def read_cpio(blob: bytes) -> list[CpioEntry]:
    """Parse one or more concatenated (uncompressed) newc archives."""
    entries: list[CpioEntry] = []
    offset = start = 0  # alignment counts from the start of each archive
    while offset < len(blob):
        if blob[offset] == 0:  # padding between archives
            offset += 1
            start = offset
            continue
        if blob[offset : offset + 6] != _MAGIC:
            raise ImageBuildError(f"bad cpio magic at offset {offset}")
        values = [int(blob[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, _uid, _gid, nlink, mtime, size, _maj, _min, rmaj, rmin, namesize, _ = values
        name_start = offset + 110
        name = blob[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize
        data_start += -(data_start - start) % 4
        data = blob[data_start : data_start + size]
        offset = data_start + size
        offset += -(offset - start) % 4
        if name == _TRAILER:
            continue
        entries.append(CpioEntry(name, ino, mode, nlink, mtime, data, (rmaj, rmin)))
    return entries
