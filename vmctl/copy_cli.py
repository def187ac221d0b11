"""`vmctl cp`, `vmctl top` and `vmctl stats --no-stream`, as their docker namesakes.

`cp SRC DST` copies between this machine and a container: one side is `CONTAINER:PATH`.
It follows docker cp's rules: into an existing directory the source keeps its name, else it
takes the destination's; `SRC/.` copies a directory's contents; `-` reads or writes a tar
on stdin/stdout; `-L` follows a symlink source; `-a` gives the files to the container's
user. Archives from the engine are unpacked here without ever writing through a symlink or
outside the destination.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import posixpath
import stat
import sys
import tarfile
from collections.abc import Iterator
from typing import IO, Any, cast

from vmctl.containers_cli import engine_for, with_hint
from vmctl.engine_client import ChunkedWriter, EngineClient, EngineError
from vmctl.errors import VmctlError
from vmctl.paths import Paths
from vmctl.verbs import verb_adder

GO_DIR = 1 << 31  # Go's os.ModeDir, in the path stat's mode
GO_SYMLINK = 1 << 27


def split_target(arg: str) -> tuple[str | None, str]:
    """docker cp's rule: `NAME:PATH` names a container unless the argument is a local path
    (absolute, or starting with "." so `./a:b` is a file)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    container, _, path = arg.partition(":")
    if not container:
        raise VmctlError(f"invalid copy argument {arg!r}", hint="use CONTAINER:PATH")
    return container, path


def copies_contents(path: str) -> bool:
    """`dir/.`: the directory's contents, not the directory."""
    return path == "." or path.endswith("/.")


def base_name(path: str) -> str:
    return "." if copies_contents(path) else posixpath.basename(posixpath.normpath(path))


# -- from a container --------------------------------------------------------------------


class _Chunks:
    """An iterator of byte chunks as a readable stream, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def rebase(name: str, old: str, new: str) -> str:
    """An entry's name with its first component ``old`` (the copied path's base) as
    ``new`` ("." puts the contents in the destination itself)."""
    if old == "/":
        rest = name.lstrip("/")
    elif name.rstrip("/") == old:
        rest = ""
    elif name.startswith(old + "/"):
        rest = name[len(old) + 1 :]
    else:
        raise VmctlError(f"the engine's archive has an unexpected entry {name!r}")
    return posixpath.normpath(posixpath.join(new, rest)) if rest else new


class LocalExtractor:
    """Unpacks into a directory of this machine: entries never leave it, and no path is
    written through a symlink (one the archive made, or one that was there)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._dir_times: list[tuple[str, float]] = []

    def _target(self, relative: str) -> str:
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise VmctlError(f"refusing archive entry {relative!r}: it leaves the destination")
        current = self.root
        for part in parts[:-1]:
            current = os.path.join(current, part)
            info = os.lstat(current)  # the archive lists directories before their entries
            if not stat.S_ISDIR(info.st_mode):
                raise VmctlError(f"refusing to write through {current}: not a directory")
        return os.path.join(current, parts[-1]) if parts else self.root

    def extract(self, tar: tarfile.TarFile, old: str, new: str) -> None:
        for member in tar:
            path = self._target(rebase(member.name, old, new))
            self._one(tar, member, path, old, new)
        for path, mtime in reversed(self._dir_times):
            with contextlib.suppress(OSError):
                os.utime(path, (mtime, mtime))

    def _one(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, old: str, new: str
    ) -> None:
        with contextlib.suppress(FileNotFoundError):
            existing = os.lstat(path)
            if member.isdir() and stat.S_ISDIR(existing.st_mode):
                self._finish(member, path)
                return
            if stat.S_ISDIR(existing.st_mode) != member.isdir():
                kind = "directory" if member.isdir() else "file"
                raise VmctlError(f"cannot overwrite {path} with a {kind}")
            os.unlink(path)
        if member.isdir():
            os.mkdir(path, 0o700)
        elif member.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(member)
                while source is not None and (data := source.read(1 << 20)):
                    out.write(data)
        elif member.issym():
            os.symlink(member.linkname, path)
            return
        elif member.islnk():
            os.link(self._target(rebase(member.linkname, old, new)), path, follow_symlinks=False)
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            print(f"vmctl cp: skipping {member.name}: a device node", file=sys.stderr)
            return
        self._finish(member, path)

    def _finish(self, member: tarfile.TarInfo, path: str) -> None:
        os.chmod(path, member.mode & 0o1777)  # files become the user's; no setuid from afar
        if member.isdir():
            self._dir_times.append((path, member.mtime))
        else:
            os.utime(path, (member.mtime, member.mtime))


