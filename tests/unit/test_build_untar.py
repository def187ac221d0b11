"""Tar extraction confined to a directory (build contexts and ADD's local archives)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.build.errors import BuildError
from agent.build.untar import extract_confined


def archive(*members: tuple[str, str, str]) -> tarfile.TarFile:
    """(kind, name, content or link target) → an archive opened for reading as a stream."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value.encode()))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                         "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE}[kind]  # fmt: skip
            info.linkname = value
            tar.addfile(info)
    data.seek(0)
    return tarfile.open(fileobj=data, mode="r|")


def test_members_land_inside_with_the_owner_asked(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_confined(
        archive(("dir", "a", ""), ("file", "/a/b.txt", "hi"), ("sym", "a/up", "../../x"),
                ("hard", "a/again", "a/b.txt")),
        str(dest), "test", owner=(0, 0),
    )  # fmt: skip
    assert (dest / "a" / "b.txt").read_text() == "hi"
    assert (dest / "a" / "again").read_text() == "hi"
    # a symlink may point anywhere: it is only ever resolved inside the destination
    assert (dest / "a" / "up").readlink() == Path("../../x")


@pytest.mark.parametrize(
    "members",
    [
        [("file", "../escape", "x")],
        [("sym", "link", "/"), ("file", "link/escape", "x")],
        [("sym", "link", ".."), ("file", "link/escape", "x")],
        [("hard", "h", "../../outside")],
        [("chr", "dev", "")],
    ],
    ids=["dotdot", "absolute-symlink", "relative-symlink", "hardlink-out", "device"],
)
def test_nothing_escapes(tmp_path: Path, members: list[tuple[str, str, str]]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BuildError, match="test: "):
        extract_confined(archive(*members), str(dest), "test")
    assert not (tmp_path / "escape").exists()
