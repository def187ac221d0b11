"""The start's quick image check: any change to the inputs on disk sends it to the builder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vmctl import image_stamp
from vmctl.image_stamp import inputs_fingerprint, stamped_current, write_stamp


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins for the images, guest and agent packages."""
    root = tmp_path / "src"
    for name in image_stamp.INPUTS:
        (root / name / "sub").mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
        (root / name / "sub" / "module.py").write_text("x = 1\n")
    monkeypatch.setattr(image_stamp, "_package_dir", lambda name: root / name)
    return root


def test_every_kind_of_change_moves_the_fingerprint(sources: Path) -> None:
    module = sources / "agent" / "sub" / "module.py"
    seen = {inputs_fingerprint()}

    def changed() -> bool:
        fingerprint = inputs_fingerprint()
        new = fingerprint not in seen
        seen.add(fingerprint)
        return new

    assert not changed()  # the same files, the same answer
    module.write_text("x = 2\n")  # same size, new mtime
    os.utime(module, ns=(1, 1))
    assert changed()
    module.write_text("x = 22\n")  # new size
    os.utime(module, ns=(1, 1))
    assert changed()
    (sources / "guest" / "sub" / "new-step").write_text("")
    assert changed()
    (sources / "guest" / "sub" / "new-step").unlink()
    assert not changed()  # back to a state seen before
    (sources / "images" / "sub" / "module.py").chmod(0o755)
    assert changed()
    (sources / "agent" / "sub" / "module.py").rename(sources / "agent" / "sub" / "moved.py")
    assert changed()
    moved = sources / "agent" / "sub" / "moved.py"
    stat = moved.stat()
    moved.write_text("x = 33\n")  # same size, and the mtime put back (cp -p, rsync -a, tar)
    os.utime(moved, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert changed()  # the ctime moved


def test_a_linked_directory_counts_by_its_target(sources: Path) -> None:
    link = sources / "guest" / "sub" / "linked"
    link.symlink_to(sources / "agent")
    before = inputs_fingerprint()
    link.unlink()
    link.symlink_to(sources / "images")
    assert inputs_fingerprint() != before


def test_caches_do_not_count(sources: Path) -> None:
    before = inputs_fingerprint()
    cache = sources / "agent" / "sub" / "__pycache__"
    cache.mkdir()
    (cache / "module.cpython-311.pyc").write_bytes(b"\0")
    assert inputs_fingerprint() == before


def images_dir_with(tmp_path: Path, image_id: str) -> Path:
    images = tmp_path / "images"
    directory = images / image_id
    directory.mkdir(parents=True)
    for name in ("vmlinux", "vmlinuz", "initrd.img", "manifest.json", "busybox.tar"):
        (directory / name).write_bytes(b"x")
    (images / "current").write_text(json.dumps({"image_id": image_id, "kernel_release": "6.1"}))
    return images


def test_the_stamp_vouches_only_for_the_image_it_saw(tmp_path: Path) -> None:
    images = images_dir_with(tmp_path, "aaaa")
    assert not stamped_current(images, "inputs-1")  # no stamp yet
    write_stamp(images, "inputs-1")
    assert stamped_current(images, "inputs-1")
    assert not stamped_current(images, "inputs-2")  # the inputs changed
    (images / "aaaa" / "initrd.img").unlink()
    assert not stamped_current(images, "inputs-1")  # the image is incomplete
    images_dir_with(tmp_path, "bbbb")  # `vmctl image build` made another one current
    assert not stamped_current(images, "inputs-1")
    (images / image_stamp.STAMP).write_text("{not json")
    assert not stamped_current(images, "inputs-1")


def test_no_stamp_without_a_current_image(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    write_stamp(images, "inputs-1")
    assert not (images / image_stamp.STAMP).exists()
