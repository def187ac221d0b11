"""Legacy container links (`--link name:alias`) on the default bridge.

HostConfig.Links arrives as "name[:alias]" from the CLI and is kept as dockerd reports it,
"/name:/linker/alias". At the linker's start each target (which must be running) gives
an /etc/hosts line (its address, the alias, its name and short ID) and the environment
variables dockerd sets: ALIAS_NAME, ALIAS_PORT… for each exposed port, and ALIAS_ENV_<var>
for the target's own environment (without the ones every container has). On a
user-defined network a link is instead an alias in the embedded DNS, for the linker only
(agent/network/attachments.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from agent.containers.model import Container
from agent.errors import BadRequest, Conflict

IGNORED_ENV = {"HOME", "HOSTNAME", "PATH"}


def parse(link: str) -> tuple[str, str]:
    """(target name, alias) of "name:alias", "name" or "/name:/linker/alias"."""
    target, _, alias = str(link).partition(":")
    target = target.strip("/")
    alias = alias.rsplit("/", 1)[-1] if alias else target
    if not target or not alias:
        raise BadRequest(f"invalid link {link!r}: expected name[:alias]")
    return target, alias


def normalize(links: list[Any] | None, linker: str) -> list[str] | None:
    """The Links as dockerd keeps them: "/target:/linker/alias"."""
    if not links:
        return None
    return [f"/{t}:/{linker}/{a}" for t, a in (parse(str(link)) for link in links)]


def targets(container: Container, find: Callable[[str], Container]) -> list[tuple[Container, str]]:
    """The running link targets with their aliases (a stopped one is an error, as dockerd)."""
    found = []
    for link in container.host_config.get("Links") or []:
        target_name, alias = parse(str(link))
        target = find(target_name)
        if not target.state.running:
            raise Conflict(
                f"cannot link to a non running container: /{target.name} AS "
                f"/{container.name}/{alias}"
            )
        found.append((target, alias))
    return found


def _prefix(alias: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", alias).upper()


def environment(linker: Container, target: Container, alias: str) -> list[str]:
    """The variables a link gives the linker."""
    prefix = _prefix(alias)
    address = str((target.network or {}).get("IPAddress") or "")
    env = [f"{prefix}_NAME=/{linker.name}/{alias}"]
    ports = sorted(
        (target.config.get("ExposedPorts") or {}),
        key=lambda p: (p.split("/")[1] if "/" in p else "tcp", int(p.split("/")[0])),
    )
    for index, port in enumerate(ports):
        number, _, proto = port.partition("/")
        proto = proto or "tcp"
        key = f"{prefix}_PORT_{number}_{proto.upper()}"
        url = f"{proto}://{address}:{number}"
        if index == 0:
            env.append(f"{prefix}_PORT={url}")
        env += [
            f"{key}={url}",
            f"{key}_ADDR={address}",
            f"{key}_PORT={number}",
            f"{key}_PROTO={proto}",
        ]
    for item in target.config.get("Env") or []:
        name, _, value = str(item).partition("=")
        if name not in IGNORED_ENV:
            env.append(f"{prefix}_ENV_{name}={value}")
    return env


def hosts_entries(target: Container, alias: str) -> list[str]:
    """/etc/hosts lines for a link target: address, alias, name, short ID."""
    address = str((target.network or {}).get("IPAddress") or "")
    if not address:
        return []
    names = list(dict.fromkeys([alias, target.name, target.id[:12]]))
    return [f"{address}\t{' '.join(names)}\n"]