def copy_from(engine: EngineClient, container: str, src: str, dst: str, follow: bool) -> None:
    renamed = ""
    if follow:
        info = engine.stat_path(container, src)
        if int(info.get("mode", 0)) & GO_SYMLINK:
            renamed = base_name(src)  # the target's content under the link's name
            src = str(info.get("linkTarget") or src)
    info, chunks = engine.get_archive(container, src)
    if dst == "-":
        out = sys.stdout.buffer
        with contextlib.suppress(BrokenPipeError):  # the reader had enough (| head)
            for chunk in chunks:
                out.write(chunk)
            out.flush()
        return
    old = base_name(src) if copies_contents(src) else str(info.get("name") or base_name(src))
    is_dir = bool(int(info.get("mode", 0)) & GO_DIR)
    if os.path.isdir(dst):
        parent, new = dst, (renamed or old if old not in (".", "/") else ".")
    elif os.path.lexists(dst):
        if is_dir:
            raise VmctlError(f"cannot copy a directory to a file: {dst}")
        parent, new = os.path.dirname(os.path.abspath(dst)), os.path.basename(dst)
    else:
        if dst.endswith("/") and not is_dir:
            raise VmctlError(f"destination directory {dst} does not exist")
        parent = os.path.dirname(os.path.abspath(dst.rstrip("/")))
        new = os.path.basename(dst.rstrip("/"))
        if not os.path.isdir(parent):
            raise VmctlError(f"destination directory {parent} does not exist")
    with tarfile.open(fileobj=cast(IO[bytes], _Chunks(chunks)), mode="r|") as tar:
        LocalExtractor(parent).extract(tar, old, new)


# -- into a container --------------------------------------------------------------------


def copy_to(
    engine: EngineClient, src: str, container: str, dst: str, follow: bool, archive: bool
) -> None:
    if src == "-":  # a tar on stdin, extracted into the directory dst
        engine.put_archive(container, dst, _pipe_stdin, archive)
        return
    local = os.path.realpath(src) if follow and os.path.islink(src) else src
    try:
        src_is_dir = stat.S_ISDIR(os.lstat(local).st_mode)
    except FileNotFoundError:
        raise VmctlError(f"could not find the file {src} on this machine") from None
    if copies_contents(src) and not src_is_dir:
        raise VmctlError(f"{src}: not a directory")
    try:
        target = engine.stat_path(container, dst)
        if int(target.get("mode", 0)) & GO_SYMLINK:  # copy to what the link points at
            dst = str(target.get("linkTarget") or dst)
            target = engine.stat_path(container, dst)
    except EngineError as error:
        if error.status != 404:
            raise
        target = None
    contents = copies_contents(src)
    if target is not None and int(target.get("mode", 0)) & GO_DIR:
        directory, name = dst, None if contents else base_name(src)
    elif target is not None:
        if src_is_dir:
            raise VmctlError(f"cannot copy a directory to a file: {container}:{dst}")
        directory, name = posixpath.dirname(dst) or "/", posixpath.basename(dst)
    else:
        if dst.endswith("/") and not src_is_dir:
            raise VmctlError(f"destination directory {container}:{dst} does not exist")
        bare = dst.rstrip("/") or "/"
        directory, name = posixpath.dirname(bare) or "/", posixpath.basename(bare)

    def write(body: ChunkedWriter) -> None:
        with tarfile.open(
            fileobj=cast(IO[bytes], body), mode="w|", format=tarfile.PAX_FORMAT
        ) as tar:
            if name is None:  # the contents, into the existing directory
                for entry in sorted(os.listdir(local)):
                    tar.add(os.path.join(local, entry), arcname=entry)
            else:
                tar.add(local, arcname=name)

    engine.put_archive(container, directory, write, archive)


def _pipe_stdin(body: ChunkedWriter) -> None:
    stdin = sys.stdin.buffer
    while data := stdin.read(1 << 20):
        body.write(data)


def cmd_cp(paths: Paths, args: argparse.Namespace) -> int:
    src_container, src = split_target(args.src)
    dst_container, dst = split_target(args.dst)
    if (src_container is None) == (dst_container is None):
        raise VmctlError(
            "copying needs a container on exactly one side",
            hint="vmctl cp CONTAINER:PATH LOCAL, or vmctl cp LOCAL CONTAINER:PATH",
        )
    engine = engine_for(paths, args)
    try:
        if src_container is not None:
            copy_from(engine, src_container, src, dst, args.follow_link)
        else:
            assert dst_container is not None
            copy_to(engine, src, dst_container, dst, args.follow_link, args.archive)
    except EngineError as e:
        raise with_hint(e) from None
    except OSError as e:
        raise VmctlError(
            f"copy failed: {e.strerror or e}: {e.filename or ''}".rstrip(": ")
        ) from None
    return 0


# -- top and stats -----------------------------------------------------------------------


