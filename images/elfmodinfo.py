"""Read a kernel module's `.modinfo` section by parsing the ELF section table."""

from __future__ import annotations

import struct

from images.errors import ImageBuildError

_ELF_MAGIC = b"\x7fELF"


def section(data: bytes, wanted: str) -> bytes | None:
    """The bytes of section `wanted` in ELF image `data`, or None if it has none."""
    if data[:4] != _ELF_MAGIC:
        raise ImageBuildError("not an ELF file")
    elf_class, byte_order = data[4], data[5]
    if elf_class not in (1, 2) or byte_order not in (1, 2):
        raise ImageBuildError(f"unsupported ELF class/byte order {elf_class}/{byte_order}")
    end = "<" if byte_order == 1 else ">"
    if elf_class == 2:  # ELF64
        (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        header = end + "IIQQQQIIQQ"
    else:  # ELF32
        (shoff,) = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)
        header = end + "IIIIIIIIII"
    if shoff == 0 or shnum == 0:
        return None
    if shoff + shnum * shentsize > len(data):
        raise ImageBuildError("truncated ELF section table")

    def entry(index: int) -> tuple[int, int, int]:
        fields = struct.unpack_from(header, data, shoff + index * shentsize)
        # (name offset, offset in file, size): positions 0, 4, 5 in both layouts
        return fields[0], fields[4], fields[5]

    _, names_offset, names_size = entry(shstrndx)
    names = data[names_offset : names_offset + names_size]
    for index in range(shnum):
        name_offset, offset, size = entry(index)
        name = names[name_offset : names.index(b"\0", name_offset)].decode("ascii", "replace")
        if name == wanted:
            return data[offset : offset + size]
    return None


def modinfo(data: bytes) -> list[tuple[str, str]]:
    """`key=value` pairs of the module's .modinfo, in file order (keys may repeat)."""
    raw = section(data, ".modinfo")
    if raw is None:
        return []
    pairs = []
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode("utf-8", "replace").partition("=")
            pairs.append((key, value))
    return pairs
