"""Load and check `recipe.toml` into typed settings."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from images.errors import ImageBuildError

DEFAULT_RECIPE = Path(__file__).with_name("recipe.toml")
COMPRESSIONS = ("gzip", "xz", "zstd", "none")


@dataclass(frozen=True)
class Mirror:
    uri: str
    suites: tuple[str, ...]


@dataclass(frozen=True)
class ExtraFile:
    path: str
    mode: int
    data: bytes


@dataclass(frozen=True)
class Recipe:
    path: Path
    sha256: str  # of the file's bytes: comments count, so the key follows every edit
    suite: str
    arch: str
    components: tuple[str, ...]
    keyring: str
    mirrors: tuple[Mirror, ...]
    install: tuple[str, ...]
    exclude: tuple[str, ...]
    kernel_package: str
    strip_module_signatures: bool
    # Named module sets in load order (e.g. boot, storage, later); each becomes
    # modules.<name> in the guest. A trailing "?" marks a module that may be absent.
    module_sets: tuple[tuple[str, tuple[str, ...]], ...]
    prune: tuple[str, ...]
    python_stdlib: str
    python_interpreter: str
    sourceless_stdlib: bool
    agent_dir: str
    compression: str
    compression_level: int
    source_date_epoch: int
    files: tuple[ExtraFile, ...]


def _get(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise ImageBuildError(f"recipe: missing {where}.{key}", "see docs/image.md")
    value = table[key]
    if not isinstance(value, kind):
        raise ImageBuildError(f"recipe: {where}.{key} must be a {kind.__name__}")
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = _get(table, key, list, where)
    if not all(isinstance(v, str) for v in values):
        raise ImageBuildError(f"recipe: {where}.{key} must be a list of strings")
    return tuple(values)


def load_recipe(path: Path = DEFAULT_RECIPE) -> Recipe:
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImageBuildError(f"cannot read recipe {path}: {exc}") from exc
    source = _get(data, "source", dict, "")
    packages = _get(data, "packages", dict, "")
    kernel = _get(data, "kernel", dict, "")
    python = _get(data, "python", dict, "")
    initramfs = _get(data, "initramfs", dict, "")
    mirrors = tuple(
        Mirror(_get(m, "uri", str, "source.mirrors"), _strings(m, "suites", "source.mirrors"))
        for m in _get(source, "mirrors", list, "source")
    )
    compression = _get(initramfs, "compression", str, "initramfs")
    if compression not in COMPRESSIONS:
        raise ImageBuildError(
            f"recipe: unknown compression {compression!r}", f"use one of {', '.join(COMPRESSIONS)}"
        )
    files = []
    for file_path, spec in sorted(data.get("files", {}).items()):
        if file_path.startswith("/") or ".." in file_path.split("/"):
            raise ImageBuildError(f"recipe: file path {file_path!r} must be relative, no '..'")
        files.append(
            ExtraFile(
                file_path,
                _get(spec, "mode", int, file_path),
                _get(spec, "text", str, file_path).encode(),
            )
        )
    return Recipe(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        suite=_get(source, "suite", str, "source"),
        arch=_get(source, "arch", str, "source"),
        components=_strings(source, "components", "source"),
        keyring=_get(source, "keyring", str, "source"),
        mirrors=mirrors,
        install=_strings(packages, "install", "packages"),
        exclude=_strings(packages, "exclude", "packages"),
        kernel_package=_get(kernel, "package", str, "kernel"),
        strip_module_signatures=_get(
            {"strip_module_signatures": False, **kernel}, "strip_module_signatures", bool, "kernel"
        ),
        module_sets=tuple(
            (name, _strings(sets, name, "kernel.modules"))
            for sets in [_get(kernel, "modules", dict, "kernel")]
            for name in sets
        ),
        prune=_strings(_get(data, "prune", dict, ""), "paths", "prune"),
        python_stdlib=_get(python, "stdlib", str, "python"),
        python_interpreter=_get(python, "interpreter", str, "python"),
        sourceless_stdlib=_get(python, "sourceless_stdlib", bool, "python"),
        agent_dir=_get(python, "agent_dir", str, "python"),
        compression=compression,
        compression_level=int(initramfs.get("compression_level", 6)),
        source_date_epoch=int(initramfs.get("source_date_epoch", 0)),
        files=tuple(files),
    )
