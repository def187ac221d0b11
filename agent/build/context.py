"""The build context: the request's tar unpacked into a directory, and COPY/ADD sources.

Sources are paths relative to the context (a leading ``/`` too); one that leaves it
(``../x``) is refused, and symlinks inside the context resolve within it. Wildcards follow
Go's ``filepath.Match`` and are matched against every path in the context. What a set of
sources holds is summarised by a content hash (paths, types, modes, link targets and file
contents; owners and mtimes are ignored, as COPY resets both), the classic cache's key.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.build.errors import BuildError
from agent.build.patterns import PatternError, glob_regex, has_glob
from agent.build.untar import extract_confined
from agent.runtime.rootpath import secure_join


def extract(body: BinaryIO, dest: Path) -> None:
    """Unpack the context tar (maybe compressed) into the empty directory ``dest``."""
    try:
        with tarfile.open(fileobj=body, mode="r|*") as archive:
            extract_confined(archive, str(dest), "invalid build context", owner=(0, 0))
    except tarfile.ReadError as error:
        if "empty file" in str(error):
            return  # no context at all: the Dockerfile lookup reports it
        raise BuildError(f"the build context is not a valid tar archive: {error}") from None
    except (tarfile.TarError, EOFError) as error:
        raise BuildError(f"the build context is not a valid tar archive: {error}") from None


def clean_source(source: str, keyword: str) -> str:
    """A source as a context-relative path ("." for the whole context)."""
    normal = posixpath.normpath(source.lstrip("/") or ".")
    if normal == ".." or normal.startswith("../"):
        raise BuildError(f"{keyword} failed: forbidden path outside the build context: {source} ()")
    return normal


@dataclass(frozen=True)
class Source:
    """One matched source: its path in its root (host) and the name it is copied under."""

    path: str  # host path, symlinks resolved within the root
    name: str  # the base name used when copying into a directory
    is_dir: bool


def resolve_sources(root: str, sources: list[str], keyword: str) -> list[Source]:
    """Every source path or pattern, matched in ``root``; missing ones are errors."""
    found: list[Source] = []
    for source in sources:
        relative = clean_source(source, keyword)
        if has_glob(relative):
            matched = _glob(root, relative)
            if not matched:
                continue
            found.extend(matched)
            continue
        path = secure_join(root, relative)
        if not os.path.lexists(path):
            raise BuildError(
                f"{keyword} failed: file not found in build context or excluded by "
                f".dockerignore: stat {relative}: file does not exist"
            )
        found.append(Source(path, posixpath.basename(relative), os.path.isdir(path)))
    if not found:
        raise BuildError(f"{keyword} failed: no source files were specified")
    return found


def _glob(root: str, pattern: str) -> list[Source]:
    try:
        regex = glob_regex(pattern)
    except PatternError as error:
        raise BuildError(str(error)) from None
    matched = []
    for relative in walk(root):
        if regex.match(relative):
            path = secure_join(root, relative)
            matched.append(Source(path, posixpath.basename(relative), os.path.isdir(path)))
    return matched


def walk(root: str, relative: str = "") -> Iterator[str]:
    """Every path under ``root`` (not following symlinks), parents before children, sorted."""
    directory = os.path.join(root, relative) if relative else root
    for name in sorted(os.listdir(directory)):
        path = f"{relative}/{name}" if relative else name
        yield path
        if os.path.isdir(os.path.join(root, path)) and not os.path.islink(os.path.join(root, path)):
            yield from walk(root, path)


def content_hash(sources: list[Source]) -> str:
    """sha256 over what copying the sources writes: names, types, modes, links, contents."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(f"source {source.name}\0".encode())
        _hash_entry(digest, source.path, source.name)
        if source.is_dir:
            for relative in walk(source.path):
                _hash_entry(digest, os.path.join(source.path, relative), relative)
    return digest.hexdigest()


def _hash_entry(digest: hashlib._Hash, path: str, name: str) -> None:
    info = os.lstat(path)
    digest.update(f"{name}\0{stat.S_IFMT(info.st_mode)}\0{stat.S_IMODE(info.st_mode)}\0".encode())
    if stat.S_ISLNK(info.st_mode):
        digest.update(os.readlink(path).encode() + b"\0")
    elif stat.S_ISREG(info.st_mode):
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
