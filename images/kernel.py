"""The kernel: vmlinuz -> vmlinux, and the kept modules with their metadata files.

QEMU can boot the uncompressed ELF directly through its PVH entry note; that skips the
bzImage's own xz decompression, which is slow under tcg (measured: ~2.3 s vs ~5.7 s).
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import shutil
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from images.elfmodinfo import modinfo
from images.errors import ImageBuildError

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _payload(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage, located through its boot header."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise ImageBuildError("vmlinuz has no x86 boot header")
    setup_sects = bzimage[0x1F1] or 4  # 0 means 4 in the boot protocol
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return bzimage[start : start + length]


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Decompress the payload of a bzImage into the ELF vmlinux."""
    try:
        payload = _payload(bzimage)
    except (ImageBuildError, struct.error):
        payload = b""
    if not payload.startswith((_XZ_MAGIC, _GZIP_MAGIC, _ZSTD_MAGIC)):
        # Older boot protocols lack payload_offset: fall back to the first xz stream.
        at = bzimage.find(_XZ_MAGIC)
        if at < 0:
            raise ImageBuildError("no compressed payload found in vmlinuz")
        payload = bzimage[at:]
    if payload.startswith(_XZ_MAGIC):
        # The stream is followed by the 4-byte uncompressed size; the decompressor
        # stops at the end of the stream and leaves that in unused_data.
        vmlinux = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(_GZIP_MAGIC):
        vmlinux = gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
    else:
        if shutil.which("zstd") is None:
            raise ImageBuildError("vmlinuz payload is zstd and zstd is not installed")
        vmlinux = subprocess.run(
            ["zstd", "-dc"], input=payload, capture_output=True, check=True
        ).stdout
    if not vmlinux.startswith(b"\x7fELF"):
        raise ImageBuildError("decompressed kernel payload is not an ELF image")
    return vmlinux


MODULE_SIG_MAGIC = b"~Module signature appended~\n"
# struct module_signature, just before the magic: algo, hash, id_type, signer_len,
# key_id_len (u8 each), 3 bytes of padding, sig_len (big-endian u32)
_MODULE_SIG_INFO = struct.Struct(">5B3xI")


def strip_module_signature(data: bytes) -> bytes:
    """The module without its appended signature (unchanged if it has none).

    A signed module makes the kernel hash all of it and check an RSA signature at every
    insmod: ext4's 2 MB cost 0.25-0.3 s of the guest's boot under tcg (40-50 ms without).
    """
    if not data.endswith(MODULE_SIG_MAGIC):
        return data
    info_end = len(data) - len(MODULE_SIG_MAGIC)
    info_start = info_end - _MODULE_SIG_INFO.size
    if info_start < 0:
        raise ImageBuildError("a kernel module's signature trailer is malformed")
    *_, signer_len, key_id_len, sig_len = _MODULE_SIG_INFO.unpack(data[info_start:info_end])
    end = info_start - sig_len - signer_len - key_id_len
    if end < 0 or not data.startswith(b"\x7fELF"):
        raise ImageBuildError("a kernel module's signature trailer is malformed")
    return data[:end]


def module_name(path: str) -> str:
    """'kernel/drivers/char/hw_random/virtio-rng.ko' -> 'virtio_rng' (as the kernel names it)."""
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", base).replace("-", "_")


@dataclass(frozen=True)
class KernelModule:
    name: str
    path: str  # relative to /usr/lib/modules/<release>/
    depends: tuple[str, ...] = ()
    softdep_pre: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


def describe_module(path: str, data: bytes) -> KernelModule:
    info = modinfo(data)
    depends: list[str] = []
    pre: list[str] = []
    aliases: list[str] = []
    for key, value in info:
        if key == "depends":
            depends += [d.replace("-", "_") for d in value.split(",") if d]
        elif key == "softdep":
            # "pre: a b post: c": only pre-dependencies must be loaded first.
            words = value.split()
            current = ""
            for word in words:
                if word.endswith(":"):
                    current = word[:-1]
                elif current == "pre":
                    pre.append(word)  # may be an alias (crypto-crc32c): keep as written
        elif key == "alias":
            aliases.append(value)
    return KernelModule(module_name(path), path, tuple(depends), tuple(pre), tuple(aliases))


