"""Keep what a layer's tar holds besides file contents, so it can be written back exactly.

An image's config names each layer by its DiffID, the sha256 of the layer's uncompressed tar.
`docker save` must therefore write each layer byte for byte as it was loaded, but the store
keeps only the extracted files. While a layer is extracted, :class:`SplitRecorder` records
the tar as a sequence of raw segments (headers, extended headers, padding, the data of
anything that is not a plain file) and references to regular files by their path in the
layer; :func:`assemble` replays that sequence, reading each file's content from the layer
directory again. Only the headers are kept twice: a few hundred bytes per entry, compressed.

A tar may replace a file it wrote earlier (the same name twice, a whiteout of it, a
directory entry where it was). The extractor moves such a file into ``tar-split-files/``
instead of deleting it (see :meth:`SplitRecorder.rescue_name`), so every content the tar
carried can still be read back.

The record is a gzip stream of frames: ``R`` + 8-byte length + raw bytes, ``F`` + 8-byte
size + 4-byte path length + path (one file's content), and ``E`` + 8-byte total size at the
end, so a truncated record is noticed.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from agent.errors import AgentError

RECORD = "tar-split.gz"
RESCUED = "tar-split-files"
_RAW, _FILE, _END = b"R", b"F", b"E"
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TarSplitError(AgentError):
    """A layer's tar cannot be rebuilt (the record is missing, corrupt, or files changed)."""

    def __init__(self, message: str) -> None:
        super().__init__(500, message)


def _encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


class SplitRecorder:
    """Is fed the uncompressed layer stream, and records all but file contents.

    The extractor tells it where each member's data starts (:meth:`at_member`) and which
    members are regular files written to disk (:meth:`begin_file`); their content is left
    out of the record. ``layer_dir`` is the directory that will hold ``diff/``.
    """

    def __init__(self, layer_dir: Path) -> None:
        self.layer_dir = layer_dir
        self._out = gzip.open(layer_dir / RECORD, "wb", compresslevel=6)  # noqa: SIM115
        self._pos = 0  # bytes of the uncompressed stream read so far
        self._pending = bytearray()  # raw bytes from _pending_start to _pos, not yet framed
        self._pending_start = 0
        self._skip_until = 0  # bytes before this offset are file content, never recorded
        self._total = 0
        self._files = 0
        # path in the layer ("a/b/c") -> number of its F frame, for files still in place
        self.written: dict[str, int] = {}
        self._rescue_fd: int | None = None

    # --- the stream -------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """The next bytes of the uncompressed stream, in order."""
        start = self._pos
        self._pos += len(data)
        if self._pos > self._skip_until:
            self._pending += memoryview(data)[max(0, self._skip_until - start) :]

    def raw_until(self, offset: int) -> None:
        """The stream's reader has got this far: what it read is raw (headers, padding,
        data kept as it is), except file contents already announced by begin_file."""
        self._frame_raw(offset)

    # --- what the extractor says --------------------------------------------------------

    def at_member(self, member: tarfile.TarInfo) -> None:
        """Everything before this member's data (its headers) is raw."""
        self._frame_raw(member.offset_data)

    def begin_file(self, path: str, member: tarfile.TarInfo) -> None:
        """``member``'s data will be read back from the file at ``path`` in the layer."""
        if member.size <= 0:
            return
        self._frame_raw(member.offset_data)
        end = member.offset_data + member.size
        drop = min(len(self._pending), member.size)
        del self._pending[:drop]
        self._pending_start = end
        self._skip_until = max(self._skip_until, end)
        self._files += 1
        self._write(_FILE + _U64.pack(member.size) + _U32.pack(len(_encode(path))))
        self._write(_encode(path))
        self._total += member.size
        self.written[path] = self._files

    def rescue_name(self, path: str) -> str | None:
        """The name under ``tar-split-files/`` to move ``path`` to before it is replaced,
        or None when no recorded content lives there."""
        number = self.written.pop(path, None)
        return None if number is None else str(number)

    def under(self, directory: str) -> list[str]:
        """Recorded files inside ``directory`` (about to be removed as a whole)."""
        prefix = directory + "/"
        return [path for path in self.written if path.startswith(prefix)]

    def rescue_dir_fd(self) -> int:
        if self._rescue_fd is None:
            rescued = self.layer_dir / RESCUED
            rescued.mkdir(mode=0o700, exist_ok=True)
            self._rescue_fd = os.open(rescued, _DIR_FLAGS)
        return self._rescue_fd

    def finish(self) -> int:
        """Record the rest of the stream; the tar's total size in bytes."""
        self._frame_raw(self._pos)
        self._write(_END + _U64.pack(self._total))
        self.close()
        return self._total

    def close(self) -> None:
        self._out.close()
        if self._rescue_fd is not None:
            os.close(self._rescue_fd)
            self._rescue_fd = None

    # --- frames -------------------------------------------------------------------------

    def _frame_raw(self, upto: int) -> None:
        count = max(0, min(upto, self._pos) - self._pending_start)
        if count:
            self._write(_RAW + _U64.pack(count))
            self._write(bytes(self._pending[:count]))
            del self._pending[:count]
            self._pending_start += count
            self._total += count

    def _write(self, data: bytes) -> None:
        self._out.write(data)


