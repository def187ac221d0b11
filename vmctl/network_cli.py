"""`vmctl network create|ls|inspect|rm|prune|connect|disconnect`, as their docker namesakes.

They talk to the same engine as the container verbs (the default machine, `--machine`,
`--host` or VMCTL_HOST); output and exit codes follow docker's.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vmctl.containers_cli import engine_for, inspect_each, report, with_hint
from vmctl.engine_client import EngineError
from vmctl.errors import VmctlError
from vmctl.paths import Paths
from vmctl.system_cli import confirmed, filters_from, key_values, table

VERBS = ("network",)


def cmd_network_create(paths: Paths, args: argparse.Namespace) -> int:
    pool = {
        key: value
        for key, value in (
            ("Subnet", args.subnet),
            ("Gateway", args.gateway),
            ("IPRange", args.ip_range),
        )
        if value
    }
    if pool and "Subnet" not in pool:
        raise VmctlError("--gateway and --ip-range need --subnet")
    engine = engine_for(paths, args)
    try:
        created = engine.create_network(
            args.name,
            Driver=args.driver,
            Internal=args.internal,
            Attachable=args.attachable,
            Labels=key_values(args.label, "label"),
            Options=key_values(args.opt, "opt"),
            IPAM={"Driver": "default", "Config": [pool] if pool else []},
        )
    except EngineError as e:
        raise with_hint(e) from None
    print(created.get("Id", ""))
    return 0


def network_row(network: dict[str, Any]) -> dict[str, str]:
    """One network as `docker network ls --format json` prints it."""
    labels = network.get("Labels") or {}
    return {
        "CreatedAt": str(network.get("Created", "")),
        "Driver": str(network.get("Driver", "")),
        "ID": str(network.get("Id", ""))[:12],
        "IPv4": str(network.get("EnableIPv4", True)).lower(),
        "IPv6": str(network.get("EnableIPv6", False)).lower(),
        "Internal": str(network.get("Internal", False)).lower(),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Name": str(network.get("Name", "")),
        "Scope": str(network.get("Scope", "")),
    }


def cmd_network_ls(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        networks = engine.list_networks(filters_from(args.filter))
    except EngineError as e:
        raise with_hint(e) from None
    networks.sort(key=lambda n: str(n.get("Name", "")))
    if args.quiet:
        for network in networks:
            print(str(network.get("Id", ""))[: 64 if args.no_trunc else 12])
    elif args.format == "json":
        for network in networks:
            print(json.dumps(network_row(network), sort_keys=True, separators=(",", ":")))
    else:
        rows = [["NETWORK ID", "NAME", "DRIVER", "SCOPE"]]
        rows += [
            [
                str(n.get("Id", ""))[: 64 if args.no_trunc else 12],
                str(n.get("Name", "")),
                str(n.get("Driver", "")),
                str(n.get("Scope", "")),
            ]
            for n in networks
        ]
        print(table(rows), end="")
    return 0


def cmd_network_inspect(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    return inspect_each(args.networks, engine.inspect_network, "network")


def cmd_network_rm(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    failed = False
    for name in args.networks:
        try:
            engine.remove_network(name)
        except EngineError as e:
            if e.status == 404 and args.force:
                continue
            if e.status == 403 and "active endpoints" in e.message and not e.hint:
                e.hint = f"disconnect its containers first: vmctl network disconnect {name} NAME"
            report(with_hint(e))
            failed = True
            continue
        print(name)
    return 1 if failed else 0


def cmd_network_prune(paths: Paths, args: argparse.Namespace) -> int:
    if not args.force and not confirmed(
        "WARNING! This will remove all custom networks not used by at least one container."
    ):
        raise VmctlError(
            "network prune has been cancelled", hint="add --force to skip the question"
        )
    engine = engine_for(paths, args)
    try:
        result = engine.prune_networks(filters_from(args.filter))
    except EngineError as e:
        raise with_hint(e) from None
    deleted = result.get("NetworksDeleted") or []
    if deleted:
        print("Deleted Networks:")
        for name in deleted:
            print(name)
    return 0


def cmd_network_connect(paths: Paths, args: argparse.Namespace) -> int:
    endpoint: dict[str, Any] = {}
    if args.alias:
        endpoint["Aliases"] = list(args.alias)
    if args.ip:
        endpoint["IPAMConfig"] = {"IPv4Address": args.ip}
    engine = engine_for(paths, args)
    try:
        engine.connect_network(args.network, args.container, endpoint)
    except EngineError as e:
        raise with_hint(e) from None
    return 0


def cmd_network_disconnect(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        engine.disconnect_network(args.network, args.container, force=args.force)
    except EngineError as e:
        raise with_hint(e) from None
    return 0


def add_parsers(top: Any, parent: argparse.ArgumentParser) -> None:
    """Register `network` on vmctl's subparsers (``parent``: the engine options)."""
    network = top.add_parser("network", help="manage networks (like docker network)")
    verbs = network.add_subparsers(
        dest="verb",
        required=True,
        metavar="{create,ls,inspect,rm,prune,connect,disconnect}",
    )

    def verb(name: str, func: Any, help: str, aliases: tuple[str, ...] = ()) -> Any:
        p = verbs.add_parser(
            name, help=help, description=help, parents=[parent], aliases=list(aliases)
        )
        p.set_defaults(func=func)
        return p

    create = verb("create", cmd_network_create, "create a bridge network")
    create.add_argument("name", help="the network's name")
    create.add_argument("-d", "--driver", default="bridge", help="network driver (only bridge)")
    create.add_argument("--subnet", help="its subnet, e.g. 10.10.0.0/24 (default: a free /16)")
    create.add_argument("--gateway", help="the bridge's address in the subnet")
    create.add_argument("--ip-range", help="allocate container addresses from this sub-range")
    create.add_argument("--internal", action="store_true", help="no access to the outside")
    create.add_argument("--attachable", action="store_true", help="recorded only")
    create.add_argument("--label", action="append", metavar="K=V", help="set a label")
    create.add_argument(
        "-o", "--opt", action="append", metavar="K=V", help="driver option (bridge name, mtu)"
    )

    ls = verb("ls", cmd_network_ls, "list networks", aliases=("list",))
    ls.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    ls.add_argument("--no-trunc", action="store_true", help="full IDs")
    ls.add_argument("-f", "--filter", action="append", metavar="K=V", help="name, label, type…")
    ls.add_argument("--format", choices=("table", "json"), default="table")

    inspect = verb("inspect", cmd_network_inspect, "show networks' details as JSON")
    inspect.add_argument("networks", nargs="+", metavar="NETWORK")

    rm = verb("rm", cmd_network_rm, "remove networks", aliases=("remove",))
    rm.add_argument("-f", "--force", action="store_true", help="no error if it does not exist")
    rm.add_argument("networks", nargs="+", metavar="NETWORK")

    prune = verb("prune", cmd_network_prune, "remove unused networks")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    prune.add_argument("--filter", action="append", metavar="K=V", help="label=…, until=…")

    connect = verb("connect", cmd_network_connect, "connect a container to a network")
    connect.add_argument("--alias", action="append", metavar="NAME", help="a DNS alias")
    connect.add_argument("--ip", help="its IPv4 address on the network")
    connect.add_argument("network", metavar="NETWORK")
    connect.add_argument("container", metavar="CONTAINER")

    disconnect = verb("disconnect", cmd_network_disconnect, "disconnect a container")
    disconnect.add_argument("-f", "--force", action="store_true", help="even if it is gone")
    disconnect.add_argument("network", metavar="NETWORK")
    disconnect.add_argument("container", metavar="CONTAINER")
