"""The newc writer: round trip, hard links, device nodes, determinism."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from images.cpio import read_cpio, write_cpio
from images.tree import Device, Dir, File, HardLink, Symlink, Tree


def sample_tree() -> Tree:
    tree = Tree()
    tree.add("tmp", Dir(0o1777))
    tree.add("dev/console", Device("c", 5, 1, 0o600))
    tree.add("usr/bin/busybox", File(b"\x7fELF-busybox", 0o755))
    tree.add("usr/bin/sh", Symlink("busybox"))
    tree.add("usr/sbin/mke2fs", File(b"mke2fs-binary", 0o755))
    tree.add("usr/sbin/mkfs.ext4", HardLink("usr/sbin/mke2fs"))
    tree.add("etc/passwd", File(b"root:x:0:0::/root:/bin/sh\n", 0o644))
    return tree


def test_round_trip() -> None:
    entries = {e.name: e for e in read_cpio(write_cpio(sample_tree(), mtime=42))}
    assert list(entries) == sorted(entries, key=lambda p: p.split("/"))
    assert stat.S_ISDIR(entries["tmp"].mode) and stat.S_IMODE(entries["tmp"].mode) == 0o1777
    console = entries["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    assert entries["usr/bin/sh"].data == b"busybox"
    assert stat.S_ISLNK(entries["usr/bin/sh"].mode)
    assert entries["etc/passwd"].data.startswith(b"root:")
    assert {e.mtime for e in entries.values()} == {42}
    # Parents of added files were created, with 0755.
    assert stat.S_IMODE(entries["usr/bin"].mode) == 0o755


def test_hard_links_share_an_inode_and_data_rides_on_the_last_name() -> None:
    entries = {e.name: e for e in read_cpio(write_cpio(sample_tree()))}
    first, last = entries["usr/sbin/mke2fs"], entries["usr/sbin/mkfs.ext4"]
    assert first.ino == last.ino
    assert first.nlink == last.nlink == 2
    assert first.data == b""
    assert last.data == b"mke2fs-binary"


def test_output_is_deterministic_and_inodes_start_where_asked() -> None:
    assert write_cpio(sample_tree()) == write_cpio(sample_tree())
    inodes = [e.ino for e in read_cpio(write_cpio(sample_tree(), first_ino=0x100000))]
    assert min(inodes) == 0x100000


def test_concatenated_archives_parse() -> None:
    blob = write_cpio(sample_tree()) + b"\0" * 4 + write_cpio(sample_tree(), first_ino=1000)
    assert len(read_cpio(blob)) == 2 * len(read_cpio(write_cpio(sample_tree())))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_reads_it(tmp_path: Path) -> None:
    archive = write_cpio(sample_tree())
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    assert "usr/sbin/mkfs.ext4" in listing.split()
    # Extract (as any user: no device nodes then) and check the hard-linked content.
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames", "usr/*", "etc/*"],
        input=archive,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    assert (tmp_path / "usr/sbin/mkfs.ext4").read_bytes() == b"mke2fs-binary"
    assert (tmp_path / "usr/sbin/mke2fs").stat().st_ino == (
        tmp_path / "usr/sbin/mkfs.ext4"
    ).stat().st_ino
    assert (tmp_path / "usr/bin/sh").readlink() == Path("busybox")