@dataclass
class ModuleSelection:
    load_order: list[KernelModule]  # dependencies before their users
    builtin: list[str] = field(default_factory=list)  # requested but compiled in
    missing_optional: list[str] = field(default_factory=list)
    unresolved_softdeps: list[str] = field(default_factory=list)  # e.g. "ext4: crypto-crc32c"


def select_modules(
    index: Mapping[str, KernelModule], wanted: Sequence[str], builtin: set[str]
) -> ModuleSelection:
    """Wanted modules plus dependencies, ordered so each loads after what it needs.

    A trailing "?" marks a module that may be absent. Soft pre-dependencies are followed
    only when they name a real module: aliases such as `crypto-crc32c` would pull in
    every implementation, including CPU-specific ones that fail on QEMU's default CPU.
    """
    selection = ModuleSelection([])
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str, optional: bool, parent: str) -> None:
        if name in done:
            return
        if name in builtin:
            if parent == "":
                selection.builtin.append(name)
            done.add(name)
            return
        module = index.get(name)
        if module is None:
            if optional:
                selection.missing_optional.append(name)
                done.add(name)
                return
            where = f" (needed by {parent})" if parent else ""
            raise ImageBuildError(
                f"kernel module {name!r}{where} is neither a module nor built in",
                "check the module name against the kernel package, or mark it optional with '?'",
            )
        if name in visiting:
            raise ImageBuildError(f"module dependency cycle: {' -> '.join([*visiting, name])}")
        visiting.append(name)
        for dep in module.depends:
            visit(dep, False, name)
        for soft in module.softdep_pre:
            dep = soft.replace("-", "_")
            if dep in index or dep in builtin:
                visit(dep, False, name)
            else:
                selection.unresolved_softdeps.append(f"{name}: {soft}")
        visiting.pop()
        done.add(name)
        selection.load_order.append(module)

    for entry in wanted:
        optional = entry.endswith("?")
        visit(entry.rstrip("?").replace("-", "_"), optional, "")
    return selection


def _transitive_deps(module: KernelModule, by_name: Mapping[str, KernelModule]) -> list[str]:
    """Paths of every hard dependency, in the order they must be loaded."""
    order: list[str] = []
    seen: set[str] = set()

    def walk(name: str) -> None:
        for dep in by_name[name].depends if name in by_name else ():
            if dep not in seen:
                seen.add(dep)
                walk(dep)
                if dep in by_name:
                    order.append(by_name[dep].path)

    walk(module.name)
    return order


def modules_dep(selection: ModuleSelection) -> str:
    """depmod's format: each module, then its dependencies, last-to-load listed first."""
    by_name = {m.name: m for m in selection.load_order}
    lines = []
    for module in sorted(selection.load_order, key=lambda m: m.path):
        deps = list(reversed(_transitive_deps(module, by_name)))
        lines.append(f"{module.path}:" + "".join(f" {d}" for d in deps))
    return "\n".join(lines) + "\n"


def modules_alias(selection: ModuleSelection) -> str:
    lines = sorted(f"alias {alias} {m.name}" for m in selection.load_order for alias in m.aliases)
    return "\n".join(lines) + "\n" if lines else ""


def modules_softdep(selection: ModuleSelection) -> str:
    lines = [
        f"softdep {m.name} pre: {' '.join(m.softdep_pre)}"
        for m in sorted(selection.load_order, key=lambda m: m.name)
        if m.softdep_pre
    ]
    return "\n".join(lines) + "\n" if lines else ""


def modules_load(selection: ModuleSelection, only: set[str] | None = None) -> str:
    """One path per line, in load order (optionally only the modules named in `only`)."""
    return "".join(f"{m.path}\n" for m in selection.load_order if only is None or m.name in only)


def builtin_names(modules_builtin: str) -> set[str]:
    return {module_name(line.strip()) for line in modules_builtin.splitlines() if line.strip()}
