"""A built image on disk: its files, and which one is current.

Kept apart from the builder so that the host agent and `doctor`, which only look an image
up, do not import the builder's code at every start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    directory: Path
    kernel: Path  # uncompressed ELF vmlinux: QEMU boots it via PVH, no decompression
    kernel_compressed: Path  # the package's bzImage, for boot loaders that want one
    initrd: Path
    manifest: Path
    busybox_tar: Path
    kernel_release: str


def image_paths(directory: Path, image_id: str, release: str) -> BuiltImage:
    return BuiltImage(
        image_id=image_id,
        directory=directory,
        kernel=directory / "vmlinux",
        kernel_compressed=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        manifest=directory / "manifest.json",
        busybox_tar=directory / "busybox.tar",
        kernel_release=release,
    )


def current_image(
    images_dir: Path, image_id: str | None = None, release: str | None = None
) -> BuiltImage | None:
    """The image named by `<images_dir>/current` (or the one given), if its files exist."""
    try:
        if image_id is None or release is None:
            pointer = json.loads((images_dir / "current").read_text())
            image_id, release = pointer["image_id"], pointer["kernel_release"]
        assert image_id is not None and release is not None
        image = image_paths(images_dir / image_id, image_id, release)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = (image.kernel, image.kernel_compressed, image.initrd, image.manifest, image.busybox_tar)
    return image if all(path.is_file() for path in files) else None
