"""The VM image: recipe and builder (kernel + layered initramfs + manifest).

from images import build_image, current_image
image = build_image(images_dir, cache_dir)   # -> BuiltImage(kernel=..., initrd=..., ...)
"""

from images.builder import BUILDER_VERSION, BuiltImage, build_image, current_image
from images.errors import ImageBuildError

__all__ = ["BUILDER_VERSION", "BuiltImage", "ImageBuildError", "build_image", "current_image"]
