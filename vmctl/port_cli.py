"""`vmctl port` (like `docker port`) and the `-p` syntax of `vmctl run`, ranges included."""

from __future__ import annotations

import argparse
from typing import Any

from vmctl.containers_cli import engine_for, with_hint
from vmctl.engine_client import EngineError, PortBinding
from vmctl.errors import VmctlError
from vmctl.paths import Paths
from vmctl.verbs import verb_adder

PORT_HINT = "use [IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|udp], e.g. -p 8080:80"


def _range(text: str, spec: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise VmctlError(f"invalid port mapping {spec!r}", hint=PORT_HINT)
    first, last = int(low), int(high) if sep else int(low)
    if not 0 < first <= last < 65536:
        raise VmctlError(f"invalid port range in {spec!r}", hint=PORT_HINT)
    return first, last


def parse_ports(spec: str) -> list[PortBinding]:
    """One `-p` as docker reads it: `8080:80`, `127.0.0.1:8080:80/udp`, `80` (an ephemeral
    host port), `8000-8002:80-82` (port for port), `8000-8010:80` (any free one of those)."""
    text, _, proto = spec.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp"):
        raise VmctlError(f"invalid protocol {proto!r} in {spec!r}", hint=PORT_HINT)
    host_ip = ""
    if text.startswith("["):  # [::1]:8080:80
        end = text.find("]")
        host_ip, text = text[1:end], text[end + 2 :]
    parts = text.split(":")
    if len(parts) == 3 and not host_ip:
        host_ip, parts = parts[0], parts[1:]
    if len(parts) > 2 or not parts[-1]:
        raise VmctlError(f"invalid port mapping {spec!r}", hint=PORT_HINT)
    first, last = _range(parts[-1], spec)
    host = parts[0] if len(parts) == 2 else ""
    containers = range(first, last + 1)
    if not host:
        return [PortBinding(f"{port}/{proto}", host_ip, "") for port in containers]
    host_first, host_last = _range(host, spec)
    if len(containers) == 1:
        host_port = str(host_first) if host_first == host_last else f"{host_first}-{host_last}"
        return [PortBinding(f"{first}/{proto}", host_ip, host_port)]
    if host_last - host_first != last - first:
        raise VmctlError(
            f"invalid port mapping {spec!r}: the host and container ranges differ in size",
            hint=PORT_HINT,
        )
    return [
        PortBinding(f"{port}/{proto}", host_ip, str(host_first + i))
        for i, port in enumerate(containers)
    ]


def port_lines(ports: dict[str, Any] | None, private: str | None = None) -> list[str]:
    """`docker port` output from inspect's NetworkSettings.Ports."""
    lines = []
    wanted = None
    if private:
        wanted = private if "/" in private else f"{private}/tcp"
    for key, bindings in sorted((ports or {}).items(), key=lambda kv: _sort_key(kv[0])):
        if wanted is not None and key != wanted:
            continue
        for binding in bindings or []:
            address = f"{binding.get('HostIp') or '0.0.0.0'}:{binding.get('HostPort')}"
            lines.append(address if wanted else f"{key} -> {address}")
    return lines


def _sort_key(key: str) -> tuple[int, str]:
    port, _, proto = key.partition("/")
    return (int(port) if port.isdigit() else 0, proto)


def cmd_port(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        details = engine.inspect_container(args.container)
    except EngineError as e:
        raise with_hint(e) from None
    lines = port_lines((details.get("NetworkSettings") or {}).get("Ports"), args.private)
    if args.private and not lines:
        raise VmctlError(f"no public port '{args.private}' published for {args.container}")
    for line in lines:
        print(line)
    return 0


def add_parsers(top: Any, parent: argparse.ArgumentParser) -> None:
    verb = verb_adder(top, parent)
    port = verb("port", cmd_port, "list a container's published ports (like docker port)")
    port.add_argument("container", metavar="CONTAINER")
    port.add_argument("private", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
