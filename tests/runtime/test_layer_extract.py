"""Layer extraction as root: overlay markers, preserved metadata, and hostile tars refused."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

if os.geteuid() != 0:
    pytest.skip(
        "layer extraction tests need root (mknod, chown, trusted xattrs)", allow_module_level=True
    )

from agent.images.layers import OPAQUE_XATTR, LayerError, extract_layer  # noqa: E402
from agent.runtime import linux  # noqa: E402

pytestmark = pytest.mark.runtime
MTIME = 1_600_000_000

Entry = Callable[[tarfile.TarFile], None]


def reg(name: str, data: bytes = b"", mode: int = 0o644, **attrs: object) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, MTIME
        for key, value in attrs.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(data))

    return add


def node(name: str, kind: bytes, linkname: str = "", mode: int = 0o755, **attrs: object) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, MTIME
        for key, value in attrs.items():
            setattr(info, key, value)
        tar.addfile(info)

    return add


def layer(*entries: Entry) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for add in entries:
            add(tar)
    buffer.seek(0)
    return buffer


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A destination deep enough that '../..' from inside it stays in tmp_path."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    return tmp_path / "a" / "b" / "dest"


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


# --- overlay markers ------------------------------------------------------------------


def test_whiteouts_and_opaque_dirs_become_overlay_markers(dest: Path) -> None:
    extract_layer(
        layer(
            reg(".wh.gone"),
            node("dir/", tarfile.DIRTYPE),
            reg("dir/.wh..wh..opq"),
            reg("dir/new", b"n"),
            node("deep/er/", tarfile.DIRTYPE),
            reg("deep/er/.wh.file"),
        ),
        dest,
    )
    assert is_whiteout(dest / "gone")
    assert is_whiteout(dest / "deep" / "er" / "file")
    assert not (dest / ".wh.gone").exists()
    assert os.getxattr(dest / "dir", OPAQUE_XATTR) == b"y"
    assert not (dest / "dir" / ".wh..wh..opq").exists()
    assert sorted(os.listdir(dest / "dir")) == ["new"]
    with pytest.raises(OSError):
        os.getxattr(dest / "deep", OPAQUE_XATTR)


def test_overlay_mount_hides_whited_out_files(tmp_path: Path) -> None:
    lower, upper, merged = tmp_path / "lower", tmp_path / "upper", tmp_path / "merged"
    extract_layer(
        layer(
            reg("keep", b"k"),
            reg("gone", b"g"),
            reg("dir/old", b"o"),
            reg("dir2/stays", b"s"),
        ),
        lower,
    )
    extract_layer(
        layer(reg(".wh.gone"), reg("dir/.wh..wh..opq"), reg("dir/new", b"n"), reg("added", b"a")),
        upper,
    )
    merged.mkdir()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a private mount namespace that vanishes when it exits
        try:
            os.close(read_end)
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            linux.mount("overlay", merged, "overlay", linux.MS_RDONLY, f"lowerdir={upper}:{lower}")
            seen = {
                "root": sorted(os.listdir(merged)),
                "dir": sorted(os.listdir(merged / "dir")),
                "dir2": sorted(os.listdir(merged / "dir2")),
            }
            linux.umount(merged)
            os.write(write_end, json.dumps(seen).encode())
            os._exit(0)
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        result = json.loads(reader.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, result
    assert result == {"root": ["added", "dir", "dir2", "keep"], "dir": ["new"], "dir2": ["stays"]}
    assert not os.path.ismount(merged)


# --- metadata -------------------------------------------------------------------------


def test_preserves_owner_mode_times_xattrs_and_links(dest: Path) -> None:
    info = extract_layer(
        layer(
            node("bin/", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8),
            reg("bin/su", b"su!", mode=0o4755, uid=0, gid=0),
            reg("bin/wall", b"wall", mode=0o2755, uid=0, gid=5),
            reg(
                "data",
                b"x" * 10,
                mode=0o640,
                uid=1234,
                gid=5678,
                pax_headers={
                    "SCHILY.xattr.user.note": "hello",
                    "SCHILY.xattr.trusted.overlay.redirect": "/elsewhere",
                },
            ),
            node("link", tarfile.SYMTYPE, "/etc/passwd", uid=42, gid=43),
            node("hard", tarfile.LNKTYPE, "data"),
            node("pipe", tarfile.FIFOTYPE, mode=0o620),
        ),
        dest,
    )
    assert info.size == len(b"su!") + len(b"wall") + 10  # the hard link is not counted twice
    su, wall, data = os.lstat(dest / "bin/su"), os.lstat(dest / "bin/wall"), os.lstat(dest / "data")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    assert stat.S_IMODE(wall.st_mode) == 0o2755 and wall.st_gid == 5
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (1234, 5678, 0o640)
    assert data.st_mtime == MTIME
    bindir = os.lstat(dest / "bin")
    assert (bindir.st_uid, bindir.st_gid, stat.S_IMODE(bindir.st_mode)) == (7, 8, 0o750)
    assert bindir.st_mtime == MTIME  # set after its children were written
    assert os.getxattr(dest / "data", "user.note") == b"hello"
    with pytest.raises(OSError):  # overlay's own xattrs are never taken from a layer
        os.getxattr(dest / "data", "trusted.overlay.redirect")
    link = os.lstat(dest / "link")
    assert stat.S_ISLNK(link.st_mode) and os.readlink(dest / "link") == "/etc/passwd"
    assert (link.st_uid, link.st_gid, link.st_mtime) == (42, 43, MTIME)
    assert os.lstat(dest / "hard").st_ino == data.st_ino
    assert stat.S_ISFIFO(os.lstat(dest / "pipe").st_mode)


def test_later_entries_replace_earlier_ones(dest: Path) -> None:
    extract_layer(
        layer(
            reg("d/inner/file", b"1"),
            reg("d", b"now a file"),  # replaces a non-empty directory
            node("s", tarfile.SYMTYPE, "/etc"),
            node("s/", tarfile.DIRTYPE),  # a directory replaces the symlink, not its target
            reg("s/f", b"inside"),
        ),
        dest,
    )
    assert (dest / "d").read_bytes() == b"now a file"
    assert not (dest / "s").is_symlink()
    assert (dest / "s" / "f").read_bytes() == b"inside"
    assert not Path("/etc/f").exists()


# --- hostile layers -------------------------------------------------------------------


def refused(dest: Path, tar: io.BytesIO, entry: str, why: str) -> None:
    with pytest.raises(LayerError) as caught:
        extract_layer(tar, dest)
    message = str(caught.value)
    assert repr(entry) in message, message
    assert why in message, message
    assert not dest.exists()  # partial extraction removed


def test_refuses_parent_traversal(dest: Path, tmp_path: Path) -> None:
    refused(dest, layer(reg("ok", b"1"), reg("../x", b"2")), "../x", "contains '..'")
    refused(dest, layer(reg("a/../../y", b"2")), "a/../../y", "contains '..'")
    assert not (tmp_path / "a" / "b" / "x").exists()
    assert not (tmp_path / "a" / "y").exists()


def test_refuses_absolute_paths(dest: Path, tmp_path: Path) -> None:
    target = tmp_path / "abs-target"
    refused(dest, layer(reg(str(target), b"2")), str(target), "absolute path")
    assert not target.exists()


def test_refuses_writing_through_an_absolute_symlink(dest: Path, tmp_path: Path) -> None:
    somewhere = tmp_path / "somewhere"
    somewhere.mkdir()
    tar = layer(node("evil", tarfile.SYMTYPE, str(somewhere)), reg("evil/pwned", b"owned"))
    refused(dest, tar, "evil/pwned", "which is a symlink")
    assert list(somewhere.iterdir()) == []
    # Also as a directory entry and through a symlink deeper in the path.
    tar = layer(
        node("x/", tarfile.DIRTYPE),
        node("x/evil", tarfile.SYMTYPE, str(somewhere)),
        node("x/evil/sub/", tarfile.DIRTYPE),
    )
    refused(dest, tar, "x/evil/sub", "'x/evil', which is a symlink")
    assert list(somewhere.iterdir()) == []


def test_refuses_writing_through_a_relative_escaping_symlink(dest: Path, tmp_path: Path) -> None:
    tar = layer(node("up", tarfile.SYMTYPE, "../../.."), reg("up/pwned", b"owned"))
    refused(dest, tar, "up/pwned", "which is a symlink")
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path.parent / "pwned").exists()
    # A symlink to a directory inside the layer is refused the same way: no entry may rely
    # on resolving a symlink at extraction time.
    tar = layer(
        node("real/", tarfile.DIRTYPE), node("alias", tarfile.SYMTYPE, "real"), reg("alias/f", b"1")
    )
    refused(dest, tar, "alias/f", "which is a symlink")


def test_refuses_hard_links_out_of_the_layer(dest: Path, tmp_path: Path) -> None:
    refused(
        dest,
        layer(node("passwd", tarfile.LNKTYPE, "/etc/passwd")),
        "passwd",
        "hard link to the absolute path '/etc/passwd'",
    )
    outside = tmp_path / "a" / "b" / "outside"
    outside.write_bytes(b"secret")
    refused(dest, layer(node("h", tarfile.LNKTYPE, "../outside")), "h", "contains '..'")
    assert os.stat(outside).st_nlink == 1
    # Through a symlink the layer itself planted, and to a symlink: neither is a regular file.
    tar = layer(node("s", tarfile.SYMTYPE, "/etc"), node("h", tarfile.LNKTYPE, "s/passwd"))
    refused(dest, tar, "h", "'s', which is a symlink")
    tar = layer(node("s", tarfile.SYMTYPE, "/etc/passwd"), node("h", tarfile.LNKTYPE, "s"))
    refused(dest, tar, "h", "not a regular file")
    refused(dest, layer(node("h", tarfile.LNKTYPE, "missing")), "h", "not a regular file")
    assert os.stat("/etc/passwd").st_nlink == 1


def test_refuses_device_nodes(dest: Path) -> None:
    tar = layer(reg("ok", b"1"), node("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3))
    refused(dest, tar, "dev/null", "character device node")
    refused(
        dest,
        layer(node("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)),
        "sda",
        "block device node",
    )


def test_char_device_zero_zero_is_taken_as_a_whiteout(dest: Path) -> None:
    extract_layer(layer(node("gone", tarfile.CHRTYPE, devmajor=0, devminor=0)), dest)
    assert is_whiteout(dest / "gone")
