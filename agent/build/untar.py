"""Tar extraction confined to a directory, on every Python the agent runs on.

The guest's Python (Debian's 3.11.2) predates tarfile's extraction filters, so the checks
are ours: no member may land outside ``dest``, through ``..``, an absolute name, a symlink
extracted earlier in the same archive, or a hard link to a path outside; device nodes are
refused. Members are extracted one at a time in archive order, so each check sees the tree
as the earlier members left it.
"""

from __future__ import annotations

import os
import tarfile

from agent.build.errors import BuildError

# On a Python that has filters, ours has already vetted every member.
_TRUSTED: dict[str, object] = (
    {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
)


def _inside(path: str, dest: str) -> bool:
    return os.path.commonpath([path, dest]) == dest


def _vet(member: tarfile.TarInfo, dest: str, what: str) -> tarfile.TarInfo:
    def refuse(reason: str) -> BuildError:
        return BuildError(f"{what}: {member.name!r} {reason}")

    if member.ischr() or member.isblk():
        raise refuse("is a device node")
    name = os.path.normpath(member.name.lstrip("/"))
    if name == ".." or name.startswith("../"):
        raise refuse("is outside the archive's root")
    parent = os.path.realpath(os.path.join(dest, os.path.dirname(name)))
    if not _inside(parent, dest):
        raise refuse("would be written outside the destination (through a symlink)")
    if member.islnk():
        target = os.path.realpath(os.path.join(dest, member.linkname.lstrip("/")))
        if not _inside(target, dest):
            raise refuse("is a hard link to a path outside the destination")
        member.linkname = os.path.relpath(target, dest)
    member.name = name
    member.mode &= 0o7777
    return member


def extract_confined(
    archive: tarfile.TarFile, dest: str, what: str, owner: tuple[int, int] | None = None
) -> None:
    """Extract every member of ``archive`` (which may be a stream) under ``dest``, with
    the archive's owners, or ``owner`` (uid, gid) for all when given."""
    root = os.path.realpath(dest)
    while True:
        try:
            found = archive.next()
        except tarfile.ReadError as error:
            # the docker CLI ends a context it added a Dockerfile to (-f outside the
            # context) without the end-of-archive blocks: EOF between two members
            if "unexpected end of data" in str(error):
                return
            raise
        if found is None:
            return
        member = _vet(found, root, what)
        if owner is not None:
            member.uid, member.gid = owner
        archive.extract(member, root, numeric_owner=True, **_TRUSTED)  # type: ignore[arg-type]
