"""Read .deb files in memory: the ar container, then data.tar into a Tree."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import subprocess
import tarfile

from images.errors import ImageBuildError
from images.tree import Device, Dir, File, HardLink, Symlink, Tree

_AR_MAGIC = b"!<arch>\n"


def read_ar(data: bytes) -> dict[str, bytes]:
    """Members of an ar archive (the common format dpkg writes: 60-byte headers)."""
    if not data.startswith(_AR_MAGIC):
        raise ImageBuildError("not a .deb: ar magic missing")
    members: dict[str, bytes] = {}
    offset = len(_AR_MAGIC)
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        if header[58:60] != b"`\n":
            raise ImageBuildError(f"corrupt ar header at offset {offset}")
        name = header[0:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = offset + 60
        members[name] = data[start : start + size]
        offset = start + size + (size & 1)  # members are 2-byte aligned
    return members


def decompress(name: str, payload: bytes) -> bytes:
    if name.endswith(".xz") or name.endswith(".lzma"):
        return lzma.decompress(payload)
    if name.endswith(".gz"):
        return gzip.decompress(payload)
    if name.endswith(".bz2"):
        return bz2.decompress(payload)
    if name.endswith(".zst"):
        # No zstd in the stdlib; Debian itself only uses it on Ubuntu-built packages.
        if shutil.which("zstd") is None:
            raise ImageBuildError(f"{name} needs the zstd tool", "apt-get install zstd")
        return subprocess.run(
            ["zstd", "-dc"], input=payload, capture_output=True, check=True
        ).stdout
    if name.endswith(".tar"):
        return payload
    raise ImageBuildError(f"unsupported .deb member compression: {name}")


def data_tar(deb: bytes) -> bytes:
    members = read_ar(deb)
    for name, payload in members.items():
        if name.startswith("data.tar"):
            return decompress(name, payload)
    raise ImageBuildError("no data.tar member in .deb")


def extract_into(tree: Tree, deb: bytes, owner: str) -> None:
    """Add every entry of the package's data.tar to `tree`, owned by `owner`."""
    with tarfile.open(fileobj=io.BytesIO(data_tar(deb)), mode="r:") as archive:
        for member in archive:
            mode = member.mode & 0o7777
            if member.isdir():
                tree.add(member.name, Dir(mode), owner)
            elif member.isreg():
                stream = archive.extractfile(member)
                assert stream is not None
                tree.add(member.name, File(stream.read(), mode), owner)
            elif member.issym():
                tree.add(member.name, Symlink(member.linkname), owner)
            elif member.islnk():
                tree.add(member.name, HardLink(member.linkname), owner)
            elif member.ischr() or member.isblk():
                kind = "c" if member.ischr() else "b"
                tree.add(member.name, Device(kind, member.devmajor, member.devminor, mode), owner)
            # FIFOs and other exotica do not occur in the packages the guest uses.
