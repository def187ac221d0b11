"""Network endpoints of the Engine API: the built-in networks and user-defined ones.

The built-in `bridge` is the agent's default bridge (agent/network/bridge.py), with `host`
and `none` beside it; their IDs derive from their names. User-defined networks (bridge
driver only) live in agent/network/store.py, their containers' endpoints and the embedded
DNS in agent/network/attachments.py.
"""

from __future__ import annotations

import calendar
import functools
import os
import time
from typing import Any

from agent import engine_handle
from agent.api.filter_args import Filters, bool_filter, match_labels, parse_filters
from agent.api.request import Request
from agent.api.response import ResponseWriter
from agent.containers.model import Container
from agent.containers.prune import parse_until
from agent.engine import Engine
from agent.errors import AgentError, BadRequest, Conflict, NotFound
from agent.events import publish
from agent.network.attachments import Attachments
from agent.network.ids import BUILTIN_NETWORKS, network_id
from agent.network.store import NetworkRecord

LIST_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
DRIVERS = {"bridge": "bridge", "host": "host", "none": "null"}
NO_USER_NETWORKS = (
    "user-defined networks need the default bridge, which this host could not set up "
    "(nft missing?): only --network host and none work"
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


# --- user-defined networks -----------------------------------------------------------------


def _attachments(engine: Engine) -> Attachments:
    if engine.networks is None:
        raise BadRequest(NO_USER_NETWORKS)
    return engine.networks


def user_document(engine: Engine, record: NetworkRecord, with_members: bool) -> dict[str, Any]:
    """The Network object of a user-defined network."""
    config = {"Subnet": record.subnet, "Gateway": record.gateway}
    if record.ip_range:
        config["IPRange"] = record.ip_range
    members: dict[str, Any] = {}
    if with_members and engine.networks is not None:
        for container_id, endpoint in engine.networks.members(record).items():
            members[container_id] = {
                "Name": endpoint["Name"],
                "EndpointID": endpoint.get("EndpointID", ""),
                "MacAddress": endpoint.get("MacAddress", ""),
                "IPv4Address": f"{endpoint['IPAddress']}/{endpoint['IPPrefixLen']}",
                "IPv6Address": "",
            }
    return {
        "Name": record.name,
        "Id": record.id,
        "Created": record.created,
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv4": True,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {}, "Config": [config]},
        "Internal": record.internal,
        "Attachable": record.attachable,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": members,
        "Options": dict(record.options),
        "Labels": dict(record.labels),
    }


def _resolve(engine: Engine, ref: str) -> str | NetworkRecord:
    """A built-in network's name or a user network's record; 404 for neither."""
    if engine.networks is not None:
        record = engine.networks.store.find(ref)
        if record is not None and (record.name == ref or record.id == ref):
            return record  # an exact match wins over a built-in's ID prefix
    try:
        return find(engine, ref)
    except NotFound:
        if engine.networks is not None:
            record = engine.networks.store.find(ref)
            if record is not None:
                return record
        raise


def _user_matches(engine: Engine, record: NetworkRecord, filters: Filters) -> bool:
    if "name" in filters and not any(v in record.name for v in filters["name"]):
        return False
    if "id" in filters and not any(v in record.id for v in filters["id"]):
        return False
    if "driver" in filters and "bridge" not in filters["driver"]:
        return False
    if "scope" in filters and "local" not in filters["scope"]:
        return False
    if "label" in filters and not match_labels(record.labels, filters["label"]):
        return False
    for kind in filters.get("type", []):
        if kind not in ("builtin", "custom"):
            raise BadRequest(f"invalid filter: 'type'='{kind}'")
    if "type" in filters and "custom" not in filters["type"]:
        return False
    dangling = bool_filter(filters, "dangling")
    if dangling is None or engine.networks is None:
        return True
    return dangling != bool(engine.networks.users(record))


# --- handlers -------------------------------------------------------------------------------


def list_networks(request: Request, response: ResponseWriter) -> None:
    filters = parse_filters(request.arg("filters"), LIST_FILTERS)
    engine = _engine()
    found = [document(engine, n, False) for n in _available(engine) if _matches(engine, n, filters)]
    if engine.networks is not None:
        found += [
            user_document(engine, r, False)
            for r in engine.networks.store.all()
            if _user_matches(engine, r, filters)
        ]
    response.send_json(found)


def inspect_network(request: Request, response: ResponseWriter) -> None:
    scope = request.arg("scope")
    if scope and scope not in ("local", "swarm", "global"):
        raise BadRequest(f"invalid scope {scope!r}: expected local, swarm or global")
    engine = _engine()
    found = _resolve(engine, request.params["id"])
    if scope and scope != "local":
        raise NotFound(f"network {request.params['id']} not found")
    if isinstance(found, str):
        response.send_json(document(engine, found, True))
    else:
        response.send_json(user_document(engine, found, True))


def _str_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest(f"{key} must be an object of strings")
    return {str(k): v for k, v in value.items()}


def create(request: Request, response: ResponseWriter) -> None:
    body = request.json_object()
    name = body.get("Name")
    if not isinstance(name, str) or not name:
        raise BadRequest("a network needs a Name")
    driver = body.get("Driver") or "bridge"
    if driver != "bridge":
        if name in BUILTIN_NETWORKS:
            raise Conflict(f"network with name {name} already exists")
        raise BadRequest(f"network driver {driver!r} is not supported: only bridge")
    for flag in ("EnableIPv6", "Ingress", "ConfigOnly"):
        if body.get(flag) is True:
            raise BadRequest(f"{flag} is not supported for bridge networks here")
    ipam = body.get("IPAM") or {}
    if not isinstance(ipam, dict):
        raise BadRequest("IPAM must be an object")
    if (ipam.get("Driver") or "default") != "default":
        raise BadRequest(f"IPAM driver {ipam.get('Driver')!r} is not supported: only default")
    configs = ipam.get("Config") or []
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise BadRequest("IPAM.Config must be a list of objects")
    configs = [c for c in configs if ":" not in str(c.get("Subnet") or "")]  # IPv6 pools
    if len(configs) > 1:
        raise BadRequest("only one IPv4 IPAM Config (subnet) per network is supported")
    pool = configs[0] if configs else {}
    if (pool.get("Gateway") or pool.get("IPRange")) and not pool.get("Subnet"):
        raise BadRequest("a gateway or an IP range needs a subnet (--subnet)")
    attachments = _attachments(_engine())
    record = attachments.store.create(
        name,
        subnet=str(pool.get("Subnet") or ""),
        gateway=str(pool.get("Gateway") or ""),
        ip_range=str(pool.get("IPRange") or ""),
        internal=bool(body.get("Internal")),
        attachable=bool(body.get("Attachable")),
        labels=_str_map(body, "Labels"),
        options=_str_map(body, "Options"),
    )
    publish("network", "create", record.id, {"name": record.name, "type": "bridge"})
    response.send_json({"Id": record.id, "Warning": ""}, status=201)


def _remove(engine: Engine, record: NetworkRecord) -> None:
    users = _attachments(engine).users(record)
    if users:
        raise AgentError(
            403,
            f"error while removing network: network {record.name} id {record.id} has active "
            f"endpoints ({', '.join(c.name for c in users)})",
        )
    _attachments(engine).store.remove(record)
    publish("network", "destroy", record.id, {"name": record.name, "type": "bridge"})


def remove(request: Request, response: ResponseWriter) -> None:
    engine = _engine()
    found = _resolve(engine, request.params["id"])
    if isinstance(found, str):
        raise AgentError(403, f"{found} is a pre-defined network and cannot be removed")
    _remove(engine, found)
    response.send(204)


def _user_network(engine: Engine, ref: str, verb: str) -> NetworkRecord:
    found = _resolve(engine, ref)
    if isinstance(found, str):
        raise BadRequest(
            f"cannot {verb} a container {'to' if verb == 'connect' else 'from'} the "
            f"built-in network {found}: only user-defined networks can be "
            f"{verb}ed after create"
        )
    return found


def connect(request: Request, response: ResponseWriter) -> None:
    engine = _engine()
    body = request.json_object()
    record = _user_network(engine, request.params["id"], "connect")
    ref = body.get("Container")
    if not isinstance(ref, str) or not ref:
        raise BadRequest("the request needs the Container to connect")
    container = engine.containers.get(ref)
    config = body.get("EndpointConfig") or {}
    if not isinstance(config, dict):
        raise BadRequest("EndpointConfig must be an object")
    _attachments(engine).connect(container, record, config)
    response.send(200)


def disconnect(request: Request, response: ResponseWriter) -> None:
    engine = _engine()
    body = request.json_object()
    record = _user_network(engine, request.params["id"], "disconnect")
    ref = body.get("Container")
    if not isinstance(ref, str) or not ref:
        raise BadRequest("the request needs the Container to disconnect")
    try:
        container = engine.containers.get(ref)
    except NotFound:
        if body.get("Force"):
            response.send(200)  # as dockerd: force cleans up after a vanished container
            return
        raise
    _attachments(engine).disconnect(container, record)
    response.send(200)


def prune(request: Request, response: ResponseWriter) -> None:
    """Remove the user-defined networks no container uses (built-ins never are)."""
    filters = parse_filters(request.arg("filters"), ("label", "label!", "until"))
    engine = _engine()
    now = time.time()
    until = [parse_until(v, now) for v in filters.get("until", [])]
    deleted: list[str] = []
    if engine.networks is not None:
        for record in engine.networks.store.all():
            if "label" in filters and not match_labels(record.labels, filters["label"]):
                continue
            if any(match_labels(record.labels, [v]) for v in filters.get("label!", [])):
                continue
            created = _created_seconds(record.created)
            if until and not all(created < limit for limit in until):
                continue
            if engine.networks.users(record):
                continue
            _remove(engine, record)
            deleted.append(record.name)
    response.send_json({"NetworksDeleted": deleted})


def _created_seconds(created: str) -> float:
    try:
        return calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0
