"""Write COPY/ADD sources into an image's root filesystem (a mounted container root).

Docker's rules: a directory source copies its contents; a file goes to ``dest`` itself
unless ``dest`` ends with ``/`` or is an existing directory, then into it under its own
name; several sources need a directory ``dest`` ending in ``/``. Everything written is
owned by root, or by ``--chown`` (names looked up in the image's /etc/passwd and group),
and keeps its mode unless ``--chmod`` gives one. Directories the destination needs are
created (owned like the files). ADD unpacks local tar archives (maybe compressed) into
``dest``. Paths inside the root resolve their symlinks within it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass

from agent.build.context import Source
from agent.build.errors import BuildError
from agent.build.untar import extract_confined
from agent.runtime import users
from agent.runtime.rootpath import secure_join


@dataclass(frozen=True)
class Ownership:
    uid: int = 0
    gid: int = 0
    mode: int | None = None  # --chmod


def parse_chmod(text: str) -> int | None:
    if not text:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        raise BuildError(
            f"invalid chmod parameter {text!r}: only octal modes are supported"
        ) from None
    if not 0 <= mode <= 0o7777:
        raise BuildError(f"invalid chmod parameter {text!r}")
    return mode


def ownership(root: str, chown: str, chmod: str) -> Ownership:
    """--chown / --chmod of an instruction, resolved in the image at ``root``. As in
    docker, a user without a group gets the user's numeric id as the group id too."""
    mode = parse_chmod(chmod)
    if not chown:
        return Ownership(mode=mode)
    name, _, group = chown.partition(":")
    try:
        identity = users.resolve(root, f"{name}:{group}" if group else name)
    except users.UserError as error:
        raise BuildError(
            f"unable to convert uid/gid chown string to host mapping: {error}"
        ) from None
    return Ownership(identity.uid, identity.gid if group else identity.uid, mode)


def destination(dest: str, workdir: str) -> str:
    """The absolute destination, relative ones against WORKDIR; a trailing ``/`` kept."""
    directory = dest.endswith("/") or dest in (".", "..") or dest.endswith(("/.", "/.."))
    path = dest if dest.startswith("/") else posixpath.join(workdir or "/", dest)
    path = posixpath.normpath(path)
    return path.rstrip("/") + "/" if directory else path


def copy_sources(
    root: str, sources: list[Source], dest: str, owner: Ownership, unpack: bool = False
) -> None:
    """Copy the sources into ``root`` at ``dest`` (absolute; ``/`` at the end: a directory)."""
    into_dir = dest.endswith("/")
    if len(sources) > 1 and not into_dir:
        raise BuildError(
            "When using COPY with more than one source file, the destination must be a "
            "directory and end with a /"
        )
    for source in sources:
        if source.is_dir:
            target = dest.rstrip("/") or "/"
            _make_dirs(root, target, owner)
            _copy_tree(source.path, root, target, owner)
            continue
        if unpack and _is_archive(source.path):
            target = _make_dirs(root, dest.rstrip("/") or "/", owner)
            _unpack(source.path, target)
            continue
        target_path = dest.rstrip("/") or "/"
        if into_dir or os.path.isdir(secure_join(root, target_path)):
            _make_dirs(root, target_path, owner)
            target_path = posixpath.join(target_path, source.name)
        else:
            _make_dirs(root, posixpath.dirname(target_path), owner)
        _copy_file(source.path, _entry(root, target_path), owner)


def _make_dirs(root: str, path: str, owner: Ownership) -> str:
    """Create ``path`` in the root like mkdir -p; new directories get the owner. Host path."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = posixpath.join(current, part)
        host = secure_join(root, current)
        if os.path.isdir(host):
            continue
        if os.path.lexists(host):
            raise BuildError(f"cannot copy to {path}: {current} is not a directory")
        os.mkdir(host, 0o755)
        os.chown(host, owner.uid, owner.gid)
    return secure_join(root, path)


def _apply(path: str, owner: Ownership, is_link: bool = False) -> None:
    os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    if owner.mode is not None and not is_link:
        os.chmod(path, owner.mode)


def _copy_file(source: str, target: str, owner: Ownership) -> None:
    info = os.lstat(source)
    if os.path.isdir(target) and not os.path.islink(target):
        raise BuildError(f"cannot overwrite directory {target!r} with a file")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), target)
        _apply(target, owner, is_link=True)
        return
    if not stat.S_ISREG(info.st_mode):
        raise BuildError(f"cannot copy {os.path.basename(source)}: not a regular file")
    shutil.copyfile(source, target, follow_symlinks=False)
    os.chmod(target, stat.S_IMODE(info.st_mode))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    _apply(target, owner)


def _entry(root: str, path: str) -> str:
    """The host path of ``path`` in the root, its parents resolved, the last name not
    followed (a symlink there is replaced, never written through)."""
    parent = secure_join(root, posixpath.dirname(path))
    return os.path.join(parent, posixpath.basename(path))


def _copy_tree(source: str, root: str, target: str, owner: Ownership) -> None:
    """The contents of ``source`` into the directory ``target`` (a path in ``root``)."""
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        inside = posixpath.join(target, name)
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode):
            out = secure_join(root, inside)  # an image's symlink to a directory is kept
            if os.path.lexists(out) and not os.path.isdir(out):
                os.unlink(out)
            if not os.path.lexists(out):
                os.mkdir(out)
            os.chmod(out, stat.S_IMODE(info.st_mode))
            _apply(out, owner)
            _copy_tree(path, root, inside, owner)
        else:
            _copy_file(path, _entry(root, inside), owner)


def _is_archive(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _unpack(archive_path: str, target: str) -> None:
    """ADD's local tar extraction: owners and modes as in the archive, confined to ``target``."""
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            extract_confined(archive, target, f"cannot unpack {os.path.basename(archive_path)}")
    except (tarfile.TarError, OSError) as error:
        raise BuildError(f"cannot unpack {os.path.basename(archive_path)}: {error}") from None
