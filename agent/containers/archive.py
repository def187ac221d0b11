"""Tar streams in and out of a container's tree: `docker cp` both ways and `docker export`.

Reading never follows a symlink (links go into the archive as links) and skips what a tar
cannot hold (sockets) or what vanishes while it is read. Writing takes every entry through
:class:`~agent.containers.container_tree.ContainerTree`: the parent directory is resolved
inside the container (so a symlink in it never leads out), the entry itself is created
with ``O_NOFOLLOW``/``O_EXCL`` after whatever was there is removed, and an entry whose name
climbs out of the destination (``..``) or a hard link to outside it is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator
from typing import IO, Any, BinaryIO, Protocol, cast

from agent.containers.container_tree import ContainerTree
from agent.errors import AgentError, BadRequest

COPY_BUFFER = 1 << 20


class Sink(Protocol):
    """Where a tar stream goes (a response stream, a file)."""

    def write(self, data: bytes) -> Any: ...


class TarWriter:
    """Adds files of a tree to a streamed tar (``w|``), hard links once per inode."""

    def __init__(self, out: Sink) -> None:
        # closed by close(): the owner decides when the archive ends
        self.tar = tarfile.open(fileobj=cast(IO[bytes], out), mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._inodes: dict[tuple[int, int], str] = {}

    def close(self) -> None:
        self.tar.close()

    def add_tree(
        self,
        tree: ContainerTree,
        cpath: str,
        name: str | None,
        child_prefix: str,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        """``cpath`` as ``name`` (None: leave the top out) and everything below it, each
        named ``child_prefix`` + its path relative to ``cpath``. Directories in ``skip``
        (container paths: /proc, /sys of a running container) go in empty."""
        if name is not None and not self._add(tree, cpath, name):
            return
        # depth first, in name order, as tar lists a tree
        stack: list[Iterator[tuple[str, str]]] = [self._children(tree, cpath, child_prefix, skip)]
        while stack:
            child, child_name = next(stack[-1], ("", ""))
            if not child:
                stack.pop()
            elif self._add(tree, child, child_name) == "dir":
                stack.append(self._children(tree, child, child_name + "/", skip))

    @staticmethod
    def _children(
        tree: ContainerTree, directory: str, prefix: str, skip: frozenset[str]
    ) -> Iterator[tuple[str, str]]:
        if directory in skip:
            return
        try:
            names = sorted(os.listdir(tree.host_path(directory)))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in names:
            yield posixpath.join(directory, entry), prefix + entry

    def _add(self, tree: ContainerTree, cpath: str, name: str) -> str | None:
        """Add one entry; its kind ("dir", "file", "other") or None when it is gone."""
        host = tree.host_path(cpath)
        try:
            info = tree.lstat(cpath)
        except (FileNotFoundError, NotADirectoryError):
            return None
        entry = tarfile.TarInfo(name)
        entry.mode = stat.S_IMODE(info.st_mode)
        entry.uid, entry.gid = info.st_uid, info.st_gid
        entry.uname = entry.gname = ""  # the daemon's user names mean nothing in the image
        entry.mtime = int(info.st_mtime)  # whole seconds: no pax record per entry
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFDIR:
            entry.type = tarfile.DIRTYPE
            self.tar.addfile(entry)
            return "dir"
        if kind == stat.S_IFLNK:
            entry.type = tarfile.SYMTYPE
            try:
                entry.linkname = os.readlink(host)
            except FileNotFoundError:
                return None
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            entry.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
            entry.devmajor, entry.devminor = os.major(info.st_rdev), os.minor(info.st_rdev)
        elif kind == stat.S_IFIFO:
            entry.type = tarfile.FIFOTYPE
        elif kind == stat.S_IFREG:
            key = (info.st_dev, info.st_ino)
            if info.st_nlink > 1 and key in self._inodes:
                entry.type = tarfile.LNKTYPE
                entry.linkname = self._inodes[key]
            else:
                return self._add_file(entry, host, info, key)
        else:
            return "other"  # a socket: a tar cannot hold it
        self.tar.addfile(entry)
        return "other"

    def _add_file(
        self, entry: tarfile.TarInfo, host: str, info: os.stat_result, key: tuple[int, int]
    ) -> str | None:
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.fdopen(fd, "rb") as handle:
            # the size read now: a file that grows or shrinks meanwhile is cut or padded
            entry.size = os.fstat(fd).st_size
            self.tar.addfile(entry, _Exactly(handle, entry.size))
        if info.st_nlink > 1:
            self._inodes[key] = entry.name
        return "file"


class _Exactly:
    """``size`` bytes of a file that may change while it is read (zeros pad it)."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle = handle
        self._left = size

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(want) if want else b""
        if len(data) < want:
            data += b"\0" * (want - len(data))
        self._left -= len(data)
        return data


# --- extraction ---------------------------------------------------------------------------


def _failure(error: OSError, what: str) -> AgentError:
    text = f"{what}: {error.strerror or error}"
    if error.errno == errno.EROFS:
        return AgentError(403, f"{text} (the destination is read-only)")
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return AgentError(500, text)
    return BadRequest(text)


