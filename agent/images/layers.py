"""Unpack one image layer tar into a directory overlayfs can use as a lower layer.

The tar comes from untrusted images, so extraction never follows a symlink: every path is
walked one component at a time from a directory fd with O_NOFOLLOW, and every file is made
relative to its parent's fd. A symlink in the layer (``x -> /etc`` or ``x -> ../..``) is stored
as it is, but no later entry can be written through it. The layer's DiffID (sha256 of the
uncompressed tar) is computed while streaming, so the caller can check it against the image
config without reading the layer twice.

OCI whiteouts become overlayfs markers: ``.wh.<name>`` a 0/0 character device ``<name>``,
``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory. Both need root.

With a :class:`~agent.images.tarsplit.SplitRecorder`, the tar's headers are recorded too, and
a file the tar replaces later is moved aside rather than deleted, so `docker save` can write
the very same tar again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import struct
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from agent.errors import AgentError
from agent.images.tarsplit import SplitRecorder

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."
# A layer must not smuggle in overlay's own control xattrs (redirects, metacopy, opaque).
_FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_CHUNK = 1 << 20
_READ_LIMIT = 16 << 20  # what a tar header may ask for at once (Go's archive/tar: 1 MiB)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_MAGIC_GZIP = b"\x1f\x8b"
_MAGIC_ZSTD = b"\x28\xb5\x2f\xfd"
_MAGIC_XZ = b"\xfd7zXZ\x00"
_MAGIC_BZIP2 = b"BZh"


class LayerError(AgentError):
    """A layer that cannot or must not be extracted; the message names the entry."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    size: int  # bytes of regular file content (hard links counted once)


class _Reader:
    """Serves already-read bytes first, then the stream (a compressed layer's magic bytes
    are read before its decompressor is chosen)."""

    def __init__(self, stream: BinaryIO, prefix: bytes = b"") -> None:
        self._stream = stream
        self._prefix = prefix

    def read(self, size: int = -1) -> bytes:
        if not self._prefix:
            return self._stream.read(size)
        if size < 0:
            data = self._prefix + self._stream.read()
            self._prefix = b""
        else:
            data, self._prefix = self._prefix[:size], self._prefix[size:]
        return data


