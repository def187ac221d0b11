"""The shape of `POST /containers/create`'s body, checked before anything is made.

dockerd decodes the body into Go structs, so a field of the wrong type is a 400 there
before any work starts. Here the same check runs on the JSON: every field the Engine API
(v1.50) defines for Config, HostConfig and NetworkingConfig, with its type; `null` is
accepted wherever a value is (the CLI sends many). An unknown field is refused too, with
its name, so a typo (`"Memmory"`) is not silently ignored. Cmd, Entrypoint and Shell
accept a string as dockerd's StrSlice does, normalized to a one-element list.
"""

from __future__ import annotations

from typing import Any

from agent.errors import BadRequest

STR, INT, BOOL, OBJ = "string", "integer", "boolean", "object"
STRS, INTS, OBJS = "list of strings", "list of integers", "list of objects"
STR_MAP = "object of strings"
STR_SLICE = "string or list of strings"

CONFIG: dict[str, str] = {
    "Hostname": STR,
    "Domainname": STR,
    "User": STR,
    "AttachStdin": BOOL,
    "AttachStdout": BOOL,
    "AttachStderr": BOOL,
    "ExposedPorts": OBJ,
    "Tty": BOOL,
    "OpenStdin": BOOL,
    "StdinOnce": BOOL,
    "Env": STRS,
    "Cmd": STR_SLICE,
    "Healthcheck": OBJ,
    "ArgsEscaped": BOOL,
    "Image": STR,
    "Volumes": OBJ,
    "WorkingDir": STR,
    "Entrypoint": STR_SLICE,
    "NetworkDisabled": BOOL,
    "MacAddress": STR,
    "OnBuild": STRS,
    "Labels": STR_MAP,
    "StopSignal": STR,
    "StopTimeout": INT,
    "Shell": STR_SLICE,
    "HostConfig": OBJ,
    "NetworkingConfig": OBJ,
}

HOST_CONFIG: dict[str, str] = {
    # Resources
    "CpuShares": INT,
    "Memory": INT,
    "CgroupParent": STR,
    "BlkioWeight": INT,
    "BlkioWeightDevice": OBJS,
    "BlkioDeviceReadBps": OBJS,
    "BlkioDeviceWriteBps": OBJS,
    "BlkioDeviceReadIOps": OBJS,
    "BlkioDeviceWriteIOps": OBJS,
    "CpuPeriod": INT,
    "CpuQuota": INT,
    "CpuRealtimePeriod": INT,
    "CpuRealtimeRuntime": INT,
    "CpusetCpus": STR,
    "CpusetMems": STR,
    "Devices": OBJS,
    "DeviceCgroupRules": STRS,
    "DeviceRequests": OBJS,
    "KernelMemoryTCP": INT,
    "MemoryReservation": INT,
    "MemorySwap": INT,
    "MemorySwappiness": INT,
    "NanoCpus": INT,
    "OomKillDisable": BOOL,
    "Init": BOOL,
    "PidsLimit": INT,
    "Ulimits": OBJS,
    "CpuCount": INT,
    "CpuPercent": INT,
    "IOMaximumIOps": INT,
    "IOMaximumBandwidth": INT,
    # the rest of HostConfig
    "Binds": STRS,
    "ContainerIDFile": STR,
    "LogConfig": OBJ,
    "NetworkMode": STR,
    "PortBindings": OBJ,
    "RestartPolicy": OBJ,
    "AutoRemove": BOOL,
    "VolumeDriver": STR,
    "VolumesFrom": STRS,
    "Mounts": OBJS,
    "ConsoleSize": INTS,
    "Annotations": STR_MAP,
    "CapAdd": STRS,
    "CapDrop": STRS,
    "CgroupnsMode": STR,
    "Dns": STRS,
    "DnsOptions": STRS,
    "DnsSearch": STRS,
    "ExtraHosts": STRS,
    "GroupAdd": STRS,
    "IpcMode": STR,
    "Cgroup": STR,
    "Links": STRS,
    "OomScoreAdj": INT,
    "PidMode": STR,
    "Privileged": BOOL,
    "PublishAllPorts": BOOL,
    "ReadonlyRootfs": BOOL,
    "SecurityOpt": STRS,
    "StorageOpt": STR_MAP,
    "Tmpfs": STR_MAP,
    "UTSMode": STR,
    "UsernsMode": STR,
    "ShmSize": INT,
    "Sysctls": STR_MAP,
    "Runtime": STR,
    "Isolation": STR,
    "MaskedPaths": STRS,
    "ReadonlyPaths": STRS,
    # older clients (the Python SDK among them) may still send these; dockerd ignores them
    "KernelMemory": INT,
    "InitPath": STR,
}

NETWORKING_CONFIG: dict[str, str] = {"EndpointsConfig": OBJ}


def _fits(value: Any, kind: str) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == OBJ:
        return isinstance(value, dict)
    if kind == STR_MAP:
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if kind in (STRS, STR_SLICE):
        if kind == STR_SLICE and isinstance(value, str):
            return True
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == INTS:
        return isinstance(value, list) and all(_fits(v, INT) for v in value)
    if kind == OBJS:
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    raise AssertionError(kind)


def _check(section: dict[str, Any], fields: dict[str, str], where: str) -> None:
    for key, value in section.items():
        kind = fields.get(key)
        if kind is None:
            raise BadRequest(f"unknown field {where}{key} in the container's configuration")
        if value is not None and not _fits(value, kind):
            raise BadRequest(
                f"invalid type for {where}{key}: expected {kind}, got {_json_type(value)}"
            )
        if kind == STR_SLICE and isinstance(value, str):
            section[key] = [value]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def check_create_body(body: dict[str, Any]) -> None:
    """Raise BadRequest naming the first unknown or mistyped field (normalizes StrSlices)."""
    _check(body, CONFIG, "")
    host_config = body.get("HostConfig")
    if isinstance(host_config, dict):
        _check(host_config, HOST_CONFIG, "HostConfig.")
    networking = body.get("NetworkingConfig")
    if isinstance(networking, dict):
        _check(networking, NETWORKING_CONFIG, "NetworkingConfig.")
