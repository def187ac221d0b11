"""Pluggable initramfs compression; every method here is one the kernel can unpack."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from collections.abc import Callable

from images.errors import ImageBuildError


def _gzip(data: bytes, level: int) -> bytes:
    # mtime=0 keeps the gzip header free of the build time.
    return gzip.compress(data, compresslevel=level, mtime=0)


def _xz(data: bytes, level: int) -> bytes:
    # The kernel's xz decoder only knows CRC32 checks (not xz's default CRC64).
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level)


def _zstd(data: bytes, level: int) -> bytes:
    if shutil.which("zstd") is None:
        raise ImageBuildError("compression 'zstd' needs the zstd tool", "apt-get install zstd")
    return subprocess.run(
        ["zstd", "-q", "-c", f"-{level}", "--no-check"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout


def _none(data: bytes, level: int) -> bytes:
    return data


COMPRESSORS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "xz": _xz,
    "zstd": _zstd,
    "none": _none,
}


def compress(data: bytes, method: str, level: int) -> bytes:
    try:
        return COMPRESSORS[method](data, level)
    except KeyError:
        raise ImageBuildError(f"unknown compression {method!r}") from None
