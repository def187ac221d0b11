"""A quick "is the image still current?" for each machine start.

The builder's own check is by content: it reads the recipe and the package lists, hashes
every file of guest/ and agent/, and its code takes a while to import: ~0.1 s on the way
to QEMU's start. After a start's check, a stamp records what the image's inputs looked
like on disk (path, mode, size, mtime, ctime and inode of every file under the project's
images/, guest/ and agent/ packages, and the target of every symlink) and which image
they gave. A later start whose inputs look the same, with that image still current and
complete, skips the builder.

Anything that differs (a file edited, added, removed or only touched) means the full
check, which decides by content as always: the stamp can skip work, never choose a
stale image. `vmctl image build` always runs the full check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from images.built import current_image
from images.walk import walk
from vmctl.atomic import write_atomic

STAMP = "start-stamp.json"
INPUTS = ("images", "guest", "agent")  # packages whose files make the image


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def inputs_fingerprint() -> str:
    """A digest of the on-disk state (not the content) of every file the image is made of."""
    digest = hashlib.sha256()
    for name in INPUTS:
        root = _package_dir(name)
        digest.update(f"package {name} {root}\n".encode())
        if root is None:
            continue
        for path in walk(root):  # the files the overlay reads, and more (images/)
            digest.update(_file_state(path))
    return digest.hexdigest()


def _file_state(path: Path) -> bytes:
    """Mode, size and mtime, and inode and ctime: a tool that restores mtimes (cp -p, rsync -a,
    tar) still gives a new ctime, which nobody can set, and a save by rename a new inode."""
    st = os.lstat(path)
    target = os.readlink(path) if os.path.islink(path) else ""
    return (
        f"{path}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0"
        f"{st.st_ino}\0{target}\n"
    ).encode()


def stamped_current(images_dir: Path, fingerprint: str) -> bool:
    """Whether the stamp vouches for the current image: same inputs, image complete."""
    try:
        stamp = json.loads((images_dir / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("inputs") != fingerprint:
        return False
    image = current_image(images_dir)
    return image is not None and image.image_id == stamp.get("image_id")


def write_stamp(images_dir: Path, fingerprint: str) -> None:
    """Record that inputs in the state ``fingerprint`` gave the current image."""
    image = current_image(images_dir)
    if image is None:
        return
    stamp = {"inputs": fingerprint, "image_id": image.image_id}
    write_atomic(images_dir / STAMP, json.dumps(stamp) + "\n")
