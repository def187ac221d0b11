"""The overlay layer: the project's own files (guest/rootfs and the agent package).

It is rebuilt whenever those files change, on top of a cached base, so an edit to the
agent costs a few seconds and no network.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import posixpath
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from images.errors import ImageBuildError
from images.listing import skeleton
from images.pycompile import Interpreter, compile_sources
from images.tree import Dir, File, Symlink, Tree, normalize
from images.walk import walk


@dataclass(frozen=True)
class Source:
    guest_path: str  # where it lands, relative to /
    host_path: Path
    kind: str  # "file" or "symlink"
    mode: int  # 0o755 or 0o644 for files
    data: bytes  # file content or link target


def package_dir(name: str) -> Path:
    """Where an importable project package lives (editable installs included)."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ImageBuildError(
            f"cannot import the {name!r} package to find its files: {exc}",
            "install the project (pip install -e .) before building the image",
        ) from exc
    if module.__file__ is None:
        raise ImageBuildError(f"package {name!r} has no __file__")
    return Path(module.__file__).resolve().parent


def _source(guest_path: str, host: Path) -> Source:
    info = host.lstat()
    if stat.S_ISLNK(info.st_mode):
        return Source(guest_path, host, "symlink", 0o777, os.readlink(host).encode())
    # Only the executable bit is carried over: a developer's umask must not leak in.
    mode = 0o755 if info.st_mode & 0o111 else 0o644
    return Source(guest_path, host, "file", mode, host.read_bytes())


def collect_sources(guest_rootfs: Path, agent_package: Path, agent_dir: str) -> list[Source]:
    sources: list[Source] = []
    if guest_rootfs.is_dir():
        for host in walk(guest_rootfs):
            if host.name.endswith(".pyc"):
                continue
            sources.append(_source(normalize(str(host.relative_to(guest_rootfs))), host))
    for host in walk(agent_package):
        if host.suffix == ".py" and host.is_file() and not host.is_symlink():
            rel = host.relative_to(agent_package.parent).as_posix()  # "agent/..."
            sources.append(_source(f"{agent_dir}/{rel}", host))
    return sorted(sources, key=lambda s: s.guest_path)


def sources_digest(sources: list[Source]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(
            f"{source.guest_path}\0{source.kind}\0{source.mode:o}\0".encode()
            + hashlib.sha256(source.data).digest()
        )
    return digest.hexdigest()


def build_overlay(
    sources: list[Source],
    base_listing: list[dict[str, Any]],
    agent_dir: str,
    python: Interpreter | None,
    cache_tag: str,
) -> Tree:
    """A tree holding the sources, their parent directories and agent bytecode.

    Paths resolve through the base's symlinks (so a file under guest/rootfs/bin lands in
    usr/bin, never replacing the /bin symlink), and parent directories keep the base's
    modes (the kernel re-applies a directory's mode when an archive lists it again).
    """
    view = skeleton(base_listing)
    added: list[str] = []
    for source in sources:
        node: File | Symlink
        if source.kind == "symlink":
            node = Symlink(source.data.decode())
        else:
            node = File(source.data, source.mode)
        added.append(view.add(source.guest_path, node, "overlay"))

    if python is not None:
        added += _agent_bytecode(view, sources, added, agent_dir, python, cache_tag)

    # Keep only what the overlay adds, plus every directory above it.
    overlay = Tree()
    for path in added:
        parts = path.split("/")
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            above = view.get(parent)
            overlay.nodes[parent] = above if isinstance(above, Dir) else Dir(0o755)
        entry = view.get(path)
        assert entry is not None
        overlay.nodes[path] = entry
        overlay.owners[path] = "overlay"
    return overlay


def _agent_bytecode(
    view: Tree,
    sources: list[Source],
    added: list[str],
    agent_dir: str,
    python: Interpreter,
    cache_tag: str,
) -> list[str]:
    """Compile the agent's modules into __pycache__ (the .py stays for tracebacks)."""
    modules = [
        (source.host_path, path)
        for source, path in zip(sources, added, strict=True)
        if source.guest_path.startswith(agent_dir + "/") and source.kind == "file"
    ]
    result: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vmctl-pyc-") as tmp:
        jobs = [
            (host, Path(tmp) / f"{i}.pyc", "/" + path) for i, (host, path) in enumerate(modules)
        ]
        failed = {shown for shown, _ in compile_sources(python, jobs)}
        for _, output, shown in jobs:
            if shown in failed:
                continue  # the guest compiles it at import and reports the error there
            directory, name = posixpath.split(shown.lstrip("/"))
            pyc = f"{directory}/__pycache__/{name[:-3]}.{cache_tag}.pyc"
            result.append(view.add(pyc, File(output.read_bytes(), 0o644), "overlay"))
    return result
