"""Precompile Python bytecode at build time, with the guest's own interpreter.

Under tcg, compiling a module at import costs seconds across the stdlib; shipping .pyc
removes that. The guest interpreter runs on the build host straight from a staging copy
through its own dynamic loader (no chroot, no root), so the bytecode is exactly what the
guest would write. `unchecked-hash` pycs carry a source hash instead of an mtime, so the
output does not depend on when files were extracted, and are never revalidated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from images.errors import ImageBuildError
from images.tree import Dir, File, Symlink, Tree

LOADER = "usr/lib64/ld-linux-x86-64.so.2"
LIBDIR = "usr/lib/x86_64-linux-gnu"

# Runs inside the guest interpreter: compile each (source, output, display name).
_DRIVER = r"""
import json, py_compile, sys
failed = []
for source, output, shown in json.load(sys.stdin):
    try:
        py_compile.compile(source, cfile=output, dfile=shown, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError as exc:
        failed.append([shown, str(exc.msg).strip().splitlines()[-1]])
json.dump(failed, sys.stdout)
"""


def stage_python(tree: Tree, stage: Path, interpreter: str, stdlib: str) -> None:
    """Write what the interpreter needs to run below `stage`, symlinks as copies.

    Copies (not links) keep every path inside `stage`: an absolute symlink from a package
    would otherwise point into the build host's own /usr.
    """
    if stage.exists():
        shutil.rmtree(stage)
    wanted_prefixes = (stdlib + "/", LIBDIR + "/", "usr/lib64/")
    wanted = [p for p in tree.sorted_paths() if p.startswith(wanted_prefixes)]
    wanted += [interpreter, LOADER]
    for path in wanted:
        if isinstance(tree.get(path), Dir):
            (stage / path).mkdir(parents=True, exist_ok=True)
            continue
        file = tree.real_file(path)
        if file is None:
            continue  # a directory symlink or a dangling link: nothing to copy
        target = stage / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        os.chmod(target, file.mode & 0o755 | 0o600)


@dataclass(frozen=True)
class Interpreter:
    argv: list[str]
    env: dict[str, str]


def guest_interpreter(stage: Path, interpreter: str) -> Interpreter:
    return Interpreter(
        [
            str(stage / LOADER),
            "--library-path",
            str(stage / LIBDIR),
            str(stage / interpreter),
            "-S",
            "-B",
        ],
        {
            "PYTHONHOME": str(stage / "usr"),
            # Fixed hashing keeps set/frozenset constants in the same order in every build.
            "PYTHONHASHSEED": "0",
            "LC_ALL": "C.UTF-8",
            "PATH": "/usr/bin:/bin",
        },
    )


def host_interpreter_fallback(stdlib: str) -> Interpreter | None:
    """The build host's python, usable when it has the same bytecode version."""
    if stdlib.rstrip("/").endswith(f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        return Interpreter([sys.executable, "-S", "-B"], {"PYTHONHASHSEED": "0"})
    return None


def pick_interpreter(
    stage: Path, interpreter: str, stdlib: str, progress: Callable[[str], None]
) -> Interpreter | None:
    guest = guest_interpreter(stage, interpreter)
    try:
        probe = subprocess.run(
            [*guest.argv, "-c", "import py_compile"], env=guest.env, capture_output=True
        )
        if probe.returncode == 0:
            return guest
        reason = probe.stderr.decode(errors="replace").strip()[-300:]
    except OSError as exc:
        reason = str(exc)
    fallback = host_interpreter_fallback(stdlib)
    progress(
        f"warning: the guest python does not run here ({reason}); "
        + ("compiling with the host's python" if fallback else "shipping without bytecode")
    )
    return fallback


def compile_sources(
    python: Interpreter, jobs: Sequence[tuple[Path, Path, str]]
) -> list[tuple[str, str]]:
    """Compile (source, output .pyc, name shown in tracebacks); return failures."""
    if not jobs:
        return []
    payload = json.dumps([[str(s), str(o), shown] for s, o, shown in jobs])
    result = subprocess.run(
        [*python.argv, "-c", _DRIVER],
        input=payload,
        env=python.env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ImageBuildError(
            "byte-compiling with the guest python failed:\n" + result.stderr.strip()[-1500:]
        )
    return [(name, error) for name, error in json.loads(result.stdout)]


def compile_stdlib(
    tree: Tree, python: Interpreter, stage: Path, stdlib: str, sourceless: bool
) -> list[tuple[str, str]]:
    """Replace the stdlib's .py files by .pyc in `tree`.

    Sourceless (.pyc where the .py was, .py removed) halves the stdlib's size in RAM;
    the price is tracebacks into the stdlib without source lines. Files that fail to
    compile (there should be none after pruning) keep their source.
    """
    out_dir = stage.parent / (stage.name + "-pyc")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    sources = [
        p
        for p in tree.sorted_paths()
        if p.startswith(stdlib + "/") and p.endswith(".py") and isinstance(tree.get(p), File)
    ]
    jobs = [(stage / p, out_dir / f"{i}.pyc", "/" + p) for i, p in enumerate(sources)]
    failures = compile_sources(python, jobs)
    failed = {name.lstrip("/") for name, _ in failures}
    # Links between stdlib modules (Debian's _sysconfigdata alias) must follow the
    # module to its .pyc, or they dangle once the source is gone.
    aliases = {
        p: node.target
        for p in tree.sorted_paths()
        if p.startswith(stdlib + "/")
        and p.endswith(".py")
        and isinstance(node := tree.get(p), Symlink)
        and tree.resolve(p) in sources
        and tree.resolve(p) not in failed
    }
    for path, (_, output, _) in zip(sources, jobs, strict=True):
        if path in failed:
            continue
        data = output.read_bytes()
        if sourceless:
            tree.remove(path)
            tree.add(path + "c", File(data, 0o644), "builder")
        else:
            directory, name = path.rsplit("/", 1)
            cached = f"{directory}/__pycache__/{name[:-3]}.{cache_tag(stdlib)}.pyc"
            tree.add(cached, File(data, 0o644), "builder")
    if sourceless:
        for link, target in aliases.items():
            tree.remove(link)
            tree.add(link + "c", Symlink(target + "c"), "builder")
    shutil.rmtree(out_dir)
    return failures


def cache_tag(stdlib: str) -> str:
    # "usr/lib/python3.11" -> "cpython-311", the tag in __pycache__ file names
    version = stdlib.rstrip("/").rsplit("python", 1)[-1]
    return "cpython-" + version.replace(".", "")