def table(titles: list[str], rows: list[list[str]]) -> str:
    """docker's tab-aligned table: columns padded to their widest cell, three spaces apart."""
    widths = [
        max(len(str(r[i])) if i < len(r) else 0 for r in [titles, *rows])
        for i in range(len(titles))
    ]
    lines = []
    for row in [titles, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        lines.append("   ".join([*cells, str(row[-1]) if row else ""]).rstrip())
    return "\n".join(lines) + "\n"


def cmd_top(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        result = engine.top(args.container, " ".join(args.ps_args))
    except EngineError as e:
        raise with_hint(e) from None
    titles = [str(t) for t in result.get("Titles") or []]
    rows = [[str(c) for c in row] for row in result.get("Processes") or []]
    print(table(titles, rows), end="")
    return 0


def human_size(value: float, binary: bool) -> str:
    """docker's sizes: 1.672MiB (memory, binary) or 1.11kB (I/O, decimal)."""
    base = 1024.0 if binary else 1000.0
    units = ["B", "KiB", "MiB", "GiB", "TiB"] if binary else ["B", "kB", "MB", "GB", "TB"]
    for unit in units:
        if value < base or unit == units[-1]:
            return f"{value:.4g}{unit}"
        value /= base
    return f"{value:.4g}{units[-1]}"


def stats_row(doc: dict[str, Any]) -> dict[str, str]:
    """One container's `docker stats --no-stream --format json` fields, computed as the
    docker CLI does."""
    cpu, pre = doc.get("cpu_stats") or {}, doc.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (
        pre.get("cpu_usage") or {}
    ).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or 1
    cpu_percent = (
        cpu_delta / system_delta * online * 100 if cpu_delta > 0 and system_delta > 0 else 0.0
    )
    memory = doc.get("memory_stats") or {}
    used = memory.get("usage", 0) - (memory.get("stats") or {}).get("inactive_file", 0)
    limit = memory.get("limit", 0)
    networks = (doc.get("networks") or {}).values()
    rx = sum(n.get("rx_bytes", 0) for n in networks)
    tx = sum(n.get("tx_bytes", 0) for n in networks)
    blkio = (doc.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    read = sum(e.get("value", 0) for e in blkio if str(e.get("op", "")).lower() == "read")
    written = sum(e.get("value", 0) for e in blkio if str(e.get("op", "")).lower() == "write")
    return {
        "BlockIO": f"{human_size(read, False)} / {human_size(written, False)}",
        "CPUPerc": f"{cpu_percent:.2f}%",
        "ID": str(doc.get("id", ""))[:12],
        "MemPerc": f"{used / limit * 100 if limit else 0:.2f}%",
        "MemUsage": f"{human_size(used, True)} / {human_size(limit, True)}",
        "Name": str(doc.get("name", "")).lstrip("/"),
        "NetIO": f"{human_size(rx, False)} / {human_size(tx, False)}",
        "PIDs": str((doc.get("pids_stats") or {}).get("current", 0)),
    }


STATS_COLUMNS = (
    ("CONTAINER ID", "ID"),
    ("NAME", "Name"),
    ("CPU %", "CPUPerc"),
    ("MEM USAGE / LIMIT", "MemUsage"),
    ("MEM %", "MemPerc"),
    ("NET I/O", "NetIO"),
    ("BLOCK I/O", "BlockIO"),
    ("PIDS", "PIDs"),
)


def cmd_stats(paths: Paths, args: argparse.Namespace) -> int:
    if not args.no_stream:
        raise VmctlError("vmctl stats shows one reading", hint="add --no-stream")
    engine = engine_for(paths, args)
    names = args.containers or [c["Id"] for c in engine.list_containers()]
    rows = []
    for name in names:
        try:
            rows.append(stats_row(engine.container_stats(name)))
        except EngineError as e:
            raise with_hint(e) from None
    if args.format == "json":
        import json

        for row in rows:
            print(json.dumps(row, sort_keys=True, separators=(",", ":")))
        return 0
    print(
        table([t for t, _ in STATS_COLUMNS], [[r[k] for _, k in STATS_COLUMNS] for r in rows]),
        end="",
    )
    return 0


def add_parsers(top: Any, parent: argparse.ArgumentParser) -> None:
    verb = verb_adder(top, parent)

    cp = verb("cp", cmd_cp, "copy files between a container and this machine (like docker cp)")
    cp.add_argument("-L", "--follow-link", action="store_true", help="follow a symlink source")
    cp.add_argument("-a", "--archive", action="store_true", help="give files the container user")
    cp.add_argument("src", metavar="SRC", help="CONTAINER:PATH, a local path, or - (a tar)")
    cp.add_argument("dst", metavar="DST", help="CONTAINER:PATH, a local path, or - (a tar)")

    tp = verb("top", cmd_top, "a running container's processes")
    tp.add_argument("container")
    tp.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS-OPTIONS")

    st = verb("stats", cmd_stats, "containers' resource use (with --no-stream)")
    st.add_argument("--no-stream", action="store_true", help="one reading, then exit")
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.add_argument("containers", nargs="*", metavar="CONTAINER")
