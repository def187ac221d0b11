"""The VM image: recipe and builder (kernel + layered initramfs + manifest).

    from images.builder import build_image
    image = build_image(images_dir, cache_dir)   # -> BuiltImage(kernel=..., initrd=..., ...)
    from images.built import current_image       # the current one, without the builder

Submodules are imported by name: this package imports nothing, so reading an image's
paths (every `machine start`) does not load the builder.
"""
