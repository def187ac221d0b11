"""`vmctl volume create|ls|inspect|rm|prune` and `vmctl info`, as their docker namesakes.

They talk to the same engine as the container verbs (the default machine, `--machine`,
`--host` or VMCTL_HOST); output and exit codes follow docker's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vmctl.containers_cli import engine_for, inspect_each, report, with_hint
from vmctl.engine_client import EngineError
from vmctl.errors import VmctlError
from vmctl.paths import Paths

VERBS = ("volume", "info")


# -- sizes as docker prints them (go-units) ---------------------------------------------------


def human_size(size: float) -> str:
    """Decimal units, four significant digits: 0B, 10B, 1.983MB."""
    return _scaled(size, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB", "EB"))


def binary_size(size: float) -> str:
    """Binary units, four significant digits: 23.54GiB."""
    return _scaled(size, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"))


def _scaled(size: float, base: float, units: tuple[str, ...]) -> str:
    index = 0
    while size >= base and index < len(units) - 1:
        size /= base
        index += 1
    return f"{size:.4g}{units[index]}"


def key_values(items: list[str] | None, what: str) -> dict[str, str]:
    """`--label a=b`, `-o type=none` → {"a": "b"}; a bare key gets an empty value."""
    result: dict[str, str] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not key:
            raise VmctlError(f"invalid {what} {item!r}", hint=f"use --{what} KEY=VALUE")
        result[key] = value
    return result


def filters_from(items: list[str] | None) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VmctlError(f"bad format of filter {item!r}", hint="use --filter KEY=VALUE")
        filters.setdefault(key, []).append(value)
    return filters


# -- volume -----------------------------------------------------------------------------------


def cmd_volume_create(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        volume = engine.create_volume(
            args.name or "",
            args.driver,
            key_values(args.label, "label"),
            key_values(args.opt, "opt"),
        )
    except EngineError as e:
        raise with_hint(e) from None
    print(volume.get("Name", ""))
    return 0


def volume_row(volume: dict[str, Any]) -> dict[str, str]:
    """One volume as `docker volume ls --format json` prints it."""
    labels = volume.get("Labels") or {}
    return {
        "Driver": str(volume.get("Driver", "")),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Links": "N/A",
        "Mountpoint": str(volume.get("Mountpoint", "")),
        "Name": str(volume.get("Name", "")),
        "Scope": str(volume.get("Scope", "")),
        "Size": "N/A",
    }


def table(rows: list[list[str]]) -> str:
    """docker's tabwriter layout: columns at least 10 wide, three spaces apart."""
    widths = [max(10, max(len(row[i]) for row in rows) + 3) for i in range(len(rows[0]))]
    lines = [
        "".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + row[-1]
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def cmd_volume_ls(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        volumes = engine.list_volumes(filters_from(args.filter))
    except EngineError as e:
        raise with_hint(e) from None
    volumes.sort(key=lambda v: str(v.get("Name", "")))
    if args.quiet:
        for volume in volumes:
            print(volume.get("Name", ""))
    elif args.format == "json":
        for volume in volumes:
            print(json.dumps(volume_row(volume), sort_keys=True, separators=(",", ":")))
    else:
        rows = [["DRIVER", "VOLUME NAME"]]
        rows += [[str(v.get("Driver", "")), str(v.get("Name", ""))] for v in volumes]
        print(table(rows), end="")
    return 0


def cmd_volume_inspect(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    return inspect_each(args.volumes, engine.inspect_volume, "volume")


def cmd_volume_rm(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    failed = False
    for name in args.volumes:
        try:
            engine.remove_volume(name, force=args.force)
        except EngineError as e:
            if e.status == 409 and not e.hint:
                e.hint = "remove the containers that use it first (vmctl rm CONTAINER)"
            report(with_hint(e))
            failed = True
            continue
        print(name)
    return 1 if failed else 0


def confirmed(question: str) -> bool:
    print(f"{question}\nAre you sure you want to continue? [y/N] ", end="", file=sys.stderr)
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def cmd_volume_prune(paths: Paths, args: argparse.Namespace) -> int:
    filters = filters_from(args.filter)
    if args.all:
        filters["all"] = ["true"]
    what = "all local volumes" if args.all else "anonymous local volumes"
    if not args.force and not confirmed(
        f"WARNING! This will remove {what} not used by at least one container."
    ):
        raise VmctlError("volume prune has been cancelled", hint="add --force to skip the question")
    engine = engine_for(paths, args)
    try:
        result = engine.prune_volumes(filters)
    except EngineError as e:
        raise with_hint(e) from None
    deleted = result.get("VolumesDeleted") or []
    if deleted:
        print("Deleted Volumes:")
        for name in deleted:
            print(name)
        print()
    print(f"Total reclaimed space: {human_size(int(result.get('SpaceReclaimed') or 0))}")
    return 0


# -- info -------------------------------------------------------------------------------------


def info_text(info: dict[str, Any]) -> str:
    """The server part of `docker info`."""
    out: list[str] = ["Server:"]

    def line(label: str, value: object, indent: int = 1) -> None:
        out.append(f"{' ' * indent}{label}: {value}")

    line("Containers", info.get("Containers", 0))
    line("Running", info.get("ContainersRunning", 0), 2)
    line("Paused", info.get("ContainersPaused", 0), 2)
    line("Stopped", info.get("ContainersStopped", 0), 2)
    line("Images", info.get("Images", 0))
    line("Server Version", info.get("ServerVersion", ""))
    line("Storage Driver", info.get("Driver", ""))
    for pair in info.get("DriverStatus") or []:
        if isinstance(pair, list) and len(pair) == 2:
            line(str(pair[0]), pair[1], 2)
    line("Logging Driver", info.get("LoggingDriver", ""))
    line("Cgroup Driver", info.get("CgroupDriver", ""))
    line("Cgroup Version", info.get("CgroupVersion", ""))
    plugins = info.get("Plugins") or {}
    out.append(" Plugins:")
    for kind in ("Volume", "Network", "Log"):
        if plugins.get(kind):
            line(kind, " ".join(plugins[kind]), 2)
    line("Swarm", (info.get("Swarm") or {}).get("LocalNodeState", "inactive"))
    line("Runtimes", " ".join(sorted(info.get("Runtimes") or {})))
    line("Default Runtime", info.get("DefaultRuntime", ""))
    options = info.get("SecurityOptions") or []
    if options:
        out.append(" Security Options:")
        for option in options:
            fields = dict(p.partition("=")[::2] for p in str(option).split(","))
            out.append(f"  {fields.get('name', option)}")
            for key, value in fields.items():
                if key != "name":
                    line(key.capitalize(), value, 3)
    line("Kernel Version", info.get("KernelVersion", ""))
    line("Operating System", info.get("OperatingSystem", ""))
    line("OSType", info.get("OSType", ""))
    line("Architecture", info.get("Architecture", ""))
    line("CPUs", info.get("NCPU", 0))
    line("Total Memory", binary_size(int(info.get("MemTotal") or 0)))
    line("Name", info.get("Name", ""))
    line("ID", info.get("ID", ""))
    line("Docker Root Dir", info.get("DockerRootDir", ""))
    line("Debug Mode", str(bool(info.get("Debug"))).lower())
    line("Experimental", str(bool(info.get("ExperimentalBuild"))).lower())
    line("Live Restore Enabled", str(bool(info.get("LiveRestoreEnabled"))).lower())
    return "\n".join(out) + "\n"


def cmd_info(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        info = engine.info()
    except EngineError as e:
        raise with_hint(e) from None
    if args.format == "json":
        print(json.dumps(info, sort_keys=True, ensure_ascii=False))
        return 0
    print(info_text(info), end="")
    for warning in info.get("Warnings") or []:
        print(warning, file=sys.stderr)
    return 0


# -- parsers ----------------------------------------------------------------------------------


def add_parsers(top: Any, parent: argparse.ArgumentParser) -> None:
    """Register `volume` and `info` on vmctl's subparsers (``parent``: the engine options)."""
    volume = top.add_parser("volume", help="manage volumes (like docker volume)")
    verbs = volume.add_subparsers(
        dest="verb", required=True, metavar="{create,ls,inspect,rm,prune}"
    )

    def verb(name: str, func: Any, help: str, aliases: tuple[str, ...] = ()) -> Any:
        p = verbs.add_parser(
            name, help=help, description=help, parents=[parent], aliases=list(aliases)
        )
        p.set_defaults(func=func)
        return p

    create = verb("create", cmd_volume_create, "create a volume")
    create.add_argument("name", nargs="?", help="the volume's name (default: a random one)")
    create.add_argument("-d", "--driver", default="local", help="volume driver (only local)")
    create.add_argument("--label", action="append", metavar="K=V", help="set a label")
    create.add_argument(
        "-o", "--opt", action="append", metavar="K=V", help="driver option (type, device, o)"
    )

    ls = verb("ls", cmd_volume_ls, "list volumes", aliases=("list",))
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("-f", "--filter", action="append", metavar="K=V", help="dangling, name, …")
    ls.add_argument("--format", choices=("table", "json"), default="table")

    inspect = verb("inspect", cmd_volume_inspect, "show volumes' details as JSON")
    inspect.add_argument("volumes", nargs="+", metavar="VOLUME")

    rm = verb("rm", cmd_volume_rm, "remove volumes", aliases=("remove",))
    rm.add_argument("-f", "--force", action="store_true", help="no error if it does not exist")
    rm.add_argument("volumes", nargs="+", metavar="VOLUME")

    prune = verb("prune", cmd_volume_prune, "remove unused volumes")
    prune.add_argument("-a", "--all", action="store_true", help="also named volumes")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    prune.add_argument("--filter", action="append", metavar="K=V", help="label=…, label!=…")

    info = top.add_parser(
        "info",
        help="show the engine's system-wide information (like docker info)",
        description="show the engine's system-wide information (like docker info)",
        parents=[parent],
    )
    info.add_argument("--format", choices=("table", "json"), default="table")
    info.set_defaults(func=cmd_info)