# --- reading back ------------------------------------------------------------------------


def has_record(layer_dir: Path) -> bool:
    return (layer_dir / RECORD).is_file()


def _frames(layer_dir: Path) -> Iterator[tuple[bytes, int, bytes]]:
    """(kind, size, payload) per frame; raw frames carry their bytes, file frames the path."""
    try:
        handle = cast(BinaryIO, gzip.open(layer_dir / RECORD, "rb"))  # noqa: SIM115
    except FileNotFoundError:
        raise TarSplitError(
            f"layer {layer_dir.name} has no record of its tar (stored by an older agent); "
            "load the image again (docker load) to add it"
        ) from None
    with handle:
        try:
            while True:
                kind = handle.read(1)
                if kind == _END:
                    (total,) = _U64.unpack(_exactly(handle, 8))
                    yield kind, total, b""
                    return
                if kind == _RAW:
                    (size,) = _U64.unpack(_exactly(handle, 8))
                    yield kind, size, _exactly(handle, size)
                elif kind == _FILE:
                    (size,) = _U64.unpack(_exactly(handle, 8))
                    (length,) = _U32.unpack(_exactly(handle, 4))
                    yield kind, size, _exactly(handle, length)
                else:
                    raise TarSplitError(f"the tar record of layer {layer_dir.name} is corrupt")
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise TarSplitError(
                f"the tar record of layer {layer_dir.name} is unreadable: {exc}"
            ) from None


def _exactly(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise EOFError("record ends early")
    return data


def tar_size(layer_dir: Path) -> int:
    """The size of the layer's tar, from its record (read without touching the files)."""
    for kind, size, _ in _frames(layer_dir):
        if kind == _END:
            return size
    raise TarSplitError(f"the tar record of layer {layer_dir.name} is incomplete")


def _open_in(root_fd: int, path: str) -> int:
    """Open ``path`` below ``root_fd`` read-only, following no symlink on the way."""
    parts = [p for p in path.split("/") if p]
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def assemble(layer_dir: Path) -> Iterator[bytes]:
    """The layer's tar, piece by piece, exactly as it was loaded."""
    rescued = layer_dir / RESCUED
    rescued_names = set(os.listdir(rescued)) if rescued.is_dir() else set()
    root_fd = os.open(layer_dir / "diff", _DIR_FLAGS)
    try:
        number = 0
        for kind, size, payload in _frames(layer_dir):
            if kind == _RAW:
                yield payload
            elif kind == _FILE:
                number += 1
                path = payload.decode("utf-8", "surrogateescape")
                yield from _file_content(layer_dir, root_fd, rescued_names, number, path, size)
    finally:
        os.close(root_fd)


def _file_content(
    layer_dir: Path, root_fd: int, rescued: set[str], number: int, path: str, size: int
) -> Iterator[bytes]:
    try:
        if str(number) in rescued:
            fd = os.open(layer_dir / RESCUED / str(number), os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = _open_in(root_fd, path)
    except OSError as exc:
        reason = "a symlink is in the way" if exc.errno == errno.ELOOP else exc.strerror
        raise TarSplitError(f"layer {layer_dir.name}: cannot read {path!r}: {reason}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TarSplitError(f"layer {layer_dir.name}: {path!r} is no longer a regular file")
        left = size
        while left:
            data = handle.read(min(left, _CHUNK))
            if not data:
                raise TarSplitError(f"layer {layer_dir.name}: {path!r} is shorter than it was")
            left -= len(data)
            yield data


class LayerTarReader:
    """A file-like view of :func:`assemble` that checks the result against the DiffID."""

    def __init__(self, layer_dir: Path, diff_id: str, size: int) -> None:
        self._pieces = assemble(layer_dir)
        self._buffer = b""
        self._hash = hashlib.sha256()
        self._left = size
        self._diff_id = diff_id
        self._name = layer_dir.name

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and self._left > 0:
            piece = next(self._pieces, None)
            if piece is None:
                raise TarSplitError(f"layer {self._name}: the rebuilt tar is shorter than recorded")
            self._buffer = piece
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        if len(data) > self._left:
            raise TarSplitError(f"layer {self._name}: the rebuilt tar is longer than recorded")
        self._left -= len(data)
        self._hash.update(data)
        if self._left == 0 and data:
            self._check()
        return data

    def _check(self) -> None:
        if next(self._pieces, None):
            raise TarSplitError(f"layer {self._name}: the rebuilt tar is longer than recorded")
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self._diff_id:
            raise TarSplitError(
                f"layer {self._name}: its files changed since it was stored (the rebuilt tar "
                f"hashes to {actual}, not {self._diff_id})"
            )

    def close(self) -> None:
        self._pieces.close()  # type: ignore[attr-defined]