class Extractor:
    """Unpacks a tar stream into a directory of a container's tree (PUT archive)."""

    def __init__(
        self,
        tree: ContainerTree,
        destination: str,
        no_overwrite_dir_non_dir: bool,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.tree = tree
        self.destination = destination  # a resolved container path, a directory
        self.no_overwrite = no_overwrite_dir_non_dir
        self.owner = owner  # every entry's (uid, gid); None keeps the archive's
        self._dir_times: list[tuple[str, int]] = []

    def extract(self, stream: BinaryIO) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    self._member(tar, member)
        except tarfile.TarError as error:
            raise BadRequest(f"the archive is not a valid tar stream: {error}") from None
        except EOFError:
            raise BadRequest("the archive ended in the middle of an entry") from None
        for host, mtime in reversed(self._dir_times):  # children first changed their dirs
            with contextlib.suppress(OSError):
                os.utime(host, ns=(mtime, mtime), follow_symlinks=False)

    def _relative(self, name: str) -> str:
        """The entry's path below the destination ("" for the destination itself)."""
        relative = posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."
        if relative == ".." or relative.startswith("../"):
            raise BadRequest(f"invalid archive entry {name!r}: it points outside the destination")
        return "" if relative == "." else relative

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        relative = self._relative(member.name)
        if not relative:
            return  # the destination itself ("./"): it stays as it is
        wanted = posixpath.join(self.destination, relative)
        parent = self._ensure_dir(posixpath.dirname(wanted))
        cpath = posixpath.join(parent, posixpath.basename(wanted))
        self.tree.check_writable(cpath)
        host = self.tree.host_path(cpath)
        try:
            self._replace(cpath, host, member)
            self._create(tar, member, host)
            self._set_attributes(member, host)
        except OSError as error:
            raise _failure(error, f"cannot extract {member.name!r}") from None

    def _ensure_dir(self, wanted: str) -> str:
        """Resolve a directory the archive writes into, creating what is missing."""
        try:
            cpath = self.tree.resolve(wanted)
            info = self.tree.lstat(cpath)
        except FileNotFoundError:
            parent = self._ensure_dir(posixpath.dirname(cpath))
            cpath = posixpath.join(parent, posixpath.basename(cpath))
            self.tree.check_writable(cpath)
            try:
                os.mkdir(self.tree.host_path(cpath), 0o755)
            except OSError as error:
                raise _failure(error, f"cannot create {cpath}") from None
            return cpath
        except OSError as error:
            raise _failure(error, f"cannot open {wanted}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise BadRequest(f"cannot extract into {wanted}: not a directory")
        return cpath

    def _replace(self, cpath: str, host: str, member: tarfile.TarInfo) -> None:
        """Clear the way for the entry, as docker does: a directory stays for a directory,
        anything else is removed (refused between dir and non-dir when asked)."""
        try:
            info = os.lstat(host) if not self.tree.is_mount_root(cpath) else os.stat(host)
        except FileNotFoundError:
            return
        existing_dir = stat.S_ISDIR(info.st_mode)
        if member.isdir() and existing_dir:
            return
        if self.no_overwrite and member.isdir() != existing_dir:
            old, new = ("non-directory", "directory")
            if not member.isdir():
                old, new = new, old
            raise BadRequest(f'cannot overwrite {old} "{cpath}" with {new} "{member.name}"')
        if self.tree.is_mount_root(cpath):
            raise BadRequest(f"cannot replace {cpath}: a volume or bind mount is there")
        if existing_dir:
            shutil.rmtree(host)
        else:
            os.unlink(host)

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, host: str) -> None:
        if member.isdir():
            if not os.path.isdir(host) or os.path.islink(host):
                os.mkdir(host, 0o700)
        elif member.isreg():
            fd = os.open(
                host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(member)
                if source is not None:
                    shutil.copyfileobj(source, out, COPY_BUFFER)
        elif member.issym():
            os.symlink(member.linkname, host)
        elif member.islnk():
            os.link(self._link_source(member), host, follow_symlinks=False)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(host, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(host, 0o600)
        else:
            raise BadRequest(f"unsupported archive entry type for {member.name!r}")

    def _link_source(self, member: tarfile.TarInfo) -> str:
        """A hard link's target: an earlier entry of this archive, below the destination."""
        relative = self._relative(member.linkname)
        if not relative:
            raise BadRequest(f"invalid hard link {member.name!r} to the destination itself")
        wanted = posixpath.join(self.destination, relative)
        parent = self.tree.resolve(posixpath.dirname(wanted))
        return self.tree.host_path(posixpath.join(parent, posixpath.basename(wanted)))

    def _set_attributes(self, member: tarfile.TarInfo, host: str) -> None:
        uid, gid = self.owner if self.owner is not None else (member.uid, member.gid)
        os.chown(host, uid, gid, follow_symlinks=False)
        if not member.issym():
            os.chmod(host, member.mode & 0o7777)  # after chown, which clears setuid bits
        mtime = int(member.mtime * 1_000_000_000)
        if member.isdir():
            self._dir_times.append((host, mtime))
        else:
            os.utime(host, ns=(mtime, mtime), follow_symlinks=False)
