"""Reading .deb files in memory: ar container, compressed data.tar, merged /usr."""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile

import pytest

from images.debfile import data_tar, extract_into, read_ar
from images.errors import ImageBuildError
from images.tree import File, HardLink, Symlink, Tree


def ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def data_tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:

        def add(
            name: str, kind: bytes, data: bytes = b"", mode: int = 0o644, link: str = ""
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.linkname = kind, mode, len(data), link
            archive.addfile(info, io.BytesIO(data) if data else None)

        add("./", tarfile.DIRTYPE, mode=0o755)
        add("./bin/", tarfile.DIRTYPE, mode=0o755)
        add("./bin/tool", tarfile.REGTYPE, b"odd-sized!", 0o755)
        add("./sbin/", tarfile.DIRTYPE, mode=0o755)
        add("./sbin/tool-link", tarfile.LNKTYPE, link="./bin/tool")
        add("./sbin/alias", tarfile.SYMTYPE, link="../bin/tool")
        add("./usr/share/doc/pkg/copyright", tarfile.REGTYPE, b"(c)")
    return buffer.getvalue()


def deb(compression: str = "xz") -> bytes:
    payload = data_tar_bytes()
    packed = lzma.compress(payload) if compression == "xz" else gzip.compress(payload)
    return ar(
        [
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", lzma.compress(b"")),
            (f"data.tar.{compression}", packed),
        ]
    )


def test_read_ar_handles_odd_sizes() -> None:
    members = read_ar(ar([("a", b"odd"), ("b", b"even")]))
    assert members == {"a": b"odd", "b": b"even"}


def test_read_ar_rejects_non_ar() -> None:
    with pytest.raises(ImageBuildError, match="ar magic"):
        read_ar(b"PK\x03\x04")


@pytest.mark.parametrize("compression", ["xz", "gz"])
def test_data_tar_is_decompressed(compression: str) -> None:
    assert data_tar(deb(compression)) == data_tar_bytes()


def test_extract_into_a_merged_usr_tree() -> None:
    tree = Tree.merged_usr()
    extract_into(tree, deb(), "pkg")
    assert tree.get("usr/bin/tool") == File(b"odd-sized!", 0o755)
    assert tree.get("usr/sbin/tool-link") == HardLink("usr/bin/tool")
    # "../bin/tool" from /sbin is /bin/tool, which is usr/bin/tool: "../bin/tool" again.
    assert isinstance(tree.get("usr/sbin/alias"), Symlink)
    assert tree.resolve("usr/sbin/alias") == "usr/bin/tool"
    assert tree.get("bin") == Symlink("usr/bin")
    assert tree.owners["usr/bin/tool"] == "pkg"


def test_traversal_in_a_package_is_refused() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("./../../etc/evil")
        archive.addfile(info, io.BytesIO(b""))
    bad = ar([("debian-binary", b"2.0\n"), ("data.tar", buffer.getvalue())])
    with pytest.raises(ImageBuildError, match=r"\.\."):
        extract_into(Tree.merged_usr(), bad, "evil")