class _TarStream:
    """The uncompressed layer tar, read forward only.

    tarfile reads its headers through :meth:`read`, :meth:`tell` and forward
    :meth:`seek`; a regular file's content is taken a piece at a time with
    :meth:`read_some`, as views of what the decompressor produced. tarfile's own stream
    mode copies every byte three or four times while holding the GIL, which the layers
    extracted side by side (and their downloads) share. Each chunk is hashed (the DiffID)
    and shown to the split recorder as it is produced, so both see the stream in order.
    """

    def __init__(self, source: BinaryIO, split: SplitRecorder | None) -> None:
        self._source = source
        self._split = split
        self._hash = hashlib.sha256()
        self._chunk = memoryview(b"")  # produced, not yet consumed
        self._offset = 0  # of the next byte a reader gets

    def _fill(self) -> bool:
        data = self._source.read(_CHUNK)
        if not data:
            return False
        self._hash.update(data)
        if self._split is not None:
            # What was read so far is recorded or skipped already: the record keeps no
            # more than a chunk in memory (a layer may end in any amount of padding).
            self._split.raw_until(self._offset)
            self._split.feed(data)
        self._chunk = memoryview(data)
        return True

    def read_some(self, size: int) -> memoryview:
        """Up to ``size`` (> 0) bytes, fewer at a chunk's end; empty only at the end."""
        if not self._chunk and not self._fill():
            return self._chunk
        part = self._chunk[:size]
        self._chunk = self._chunk[len(part) :]
        self._offset += len(part)
        return part

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes unless the stream ends first (tarfile's header reads, and
        a sparse member's data)."""
        if not 0 <= size <= _READ_LIMIT:
            raise tarfile.ReadError(f"a header claims {size} bytes")
        parts: list[memoryview] = []
        left = size
        while left > 0 and (part := self.read_some(min(left, _CHUNK))):
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or offset < self._offset:
            raise tarfile.StreamError("an entry's size points back into the archive")
        while self._offset < offset and self.read_some(offset - self._offset):
            pass
        return self._offset

    def drain(self) -> None:
        """Read to the end: the end-of-archive padding belongs to the DiffID too."""
        while self.read_some(_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _decompressed(stream: BinaryIO) -> BinaryIO:
    """Wrap ``stream`` in the decompressor its magic bytes call for."""
    head = b""
    while len(head) < 6:
        more = stream.read(6 - len(head))
        if not more:
            break
        head += more
    raw = _Reader(stream, head)
    if head.startswith(_MAGIC_ZSTD):
        raise LayerError(
            "zstd-compressed layers are not supported; use an image with gzip or "
            "uncompressed layers"
        )
    if head.startswith(_MAGIC_GZIP):
        return cast(BinaryIO, _Gunzip(raw))
    if head.startswith(_MAGIC_XZ):
        import lzma

        return cast(BinaryIO, lzma.LZMAFile(cast(BinaryIO, raw), "rb"))
    if head.startswith(_MAGIC_BZIP2):
        import bz2

        return cast(BinaryIO, bz2.BZ2File(cast(BinaryIO, raw), "rb"))
    return cast(BinaryIO, raw)


class _Gunzip:
    """A gzip stream inflated a MiB at a time, all in zlib's C code. GzipFile's read path
    (Python per 8 KiB of input, its own CRC-32 pass) cost more than inflating itself in a
    VM under tcg. zlib checks each member's CRC-32 and length; members may follow one
    another, and zero padding may follow the last, as GzipFile allows."""

    def __init__(self, stream: _Reader) -> None:
        self._stream = stream
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper only
        self._input = b""

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (a MiB if negative); empty only at the end."""
        if size == 0:
            return b""
        want = size if size > 0 else _CHUNK
        while True:
            if self._inflater.eof:
                pending = self._inflater.unused_data.lstrip(b"\0")
                while not pending:
                    more = self._stream.read(_CHUNK)
                    if not more:
                        return b""
                    pending = more.lstrip(b"\0")
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._input = pending
            if not self._input:
                self._input = self._stream.read(_CHUNK)
                if not self._input:
                    raise EOFError("the compressed layer ends in the middle of a gzip member")
            data = self._inflater.decompress(self._input, want)
            self._input = self._inflater.unconsumed_tail
            if data:
                return data


def _is_root() -> bool:
    return os.geteuid() == 0


class _Extractor:
    """Extracts members into the directory open at ``root_fd``, never leaving it."""

    def __init__(self, root_fd: int, stream: _TarStream, split: SplitRecorder | None) -> None:
        self.root_fd = root_fd
        self.stream = stream
        self.root = _is_root()
        self.size = 0
        self.recorder = split
        self.parent_path = ""  # the current entry's directory in the layer ("" at the top)
        # Directory modes and times are applied last: children would change the mtimes,
        # and a read-only mode would stop us creating them.
        self.pending_dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}

    # --- path handling ----------------------------------------------------------------

    @staticmethod
    def split(entry: str, name: str) -> tuple[str, ...]:
        """Path components of ``name``, refusing absolute paths and '..'."""
        if name.startswith("/"):
            raise LayerError(f"layer entry {entry!r} has an absolute path; refusing to extract")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise LayerError(f"layer entry {entry!r} contains '..'; refusing to extract")
        return parts

    @contextmanager
    def parent_fd(self, entry: str, parts: tuple[str, ...], create: bool) -> Iterator[int]:
        """An fd of the directory holding ``parts[-1]``, walked without following symlinks."""
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parts[:-1]):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    where = "/".join(parts[: depth + 1])
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        kind = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                        what = "a symlink" if stat.S_ISLNK(kind) else "not a directory"
                        raise LayerError(
                            f"layer entry {entry!r} goes through {where!r}, which is {what}; "
                            "refusing to extract"
                        ) from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def remove_existing(self, parent: int, name: str, keep_dir: bool) -> None:
        """Make room for a new entry: a later tar entry replaces an earlier one."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            self.rescue_tree(name)
            shutil.rmtree(name, dir_fd=parent)  # fd-based: never follows symlinks
        elif not self.rescue_file(parent, name):
            os.unlink(name, dir_fd=parent)

    def _path(self, name: str) -> str:
        return f"{self.parent_path}/{name}" if self.parent_path else name

    def rescue_file(self, parent: int, name: str) -> bool:
        """Move a file whose content the tar record refers to out of the way; True if moved."""
        if self.recorder is None:
            return False
        rescued = self.recorder.rescue_name(self._path(name))
        if rescued is None:
            return False
        os.rename(name, rescued, src_dir_fd=parent, dst_dir_fd=self.recorder.rescue_dir_fd())
        return True

    def rescue_tree(self, name: str) -> None:
        """Before a directory goes, move out the recorded files inside it."""
        if self.recorder is None:
            return
        for path in self.recorder.under(self._path(name)):
            parts = tuple(path.split("/"))
            try:
                with self.parent_fd(path, parts, create=False) as parent:
                    rescued = self.recorder.rescue_name(path)
                    if rescued is not None:
                        os.rename(
                            parts[-1],
                            rescued,
                            src_dir_fd=parent,
                            dst_dir_fd=self.recorder.rescue_dir_fd(),
                        )
            except (OSError, LayerError):
                continue  # unreachable already; `docker save` will say which file is missing

    # --- metadata ---------------------------------------------------------------------

    def set_xattrs(self, target: int | str, member: tarfile.TarInfo, parent: int | None) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(XATTR_PAX_PREFIX):
                continue
            attr = key[len(XATTR_PAX_PREFIX) :]
            if not attr or attr.startswith(_FORBIDDEN_XATTR_PREFIXES):
                continue
            data = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, attr, data)
                else:
                    # os.setxattr has no dir_fd; go through /proc for the parent fd.
                    path = f"/proc/self/fd/{parent}/{target}"
                    os.setxattr(path, attr, data, follow_symlinks=False)
            except OSError:
                continue  # the filesystem refuses this namespace (e.g. user.* on a symlink)

    def set_owner_mode_times(self, fd: int, member: tarfile.TarInfo) -> None:
        if self.root:
            os.chown(fd, member.uid, member.gid)
        # After chown, which clears setuid/setgid bits.
        os.chmod(fd, member.mode & 0o7777)
        ns = int(member.mtime * 1_000_000_000)
        os.utime(fd, ns=(ns, ns))

    # --- entries ----------------------------------------------------------------------

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        entry = member.name
        if member.size < 0:  # tarfile would go back to an earlier header, or end there
            raise LayerError(f"layer entry {entry!r} has a negative size ({member.size})")
        parts = self.split(entry, member.name)
        if not parts:
            return  # the layer root itself: dest keeps its own metadata
        base = parts[-1]
        self.parent_path = "/".join(parts[:-1])
        with self.parent_fd(entry, parts, create=True) as parent:
            if base == OPAQUE_MARKER:
                self.opaque(entry, parent)
            elif base.startswith(WHITEOUT_PREFIX):
                hidden = base[len(WHITEOUT_PREFIX) :]
                if hidden in ("", ".", ".."):
                    raise LayerError(f"layer entry {entry!r} is not a valid whiteout")
                self.whiteout(entry, parent, hidden, member)
            elif member.isdir():
                self.directory(parent, base, parts, member)
            elif member.isreg():
                self.regular(tar, parent, base, member)
            elif member.issym():
                self.symlink(parent, base, member)
            elif member.islnk():
                self.hardlink(entry, parent, base, member)
            elif member.ischr() and member.devmajor == 0 and member.devminor == 0:
                self.whiteout(entry, parent, base, member)  # already in overlay form
            elif member.ischr() or member.isblk():
                kind = "character" if member.ischr() else "block"
                raise LayerError(
                    f"layer entry {entry!r} is a {kind} device node; images must not ship "
                    "device nodes (the runtime creates /dev)"
                )
            elif member.isfifo():
                self.remove_existing(parent, base, keep_dir=False)
                os.mkfifo(base, 0o600, dir_fd=parent)
                self.finish_nofollow(parent, base, member)
            else:
                raise LayerError(f"layer entry {entry!r} has unsupported tar type {member.type!r}")

    def directory(
        self, parent: int, base: str, parts: tuple[str, ...], member: tarfile.TarInfo
    ) -> None:
        self.remove_existing(parent, base, keep_dir=True)
        with suppress(FileExistsError):
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        try:
            if self.root:
                os.chown(fd, member.uid, member.gid)
            self.set_xattrs(fd, member, None)
        finally:
            os.close(fd)
        self.pending_dirs[parts] = member

    def regular(
        self, tar: tarfile.TarFile, parent: int, base: str, member: tarfile.TarInfo
    ) -> None:
        self.remove_existing(parent, base, keep_dir=False)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent)
        try:
            if member.issparse():  # tarfile reads the map of its data and holes
                source = tar.extractfile(member)
                if source is not None:
                    while chunk := source.read(_CHUNK):
                        _write_all(fd, chunk)
            else:
                if self.recorder is not None:
                    self.recorder.begin_file(self._path(base), member)
                _copy_content(self.stream, member, fd)
            self.size += member.size
            self.set_xattrs(fd, member, None)
            self.set_owner_mode_times(fd, member)
        finally:
            os.close(fd)

    def symlink(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        # Stored verbatim: the runtime resolves it inside the container's root.
        self.remove_existing(parent, base, keep_dir=False)
        os.symlink(member.linkname, base, dir_fd=parent)
        self.finish_nofollow(parent, base, member)

    def finish_nofollow(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        """Owner, xattrs and times of a node that cannot be opened (symlink, fifo)."""
        if self.root:
            os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if not member.issym():
            os.chmod(base, member.mode & 0o7777, dir_fd=parent, follow_symlinks=False)
        self.set_xattrs(base, member, parent)
        ns = int(member.mtime * 1_000_000_000)
        os.utime(base, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    def hardlink(self, entry: str, parent: int, base: str, member: tarfile.TarInfo) -> None:
        target = member.linkname
        if target.startswith("/"):
            raise LayerError(
                f"layer entry {entry!r} is a hard link to the absolute path {target!r}; "
                "refusing to extract"
            )
        if ".." in target.split("/"):
            raise LayerError(
                f"layer entry {entry!r} is a hard link to {target!r}, which contains '..'; "
                "refusing to extract"
            )
        tparts = self.split(entry, target)
        refused = LayerError(
            f"layer entry {entry!r} is a hard link to {target!r}, which is not a regular file "
            "extracted earlier in this layer; refusing to extract"
        )
        if not tparts:
            raise refused
        try:
            with self.parent_fd(entry, tparts, create=False) as tparent:
                st = os.stat(tparts[-1], dir_fd=tparent, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise refused
                try:
                    existing = os.stat(base, dir_fd=parent, follow_symlinks=False)
                    if (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino):
                        return
                except FileNotFoundError:
                    pass
                self.remove_existing(parent, base, keep_dir=False)
                os.link(
                    tparts[-1], base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False
                )
        except FileNotFoundError:
            raise refused from None

    def whiteout(self, entry: str, parent: int, name: str, member: tarfile.TarInfo) -> None:
        if not self.root:
            raise LayerError(
                f"layer entry {entry!r} is a whiteout; whiteouts need root (CAP_MKNOD) to "
                "become overlay markers"
            )
        self.remove_existing(parent, name, keep_dir=False)
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)

    def opaque(self, entry: str, parent: int) -> None:
        try:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
        except PermissionError:
            raise LayerError(
                f"layer entry {entry!r} marks an opaque directory; that needs root "
                f"(CAP_SYS_ADMIN for the {OPAQUE_XATTR} xattr)"
            ) from None

    def finish_dirs(self) -> None:
        # Deepest first, so setting a parent's mtime comes after its children changed it.
        for parts in sorted(self.pending_dirs, key=len, reverse=True):
            member = self.pending_dirs[parts]
            try:
                with self.parent_fd(member.name, parts, create=False) as parent:
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except (OSError, LayerError):
                continue  # replaced or removed by a later entry
            try:
                self.set_owner_mode_times(fd, member)
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_content(stream: _TarStream, member: tarfile.TarInfo, fd: int) -> None:
    """A regular member's content from the tar stream into ``fd``."""
    stream.seek(member.offset_data)  # there already: tarfile read the headers, no more
    left = member.size
    while left > 0:
        part = stream.read_some(min(left, _CHUNK))
        if not part:
            raise tarfile.ReadError("its content is cut short")
        _write_all(fd, part)
        left -= len(part)


def extract_layer(stream: BinaryIO, dest: Path, split: SplitRecorder | None = None) -> LayerInfo:
    """Extract the layer tar read from ``stream`` into the new directory ``dest``.

    Accepts plain, gzip (and xz/bzip2) tars. Raises LayerError naming the offending entry
    for anything unsafe; on any error ``dest`` is removed again. With ``split``, the tar's
    headers are recorded (the caller calls its ``finish`` once this returns).
    """
    try:
        os.mkdir(dest, 0o755)
    except FileExistsError:
        if not dest.is_dir() or dest.is_symlink() or any(dest.iterdir()):
            raise LayerError(
                f"cannot extract a layer into {dest}: it exists and is not empty"
            ) from None
    try:
        root_fd = os.open(dest, _DIR_FLAGS)
    except OSError as exc:
        raise LayerError(f"cannot open layer directory {dest}: {exc.strerror}") from None
    try:
        info = _extract(stream, root_fd, split)
    except BaseException as exc:
        os.close(root_fd)
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, OSError):
            raise LayerError(f"cannot extract layer into {dest}: {exc}") from None
        raise
    os.close(root_fd)
    return info


def _stream_errors() -> tuple[type[Exception], ...]:
    """What a truncated or corrupt tar or compressed stream raises."""
    # ValueError and IndexError: tarfile's parsing of a damaged sparse map (and a name
    # with a NUL byte); struct.error: a size too large to record.
    errors: list[type[Exception]] = [
        tarfile.TarError, EOFError, zlib.error, ValueError, IndexError, struct.error
    ]  # fmt: skip
    try:
        import lzma

        errors.append(lzma.LZMAError)
    except ImportError:
        pass
    return tuple(errors)


def _extract(stream: BinaryIO, root_fd: int, split: SplitRecorder | None) -> LayerInfo:
    plain = _TarStream(_decompressed(stream), split)
    extractor = _Extractor(root_fd, plain, split)
    member: tarfile.TarInfo | None = None
    try:
        with tarfile.open(fileobj=cast(BinaryIO, plain), mode="r:") as tar:
            while (member := tar.next()) is not None:
                if split is not None:
                    split.at_member(member)
                try:
                    extractor.extract(tar, member)
                except OSError as exc:
                    raise LayerError(
                        f"cannot extract layer entry {member.name!r}: {exc.strerror or exc}"
                    ) from None
                tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header
            plain.drain()
        extractor.finish_dirs()
    except _stream_errors() as exc:
        where = f" after entry {member.name!r}" if member is not None else ""
        raise LayerError(f"layer is not a valid tar archive{where}: {exc}") from None
    return LayerInfo("sha256:" + plain.hexdigest(), extractor.size)
