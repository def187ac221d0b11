"""Network endpoints of the Engine API: the built-in networks `bridge`, `host` and `none`.

The bridge is the agent's default bridge (agent/network/bridge.py): its real subnet,
gateway and the running containers on it with their addresses. User-defined networks
(create, connect, disconnect, removal) are not implemented yet: those requests get a 4xx
that says so.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from agent import engine_handle
from agent.api.filter_args import Filters, bool_filter, match_labels, parse_filters
from agent.api.request import Request
from agent.api.response import ResponseWriter
from agent.containers.model import Container
from agent.engine import Engine
from agent.errors import AgentError, BadRequest, Conflict, NotFound
from agent.network.ids import BUILTIN_NETWORKS, network_id

LIST_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
DRIVERS = {"bridge": "bridge", "host": "host", "none": "null"}
NOT_YET = (
    "user-defined networks are not supported yet: containers can use the built-in "
    "networks only (--network bridge, host or none)"
)


def _engine() -> Engine:
    return engine_handle.current()


@functools.cache
def _started_at() -> str:
    """When this agent started (dockerd sets up its built-in networks at each start)."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            data = handle.read()
        ticks = int(data[data.rindex(b")") + 2 :].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        started = time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        started = time.time()
    fraction = f"{started % 1:.9f}"[2:]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{fraction}Z"


def _mode(container: Container) -> str:
    mode = str(container.host_config.get("NetworkMode") or "default")
    return "bridge" if mode == "default" else mode


def _members(engine: Engine, name: str) -> dict[str, dict[str, str]]:
    """The running containers on a built-in network, as NetworkContainer objects."""
    members: dict[str, dict[str, str]] = {}
    for container in engine.containers.all():
        if not container.state.running or _mode(container) != name:
            continue
        endpoint = container.network or {}
        address = ""
        if endpoint.get("IPAddress"):
            address = f"{endpoint['IPAddress']}/{endpoint.get('IPPrefixLen', 0)}"
        members[container.id] = {
            "Name": container.name,
            "EndpointID": str(endpoint.get("HostVeth", "")),
            "MacAddress": str(endpoint.get("MacAddress", "")),
            "IPv4Address": address,
            "IPv6Address": "",
        }
    return members


def _available(engine: Engine) -> list[str]:
    """The built-in networks this engine has (no bridge where the host could not make one)."""
    return [n for n in BUILTIN_NETWORKS if n != "bridge" or engine.network is not None]


def document(engine: Engine, name: str, with_members: bool) -> dict[str, Any]:
    """The Network object of a built-in network."""
    ipam_config: list[dict[str, str]] = []
    options: dict[str, str] = {}
    if name == "bridge":
        bridge: Any = engine.network
        ipam_config = [{"Subnet": str(bridge.subnet), "Gateway": str(bridge.gateway)}]
        options = {
            "com.docker.network.bridge.default_bridge": "true",
            "com.docker.network.bridge.enable_icc": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
            "com.docker.network.bridge.name": str(bridge.name),
            "com.docker.network.driver.mtu": str(bridge.mtu),
        }
    return {
        "Name": name,
        "Id": network_id(name),
        "Created": _started_at(),
        "Scope": "local",
        "Driver": DRIVERS[name],
        "EnableIPv4": name == "bridge",
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": ipam_config},
        "Internal": False,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": _members(engine, name) if with_members else {},
        "Options": options,
        "Labels": {},
    }


def find(engine: Engine, ref: str) -> str:
    """A built-in network's name from its name, ID or a unique ID prefix; else 404."""
    names = _available(engine)
    if ref in names:
        return ref
    matches = [n for n in names if ref and network_id(n).startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    raise NotFound(f"network {ref} not found")


def _matches(engine: Engine, name: str, filters: Filters) -> bool:
    if "name" in filters and not any(v in name for v in filters["name"]):
        return False
    if "id" in filters and not any(v in network_id(name) for v in filters["id"]):
        return False
    if "driver" in filters and DRIVERS[name] not in filters["driver"]:
        return False
    if "scope" in filters and "local" not in filters["scope"]:
        return False
    if "label" in filters and not match_labels({}, filters["label"]):
        return False
    for kind in filters.get("type", []):
        if kind not in ("builtin", "custom"):
            raise BadRequest(f"invalid filter: 'type'='{kind}'")
    if "type" in filters and "builtin" not in filters["type"]:
        return False
    # built-in networks are never dangling: a dangling=true listing leaves them out
    return bool_filter(filters, "dangling") is not True


# --- handlers -------------------------------------------------------------------------------


def list_networks(request: Request, response: ResponseWriter) -> None:
    filters = parse_filters(request.arg("filters"), LIST_FILTERS)
    engine = _engine()
    found = [document(engine, n, False) for n in _available(engine) if _matches(engine, n, filters)]
    response.send_json(found)


def inspect_network(request: Request, response: ResponseWriter) -> None:
    scope = request.arg("scope")
    if scope and scope not in ("local", "swarm", "global"):
        raise BadRequest(f"invalid scope {scope!r}: expected local, swarm or global")
    engine = _engine()
    name = find(engine, request.params["id"])
    if scope and scope != "local":
        raise NotFound(f"network {request.params['id']} not found")
    response.send_json(document(engine, name, True))


def create(request: Request, response: ResponseWriter) -> None:
    body = request.json_object()
    name = body.get("Name")
    if not isinstance(name, str) or not name:
        raise BadRequest("a network needs a Name")
    if name in BUILTIN_NETWORKS:
        raise Conflict(f"network with name {name} already exists")
    raise BadRequest(NOT_YET)


def remove(request: Request, response: ResponseWriter) -> None:
    try:
        name = find(_engine(), request.params["id"])
    except NotFound as error:
        raise NotFound(f"{error.message} ({NOT_YET.split(':')[0]})") from None
    raise AgentError(403, f"{name} is a pre-defined network and cannot be removed")


def _connect_or_disconnect(request: Request, verb: str) -> None:
    engine = _engine()
    body = request.json_object()
    name = find(engine, request.params["id"])
    container = body.get("Container")
    if not isinstance(container, str) or not container:
        raise BadRequest("the request needs the Container to " + verb)
    engine.containers.get(container)  # 404 for a missing container
    raise BadRequest(
        f"cannot {verb} a container {'to' if verb == 'connect' else 'from'} network {name} "
        "after it was created: a container's network is chosen at create (--network); " + NOT_YET
    )


def connect(request: Request, response: ResponseWriter) -> None:
    _connect_or_disconnect(request, "connect")


def disconnect(request: Request, response: ResponseWriter) -> None:
    _connect_or_disconnect(request, "disconnect")


def prune(request: Request, response: ResponseWriter) -> None:
    """Only user-defined networks are ever pruned, and there are none."""
    parse_filters(request.arg("filters"), ("label", "label!", "until"))
    response.send_json({"NetworksDeleted": []})
