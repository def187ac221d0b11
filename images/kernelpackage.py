"""Install the kernel package's parts: vmlinuz/vmlinux and the kept modules."""

from __future__ import annotations

import io
import lzma
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence

from images.debfile import data_tar
from images.errors import ImageBuildError
from images.kernel import (
    KernelModule,
    builtin_names,
    describe_module,
    extract_vmlinux,
    module_name,
    modules_alias,
    modules_dep,
    modules_load,
    modules_softdep,
    select_modules,
    strip_module_signature,
)
from images.tree import File, Tree, normalize


class _LazyModules(Mapping[str, KernelModule]):
    """Module name -> module, reading .modinfo only for modules actually visited."""

    def __init__(self, files: dict[str, Callable[[], bytes]], prefix: str) -> None:
        self._files = {module_name(path): path for path in files}
        self._readers = files
        self._prefix = prefix
        self._cache: dict[str, KernelModule] = {}

    def __getitem__(self, name: str) -> KernelModule:
        if name not in self._cache:
            path = self._files[name]
            self._cache[name] = describe_module(path[len(self._prefix) :], self._readers[path]())
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def install_kernel(
    deb: bytes,
    module_sets: Sequence[tuple[str, Sequence[str]]],
    tree: Tree,
    strip_signatures: bool = False,
) -> tuple[str, bytes, bytes, list[str]]:
    """Add the kept modules and their metadata files to `tree`.

    Each named set becomes modules.<name>: its modules and their dependencies that no
    earlier set loads, in load order. The guest loads each set at its own point of the
    boot: under tcg every insmod costs tens of milliseconds, so each step waits only for
    what it needs. modules.load lists them all.

    Returns (release, vmlinuz, vmlinux, module names in load order). The package's
    data.tar is held in memory once; only the modules visited are read.
    """
    with tarfile.open(fileobj=io.BytesIO(data_tar(deb)), mode="r:") as archive:
        members = {normalize(m.name): m for m in archive.getmembers() if m.isreg()}

        def reader(name: str) -> Callable[[], bytes]:
            def read() -> bytes:
                stream = archive.extractfile(members[name])
                assert stream is not None
                return stream.read()

            return read

        vmlinuz_names = [n for n in members if n.startswith("boot/vmlinuz-")]
        if len(vmlinuz_names) != 1:
            raise ImageBuildError(
                f"expected one boot/vmlinuz-* in the kernel package, found {vmlinuz_names}"
            )
        release = vmlinuz_names[0].removeprefix("boot/vmlinuz-")
        vmlinuz = reader(vmlinuz_names[0])()
        prefix = f"lib/modules/{release}/"
        modules = {n: reader(n) for n in members if n.startswith(prefix) and ".ko" in n}
        builtin_text = (
            reader(prefix + "modules.builtin")() if prefix + "modules.builtin" in members else b""
        )
        index = _LazyModules(modules, prefix)
        builtin = builtin_names(builtin_text.decode())
        wanted: list[str] = []
        set_members: list[tuple[str, set[str]]] = []
        loaded: set[str] = set()
        for name, set_modules in module_sets:
            wanted += set_modules
            names = {m.name for m in select_modules(index, wanted, builtin).load_order}
            set_members.append((name, names - loaded))
            loaded |= names
        selection = select_modules(index, wanted, builtin)
        target = f"usr/lib/modules/{release}"
        for module in selection.load_order:
            data = reader(prefix + module.path)()
            if module.path.endswith(".ko.xz"):
                data = lzma.decompress(data)
            # Uncompressed .ko: busybox insmod cannot read xz, and the archive is compressed.
            path = module.path.removesuffix(".xz")
            if strip_signatures:
                data = strip_module_signature(data)
            tree.add(f"{target}/{path}", File(data, 0o644), "kernel")
        selection.load_order = [
            KernelModule(m.name, m.path.removesuffix(".xz"), m.depends, m.softdep_pre, m.aliases)
            for m in selection.load_order
        ]
        meta_files = {
            "modules.dep": modules_dep(selection),
            "modules.load": modules_load(selection),
            **{
                f"modules.{name}": modules_load(selection, only=names)
                for name, names in set_members
            },
            "modules.alias": modules_alias(selection),
            "modules.softdep": modules_softdep(selection),
            "modules.builtin": builtin_text.decode(),
        }
        for name, text in meta_files.items():
            tree.add(f"{target}/{name}", File(text.encode(), 0o644), "kernel")
    return release, vmlinuz, extract_vmlinux(vmlinuz), [m.name for m in selection.load_order]
