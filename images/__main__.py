"""`python -m images build`: build the VM image from images/recipe.toml."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from images.builder import build_image
from images.errors import ImageBuildError
from images.recipe import DEFAULT_RECIPE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build kernel + initramfs + manifest")
    build.add_argument("--images-dir", type=Path, default=Path("/tmp/vmctl-images"))
    build.add_argument("--cache-dir", type=Path, default=Path("/tmp/vmctl-image-cache"))
    build.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    build.add_argument("--refresh", action="store_true", help="run apt-get update first")
    args = parser.parse_args(argv)
    try:
        image = build_image(
            args.images_dir,
            args.cache_dir,
            progress=print,
            refresh=args.refresh,
            recipe_path=args.recipe,
        )
    except ImageBuildError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    print(f"kernel  {image.kernel}\ninitrd  {image.initrd}\nmanifest {image.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
