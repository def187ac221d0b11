"""Kernel handling: .modinfo from ELF sections, module ordering, vmlinuz unpacking."""

from __future__ import annotations

import lzma
import struct

import pytest

from images.elfmodinfo import modinfo, section
from images.errors import ImageBuildError
from images.kernel import (
    KernelModule,
    builtin_names,
    describe_module,
    extract_vmlinux,
    module_name,
    modules_dep,
    modules_load,
    modules_softdep,
    select_modules,
    strip_module_signature,
)


def make_elf(sections: dict[str, bytes], elf_class: int = 2) -> bytes:
    """A minimal little-endian ELF relocatable with the given sections."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    header_size = 64 if elf_class == 2 else 52
    entry_size = 64 if elf_class == 2 else 40
    body = bytearray()
    offsets = []
    for data in [*sections.values(), names]:
        offsets.append(header_size + len(body))
        body += data
    shoff = header_size + len(body)
    count = len(sections) + 2  # null section + sections + .shstrtab
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 9
    if elf_class == 2:
        header = ident + struct.pack(
            "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, count, count - 1
        )
    else:
        header = ident + struct.pack(
            "<HHIIIIIHHHHHH", 1, 3, 1, 0, 0, shoff, 0, 52, 0, 0, 40, count, count - 1
        )
    table = bytearray(b"\0" * entry_size)
    name_offset = 1
    for index, data in enumerate([*sections.values(), names]):
        name = [*sections, ".shstrtab"][index]
        if elf_class == 2:
            table += struct.pack(
                "<IIQQQQIIQQ", name_offset, 1, 0, 0, offsets[index], len(data), 0, 0, 1, 0
            )
        else:
            table += struct.pack(
                "<IIIIIIIIII", name_offset, 1, 0, 0, offsets[index], len(data), 0, 0, 1, 0
            )
        name_offset += len(name) + 1
    return header + bytes(body) + bytes(table)


def ko(depends: str = "", softdep: str = "", aliases: tuple[str, ...] = ()) -> bytes:
    info = [b"license=GPL", f"depends={depends}".encode()]
    if softdep:
        info.append(f"softdep={softdep}".encode())
    info += [f"alias={a}".encode() for a in aliases]
    return make_elf({".text": b"\x90" * 8, ".modinfo": b"\0".join(info) + b"\0"})


def test_section_lookup_elf64_and_elf32() -> None:
    for elf_class in (1, 2):
        elf = make_elf({".text": b"code", ".modinfo": b"a=1\0"}, elf_class)
        assert section(elf, ".text") == b"code"
        assert section(elf, ".modinfo") == b"a=1\0"
        assert section(elf, ".missing") is None


def test_modinfo_pairs_keep_order_and_repeats() -> None:
    pairs = modinfo(ko("jbd2,mbcache", "pre: crypto-crc32c", ("fs-ext4", "ext3")))
    assert ("depends", "jbd2,mbcache") in pairs
    assert [v for k, v in pairs if k == "alias"] == ["fs-ext4", "ext3"]


def test_not_an_elf_is_rejected() -> None:
    with pytest.raises(ImageBuildError):
        section(b"MZ\0\0", ".modinfo")


def test_describe_module_normalises_names() -> None:
    module = describe_module(
        "kernel/drivers/char/hw_random/virtio-rng.ko", ko("virtio,virtio_ring", "pre: crc32c")
    )
    assert module.name == "virtio_rng"
    assert module.depends == ("virtio", "virtio_ring")
    assert module.softdep_pre == ("crc32c",)
    assert module_name("kernel/fs/ext4/ext4.ko.xz") == "ext4"


def fake_index() -> dict[str, KernelModule]:
    def m(name: str, path: str, depends: str = "", pre: str = "") -> KernelModule:
        return describe_module(path, ko(depends, f"pre: {pre}" if pre else ""))

    modules = [
        m("virtio_ring", "kernel/drivers/virtio/virtio_ring.ko"),
        m("virtio", "kernel/drivers/virtio/virtio.ko", "virtio_ring"),
        m("virtio_pci", "kernel/drivers/virtio/virtio_pci.ko", "virtio_ring,virtio"),
        m("virtio_blk", "kernel/drivers/block/virtio_blk.ko", "virtio,virtio_ring"),
        m("crc16", "kernel/lib/crc16.ko"),
        m("jbd2", "kernel/fs/jbd2/jbd2.ko", "", "crypto-crc32c"),
        m("ext4", "kernel/fs/ext4/ext4.ko", "jbd2,crc16", "crypto-crc32c"),
        m("crc32c_generic", "kernel/crypto/crc32c_generic.ko"),
        m("tun", "kernel/drivers/net/tun.ko"),
    ]
    return {module.name: module for module in modules}


def test_select_orders_dependencies_first() -> None:
    selection = select_modules(fake_index(), ["virtio_blk", "virtio_pci", "ext4"], set())
    names = [m.name for m in selection.load_order]
    assert names == ["virtio_ring", "virtio", "virtio_blk", "virtio_pci", "jbd2", "crc16", "ext4"]
    assert selection.unresolved_softdeps == ["jbd2: crypto-crc32c", "ext4: crypto-crc32c"]


def test_softdep_naming_a_real_module_is_followed() -> None:
    index = fake_index()
    index["ext4"] = describe_module("kernel/fs/ext4/ext4.ko", ko("crc16", "pre: crc32c_generic"))
    names = [m.name for m in select_modules(index, ["ext4"], set()).load_order]
    assert names == ["crc16", "crc32c_generic", "ext4"]


def test_builtin_optional_and_missing_modules() -> None:
    builtin = builtin_names("kernel/net/unix/unix.ko\nkernel/net/packet/af_packet.ko\n")
    assert builtin == {"unix", "af_packet"}
    selection = select_modules(fake_index(), ["unix", "ghost?", "tun"], builtin)
    assert selection.builtin == ["unix"]
    assert selection.missing_optional == ["ghost"]
    assert [m.name for m in selection.load_order] == ["tun"]
    with pytest.raises(ImageBuildError, match="ghost"):
        select_modules(fake_index(), ["ghost"], builtin)


def test_missing_dependency_names_its_user() -> None:
    index = {"a": describe_module("kernel/a.ko", ko("nothere"))}
    with pytest.raises(ImageBuildError, match="needed by a"):
        select_modules(index, ["a"], set())


def test_metadata_files() -> None:
    selection = select_modules(fake_index(), ["virtio_pci", "ext4"], set())
    dep = modules_dep(selection).splitlines()
    # depmod lists the last-to-load first; modprobe loads right to left.
    assert (
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko"
    ) in dep
    assert "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko" in dep
    assert "kernel/drivers/virtio/virtio_ring.ko:" in dep
    assert modules_load(selection).splitlines() == [m.path for m in selection.load_order]
    assert "softdep ext4 pre: crypto-crc32c" in modules_softdep(selection)


def test_extract_vmlinux_from_a_synthetic_bzimage() -> None:
    vmlinux = b"\x7fELF" + bytes(range(256)) * 64
    payload = lzma.compress(vmlinux, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    payload += struct.pack("<I", len(vmlinux))  # the size the kernel build appends
    setup_sects = 3
    image = bytearray(b"\0" * ((setup_sects + 1) * 512))
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    protected_mode = b"\xcc" * 100  # decompressor code before the payload
    struct.pack_into("<II", image, 0x248, len(protected_mode), len(payload))
    bzimage = bytes(image) + protected_mode + payload + b"\0" * 16
    assert extract_vmlinux(bzimage) == vmlinux


def test_extract_vmlinux_rejects_non_elf_payload() -> None:
    bzimage = b"\0" * 0x300 + lzma.compress(b"not an elf", check=lzma.CHECK_CRC32)
    with pytest.raises(ImageBuildError, match="not an ELF"):
        extract_vmlinux(bzimage)


def test_modules_load_can_select() -> None:
    a = KernelModule("a", "kernel/a.ko", (), (), ())
    b = KernelModule("b", "kernel/b.ko", ("a",), (), ())
    c = KernelModule("c", "kernel/c.ko", (), (), ())
    selection = select_modules({"a": a, "b": b, "c": c}, ["b", "c"], set())
    assert modules_load(selection, only={"a", "b"}) == "kernel/a.ko\nkernel/b.ko\n"
    assert modules_load(selection, only={"c"}) == "kernel/c.ko\n"


def test_strip_module_signature() -> None:
    module = make_elf({".modinfo": b"name=demo\0"})
    signature = b"\x30\x82" + b"\x5a" * 528  # PKCS#7, 530 bytes
    # struct module_signature as sign-file writes it: algo 0, hash 0, id_type 2 (PKCS#7),
    # signer_len 0, key_id_len 0, 3 bytes of padding, sig_len 530 big-endian
    trailer = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + (530).to_bytes(4, "big")
    signed = module + signature + trailer + b"~Module signature appended~\n"
    assert strip_module_signature(signed) == module
    assert strip_module_signature(module) == module  # unsigned: unchanged


def test_a_malformed_signature_trailer_is_refused() -> None:
    module = make_elf({".modinfo": b"name=demo\0"})
    longer_than_the_file = struct.pack(">5B3xI", 0, 0, 2, 0, 0, 1 << 20)
    with pytest.raises(ImageBuildError, match="signature trailer"):
        strip_module_signature(module + longer_than_the_file + b"~Module signature appended~\n")
    with pytest.raises(ImageBuildError, match="signature trailer"):
        strip_module_signature(b"\x7fELF~Module signature appended~\n")  # no room for it
