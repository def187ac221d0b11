"""`vmctl images`, `rmi`, `load`, `save` and `tag`, as their docker namesakes.

They talk to the same engine as the container verbs (the default machine, `--machine`,
`--host` or VMCTL_HOST); output and exit codes follow docker's. Tarballs stream through
(`save` never holds one in memory, `load` sends it as it reads).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from agent.humanize import human_duration
from vmctl.containers_cli import engine_for, report, with_hint
from vmctl.engine_client import EngineError
from vmctl.errors import VmctlError
from vmctl.paths import Paths
from vmctl.verbs import verb_adder

VERBS = ("images", "rmi", "load", "save", "tag")
IMAGE_COLUMNS = (
    ("REPOSITORY", "Repository"),
    ("TAG", "Tag"),
    ("IMAGE ID", "ID"),
    ("CREATED", "CreatedSince"),
    ("SIZE", "Size"),
)
NONE = "<none>"


def human_size(size: float, precision: int = 3) -> str:
    """docker images' SIZE: decimal units, three significant digits (4.26MB)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    index = 0
    while size >= 1000.0 and index < len(units) - 1:
        size /= 1000.0
        index += 1
    return f"{size:.{precision}g}{units[index]}"


def go_json(value: object) -> str:
    """One line of JSON as the docker CLI prints it (Go escapes <, > and &)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _count(value: Any) -> str:
    return "N/A" if not isinstance(value, int) or value < 0 else str(value)


def image_rows(image: dict[str, Any], now: float, truncate: bool = True) -> list[dict[str, str]]:
    """One row per tag (one `<none>` row when untagged), as `docker images --format json`."""
    created = int(image.get("Created") or 0)
    image_id = str(image.get("Id", ""))
    size = int(image.get("Size") or 0)
    common = {
        "Containers": _count(image.get("Containers")),
        "CreatedAt": datetime.datetime.fromtimestamp(created)
        .astimezone()
        .strftime("%Y-%m-%d %H:%M:%S %z %Z"),
        "CreatedSince": human_duration(now - created) + " ago",
        "Digest": NONE,
        "ID": image_id.removeprefix("sha256:")[:12] if truncate else image_id,
        "SharedSize": "N/A" if image.get("SharedSize", -1) < 0 else human_size(image["SharedSize"]),
        "Size": human_size(size),
        "UniqueSize": "N/A",
        "VirtualSize": human_size(size, 4),
    }
    tags = [str(t) for t in image.get("RepoTags") or []]
    if not tags:
        return [{**common, "Repository": NONE, "Tag": NONE}]
    rows = []
    for tag in tags:
        slash = tag.rfind("/")
        colon = tag.rfind(":")
        repo, name = (tag[:colon], tag[colon + 1 :]) if colon > slash else (tag, NONE)
        rows.append({**common, "Repository": repo, "Tag": name})
    return rows


def table(columns: tuple[tuple[str, str], ...], rows: list[dict[str, str]]) -> str:
    """docker's table: columns at least 10 wide, three spaces between them."""
    cells = [[title for title, _ in columns]] + [[r[key] for _, key in columns] for r in rows]
    widths = [max(10, max(len(row[i]) for row in cells) + 3) for i in range(len(columns))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("".join(padded) + row[-1])
    return "\n".join(lines) + "\n"


# -- verbs --------------------------------------------------------------------------------


def cmd_images(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    filters: dict[str, list[str]] = {}
    for item in args.filter or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VmctlError(f"bad format of filter {item!r}", hint="use --filter KEY=VALUE")
        filters.setdefault(key, []).append(value)
    if args.reference:
        filters.setdefault("reference", []).append(args.reference)
    try:
        images = engine.list_images(all=args.all, filters=filters or None)
    except EngineError as e:
        raise with_hint(e) from None
    now = time.time()
    rows = [row for image in images for row in image_rows(image, now, not args.no_trunc)]
    if args.quiet:
        for row in rows:
            print(row["ID"])
    elif args.format == "json":
        for row in rows:
            print(go_json(row))
    else:
        print(table(IMAGE_COLUMNS, rows), end="")
    return 0


def cmd_rmi(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    failed = False
    for name in args.images:
        try:
            records = engine.remove_image(name, force=args.force)
        except EngineError as e:
            if e.status == 404 and not e.hint:
                e.hint = "list images with: vmctl images"
            elif e.status == 409 and not e.hint:
                e.hint = "remove the containers that use it first, or add -f"
            report(with_hint(e))
            failed = True
            continue
        for record in records:
            for key in ("Untagged", "Deleted"):
                if key in record:
                    print(f"{key}: {record[key]}", flush=True)
    return 1 if failed else 0


def cmd_tag(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        engine.tag_image(args.source, args.target)
    except EngineError as e:
        raise with_hint(e) from None
    return 0


def cmd_save(paths: Paths, args: argparse.Namespace) -> int:
    if not args.output and sys.stdout.isatty():
        raise VmctlError(
            "cowardly refusing to save to a terminal",
            hint="use the -o flag or redirect: vmctl save IMAGE > image.tar",
        )
    engine = engine_for(paths, args)
    try:
        chunks = engine.save_images(args.images)
    except EngineError as e:
        raise with_hint(e) from None
    if not args.output:
        sys.stdout.flush()
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return 0
    target = Path(args.output)
    # written beside the target and renamed at the end: a failure leaves no half a tarball
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return 0


def cmd_load(paths: Paths, args: argparse.Namespace) -> int:
    if args.input:
        try:
            source: BinaryIO = open(args.input, "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise VmctlError(f"cannot open {args.input}: {e.strerror}") from None
    else:
        if sys.stdin.isatty():
            raise VmctlError(
                "requested load from stdin, but stdin is empty",
                hint="pipe a tarball in (vmctl save IMAGE | vmctl load) or use -i FILE",
            )
        source = sys.stdin.buffer
    try:
        engine = engine_for(paths, args)
        messages = engine.load_images(source, quiet=args.quiet or not sys.stdout.isatty())
    except EngineError as e:
        raise with_hint(e) from None
    finally:
        if args.input:
            source.close()
    for message in messages:
        text = message.get("stream") or message.get("status")
        if isinstance(text, str) and text:
            print(text, end="" if text.endswith("\n") else "\n", flush=True)
    return 0


# -- parsers ------------------------------------------------------------------------------


def add_parsers(top: Any, parent: argparse.ArgumentParser) -> None:
    """Register the image verbs on vmctl's subparsers (``parent``: the engine options)."""

    verb = verb_adder(top, parent)

    images = verb("images", cmd_images, "list images (like docker images)")
    images.add_argument("-a", "--all", action="store_true", help="also intermediate images")
    images.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    images.add_argument("--no-trunc", action="store_true", help="full IDs")
    images.add_argument(
        "-f", "--filter", action="append", metavar="K=V", help="dangling, reference, label, …"
    )
    images.add_argument("--format", choices=("table", "json"), default="table")
    images.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")

    rmi = verb("rmi", cmd_rmi, "remove images")
    rmi.add_argument("-f", "--force", action="store_true", help="also untag images in use")
    rmi.add_argument("images", nargs="+", metavar="IMAGE")

    load = verb("load", cmd_load, "load images from a tarball (docker save format)")
    load.add_argument("-i", "--input", metavar="FILE", help="read this file, not stdin")
    load.add_argument("-q", "--quiet", action="store_true", help="no progress")

    save = verb("save", cmd_save, "write images to a tarball (docker save format)")
    save.add_argument("-o", "--output", metavar="FILE", help="write this file, not stdout")
    save.add_argument("images", nargs="+", metavar="IMAGE")

    tag = verb("tag", cmd_tag, "give an image another name")
    tag.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    tag.add_argument("target", metavar="TARGET_IMAGE[:TAG]")

    from vmctl import registry_cli

    registry_cli.add_parsers(verb)
