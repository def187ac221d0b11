"""The project files an image is made of: one walk for the builder's overlay and for the
start's quick check (vmctl/image_stamp.py), so both see the same files. Light to import."""

from __future__ import annotations

import os
from pathlib import Path

SKIP_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


def walk(root: Path) -> list[Path]:
    """Every file under ``root``, caches left out, sorted; a symlinked directory counts as
    a file (os.walk does not enter it, and the overlay ships it as a link)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        found += [Path(dirpath) / name for name in sorted(filenames)]
        found += [Path(dirpath) / d for d in dirnames if (Path(dirpath) / d).is_symlink()]
    return sorted(found)
