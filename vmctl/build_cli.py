"""`vmctl build`: build an image from a Dockerfile, like `DOCKER_BUILDKIT=0 docker build`.

The context directory goes to the engine as a tar, leaving out what its ``.dockerignore``
excludes (docker's pattern rules: ``*``, ``?``, ``[…]``, ``**``, ``!`` exceptions, the last
matching line wins); the Dockerfile and the .dockerignore are always sent. Files are sent
as owned by root, as the docker CLI does. A Dockerfile outside the context (``-f``) is
sent inside it under a generated name.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from agent.build.patterns import IgnoreMatcher, PatternError, read_dockerignore
from vmctl.containers_cli import engine_for, with_hint
from vmctl.engine_client import ChunkedWriter, EngineError
from vmctl.errors import VmctlError
from vmctl.paths import Paths
from vmctl.verbs import verb_adder

IGNORE_FILE = ".dockerignore"


def ignore_matcher(context: Path, always: list[str]) -> IgnoreMatcher:
    """The context's .dockerignore, with the files that are always sent excepted."""
    try:
        text = (context / IGNORE_FILE).read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    try:
        return IgnoreMatcher([*read_dockerignore(text), *(f"!{name}" for name in always)])
    except PatternError as error:
        raise VmctlError(f"{context / IGNORE_FILE}: {error}") from None


def context_paths(context: Path, matcher: IgnoreMatcher) -> Iterator[str]:
    """The relative paths to send, parents first; excluded directories are skipped unless
    an exception pattern may bring back something under them."""

    def walk(relative: str) -> Iterator[str]:
        directory = context / relative if relative else context
        try:
            names = sorted(os.listdir(directory))
        except OSError as error:
            raise VmctlError(f"cannot read the build context: {error}") from None
        for name in names:
            path = f"{relative}/{name}" if relative else name
            is_dir = (context / path).is_dir() and not (context / path).is_symlink()
            excluded = matcher.excluded(path)
            if not excluded:
                yield path
            if is_dir and (not excluded or matcher.may_include_under(path)):
                yield from walk(path)

    yield from walk("")


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def dockerfile_name(context: Path, dockerfile: Path) -> tuple[str, bool]:
    """The Dockerfile's name in the context tar, and whether it lies outside the context."""
    real_context, real_dockerfile = context.resolve(), dockerfile.resolve()
    if real_dockerfile.is_relative_to(real_context):
        return real_dockerfile.relative_to(real_context).as_posix(), False
    return f".dockerfile.{secrets.token_hex(10)}", True


def pack_context(
    context: Path, out: IO[bytes], dockerfile: Path | None = None, name: str = ""
) -> list[str]:
    """Write the context tar to ``out``; the paths sent. ``name``: the Dockerfile's name
    in the tar when it lies outside the context."""
    dockerfile = dockerfile or context / "Dockerfile"
    real_dockerfile = dockerfile.resolve()
    inside_name, outside = dockerfile_name(context, dockerfile)
    name = name if outside and name else inside_name
    if not real_dockerfile.is_file():
        raise VmctlError(f"cannot read the Dockerfile {dockerfile}: no such file")
    sent: list[str] = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for path in context_paths(context, ignore_matcher(context, [name, IGNORE_FILE])):
            full = context / path
            info = archive.gettarinfo(str(full), arcname=path)
            if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                continue  # sockets, fifos, devices: docker sends none of them either
            info = _root_owned(info)
            if info.isfile():
                with open(full, "rb") as handle:
                    archive.addfile(info, handle)
            else:
                archive.addfile(info)
            sent.append(path)
        if outside:
            info = _root_owned(archive.gettarinfo(str(real_dockerfile), arcname=name))
            info.mode = stat.S_IMODE(info.mode)
            with open(real_dockerfile, "rb") as handle:
                archive.addfile(info, handle)
            sent.append(name)
    return sent


def _build_args(values: list[str]) -> dict[str, str | None]:
    """--build-arg K=V, or K alone: its value from this environment (unset: none)."""
    result: dict[str, str | None] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not key:
            raise VmctlError(f"invalid --build-arg {value!r}: expected KEY=VALUE")
        result[key] = text if sep else os.environ.get(key)
    return result


def cmd_build(paths: Paths, args: argparse.Namespace) -> int:
    import json

    context = Path(args.path)
    if not context.is_dir():
        raise VmctlError(f"unable to prepare context: path {args.path!r} is not a directory")
    dockerfile = Path(args.file) if args.file else context / "Dockerfile"
    if args.file == "-":
        raise VmctlError("-f - (a Dockerfile on stdin) is not supported: give a file")
    if not dockerfile.is_file():
        raise VmctlError(f"cannot read the Dockerfile {dockerfile}: no such file")
    engine = engine_for(paths, args)
    query: dict[str, Any] = {
        "t": args.tag or None,
        "buildargs": json.dumps(_build_args(args.build_arg or [])),
        "target": args.target or None,
        "nocache": args.no_cache or None,
        "q": args.quiet or None,
        "rm": True,
    }
    name, _ = dockerfile_name(context, dockerfile)
    query["dockerfile"] = name

    def write(body: ChunkedWriter) -> None:
        pack_context(context, body, dockerfile, name)  # type: ignore[arg-type]

    image_id = ""
    try:
        for message in engine.build_image(query, write):
            text = message.get("stream")
            if isinstance(text, str) and not args.quiet:
                sys.stdout.write(text)
                sys.stdout.flush()
            aux = message.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                image_id = aux["ID"]
    except EngineError as error:
        sys.stdout.flush()
        raise with_hint(error) from None
    if args.quiet and image_id:
        print(image_id)
    return 0


def add_parsers(top: Any, parent: argparse.ArgumentParser) -> None:
    verb = verb_adder(top, parent)
    build = verb("build", cmd_build, "build an image from a Dockerfile (like docker build)")
    build.add_argument("-t", "--tag", action="append", metavar="NAME[:TAG]", help="name it")
    build.add_argument("-f", "--file", metavar="FILE", help="the Dockerfile (PATH/Dockerfile)")
    build.add_argument(
        "--build-arg", action="append", metavar="K=V", help="set a build-time variable"
    )
    build.add_argument("--target", metavar="STAGE", help="build up to this stage")
    build.add_argument("--no-cache", action="store_true", help="do not use cached steps")
    build.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    build.add_argument("path", metavar="PATH", help="the build context directory")
