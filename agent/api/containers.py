"""Container endpoints of the Engine API, on top of :mod:`agent.containers.manager`."""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from typing import Any

from agent import engine_handle
from agent.api import streams
from agent.api.create_body import check_create_body
from agent.api.request import Request
from agent.api.response import (
    MULTIPLEXED_STREAM_TYPE,
    RAW_STREAM_TYPE,
    ResponseWriter,
)
from agent.containers import health
from agent.containers.model import RUNNING, Container
from agent.engine import Engine
from agent.errors import AgentError, BadRequest
from agent.humanize import human_duration
from agent.runtime import attach as shim_attach
from agent.runtime.logfile import parse_timestamp, read_entries

log = logging.getLogger(__name__)


def _engine() -> Engine:
    return engine_handle.current()


def _id(request: Request) -> str:
    return request.params["id"]


# --- documents --------------------------------------------------------------------------------


def _unix(timestamp: str) -> int:
    try:
        return parse_timestamp(timestamp) // 1_000_000_000
    except ValueError:
        return 0


def _status_text(container: Container) -> str:
    """`docker ps`'s STATUS column, as dockerd words it."""
    state = container.state
    if state.status == "running":
        return "Up " + _ago(state.started_at) + health.status_suffix(container)
    if state.status == "paused":
        return "Up " + _ago(state.started_at) + " (Paused)"
    if state.status == "restarting":
        return f"Restarting ({state.exit_code}) " + _ago(state.finished_at) + " ago"
    if state.status == "exited":
        return f"Exited ({state.exit_code}) " + _ago(state.finished_at) + " ago"
    return state.status.capitalize()


def _ago(timestamp: str) -> str:
    return human_duration(max(0, int(time.time()) - _unix(timestamp)))


def _network_settings(container: Container) -> dict[str, Any]:
    """NetworkSettings.Networks: every network the container is (or will be) on."""
    from agent.network.attachments import requested_networks

    BUILTIN = ("bridge", "host", "none")  # noqa: N806

    mode = str(container.host_config.get("NetworkMode") or "default")
    if mode.startswith("container:"):
        return {}
    names = [] if mode not in ("default", *BUILTIN) else [mode.replace("default", "bridge")]
    names += requested_networks(container)
    running = container.state.running
    attached = (container.network or {}).get("Networks") or {}
    found = {}
    for name in names:
        endpoint = dict(attached.get(name) or {}) if running else {}
        if not endpoint and running and name == names[0] and not attached:
            endpoint = dict(container.network or {})  # a record from before user networks
        config = container.endpoints_config.get(name) or {}
        found[name] = {
            "IPAMConfig": config.get("IPAMConfig") or None,
            "Links": config.get("Links") or None,
            "Aliases": config.get("Aliases") or None,
            "MacAddress": endpoint.get("MacAddress", ""),
            "NetworkID": endpoint.get("NetworkID") or (name if name in BUILTIN else ""),
            "EndpointID": endpoint.get("EndpointID") or endpoint.get("HostVeth", ""),
            "Gateway": endpoint.get("Gateway", ""),
            "IPAddress": endpoint.get("IPAddress", ""),
            "IPPrefixLen": endpoint.get("IPPrefixLen", 0),
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DriverOpts": None,
            "DNSNames": endpoint.get("DNSNames") or None,
        }
    return found


def _published(container: Container) -> list[Any]:
    """The host ports a running container holds (as allocated at its start)."""
    from agent.network.ports import Binding

    if not container.state.running:
        return []
    bindings = [Binding.from_json(b) for b in (container.network or {}).get("Ports") or []]
    publisher = getattr(_engine().containers, "ports", None)
    if publisher is not None and publisher.behind_host:
        # behind the VM's host agent, a binding without HostIp is on the host's 127.0.0.1
        bindings = [
            Binding(b.container_port, b.proto, b.host_ip or "127.0.0.1", b.host_port)
            for b in bindings
        ]
    return bindings


def summary(container: Container) -> dict[str, Any]:
    """An entry of GET /containers/json."""
    from agent.network.ports import summary_ports

    config = container.config
    command = " ".join([*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])])
    return {
        "Id": container.id,
        "Names": ["/" + container.name],
        "Image": container.image_name,
        "ImageID": container.image_id,
        "Command": command,
        "Created": _unix(container.created),
        "Ports": summary_ports(config, _published(container)) if container.state.running else [],
        "Labels": config.get("Labels") or {},
        "State": container.state.status,
        "Status": _status_text(container),
        "HostConfig": {"NetworkMode": container.host_config.get("NetworkMode") or "default"},
        "NetworkSettings": {"Networks": _network_settings(container)},
        "Mounts": container.mounts,
    }


def inspect(container: Container) -> dict[str, Any]:
    """GET /containers/{id}/json."""
    from agent.network.ports import inspect_ports

    state = container.state
    config = container.config
    host_config = {
        "NetworkMode": "default",
        "LogConfig": {"Type": "json-file", "Config": {}},
        **container.host_config,
    }
    if not host_config["LogConfig"].get("Type"):
        host_config["LogConfig"] = {"Type": "json-file", **host_config["LogConfig"]}
        host_config["LogConfig"]["Type"] = "json-file"
    return {
        "Id": container.id,
        "Created": container.created,
        "Path": ([*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])] or [""])[0],
        "Args": [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])][1:],
        "State": {
            "Status": state.status,
            "Running": state.status in ("running", "paused"),
            "Paused": state.status == "paused",
            "Restarting": state.status == "restarting",
            "OOMKilled": state.oom_killed,
            "Dead": state.status == "dead",
            "Pid": state.pid,
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": state.started_at,
            "FinishedAt": state.finished_at,
            **({"Health": state.health} if state.health else {}),
        },
        "Image": container.image_id,
        "ResolvConfPath": container.etc_file("resolv.conf"),
        "HostnamePath": container.etc_file("hostname"),
        "HostsPath": container.etc_file("hosts"),
        "LogPath": container.log_file,
        "Name": "/" + container.name,
        "RestartCount": state.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": [e for e in container.exec_ids] or None,
        "HostConfig": host_config,
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {
                "UpperDir": container.upper,
                "WorkDir": container.work,
                "MergedDir": container.merged,
            },
        },
        "Mounts": container.mounts,
        "Config": config,
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "",
            "SandboxKey": f"/proc/{state.pid}/ns/net" if state.pid else "",
            "Ports": inspect_ports(config, _published(container)) if state.running else {},
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": (container.network or {}).get("HostVeth", ""),
            "Gateway": (container.network or {}).get("Gateway", ""),
            "IPAddress": (container.network or {}).get("IPAddress", ""),
            "IPPrefixLen": (container.network or {}).get("IPPrefixLen", 0),
            "MacAddress": (container.network or {}).get("MacAddress", ""),
            "Networks": _network_settings(container),
        },
    }


# --- filters ---------------------------------------------------------------------------------


def _filters(request: Request) -> dict[str, list[str]]:
    text = request.arg("filters")
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise BadRequest(f"invalid filter: {text}") from None
    result: dict[str, list[str]] = {}
    for key, value in (raw or {}).items():
        # two encodings exist: {"status": ["exited"]} and {"status": {"exited": true}}
        result[key] = list(value) if isinstance(value, list) else [k for k, v in value.items() if v]
    return result


def _matches(container: Container, filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        if key == "status":
            ok = container.state.status in values
        elif key == "name":
            ok = any(v.lstrip("/") in container.name for v in values)
        elif key == "id":
            ok = any(container.id.startswith(v) for v in values)
        elif key == "label":
            labels = container.config.get("Labels") or {}
            ok = all(
                (k in labels and (not sep or labels[k] == v))
                for k, sep, v in (item.partition("=") for item in values)
            )
        elif key == "exited":
            ok = container.state.status == "exited" and str(container.state.exit_code) in values
        elif key == "ancestor":
            ok = any(
                v in (container.image_name, container.image_id)
                or container.image_id.removeprefix("sha256:").startswith(v)
                for v in values
            )
        elif key == "health":
            ok = health.status_of(container) in values
        elif key in (
            "before",
            "since",
            "network",
            "volume",
            "publish",
            "expose",
            "isolation",
            "is-task",
        ):
            ok = True  # accepted; not narrowing yet
        else:
            raise BadRequest(f"invalid filter '{key}'")
        if not ok:
            return False
    return True


# --- handlers --------------------------------------------------------------------------------


def list_containers(request: Request, response: ResponseWriter) -> None:
    containers = _engine().containers.all()
    if not request.flag("all"):
        containers = [
            c for c in containers if c.state.status in ("running", "paused", "restarting")
        ]
    filters = _filters(request)
    containers = [c for c in containers if _matches(c, filters)]
    limit = request.int_arg("limit", -1)
    if limit > 0:
        containers = containers[:limit]
    response.send_json([summary(c) for c in containers])


def create(request: Request, response: ResponseWriter) -> None:
    body = request.json_object()
    check_create_body(body)
    container = _engine().containers.create(body, request.arg("name"))
    response.send_json({"Id": container.id, "Warnings": []}, status=201)


def inspect_container(request: Request, response: ResponseWriter) -> None:
    response.send_json(inspect(_engine().containers.get(_id(request))))


def start(request: Request, response: ResponseWriter) -> None:
    manager = _engine().containers
    container = manager.get(_id(request))
    if container.state.started:
        response.send(304)
        return
    manager.start(container.id)
    response.send(204)


def stop(request: Request, response: ResponseWriter) -> None:
    stopped = _engine().containers.stop(
        _id(request), _timeout_arg(request), request.arg("signal") or None
    )
    response.send(204 if stopped else 304)


def restart(request: Request, response: ResponseWriter) -> None:
    _engine().containers.restart(_id(request), _timeout_arg(request), request.arg("signal") or None)
    response.send(204)


def _timeout_arg(request: Request) -> int | None:
    """?t= of stop and restart: seconds before SIGKILL (-1: wait forever); absent: the
    container's StopTimeout or 10."""
    return request.int_arg("t") if request.arg("t").strip() else None


def kill(request: Request, response: ResponseWriter) -> None:
    _engine().containers.kill(_id(request), request.arg("signal") or "SIGKILL")
    response.send(204)


def pause(request: Request, response: ResponseWriter) -> None:
    _engine().containers.pause(_id(request))
    response.send(204)


def unpause(request: Request, response: ResponseWriter) -> None:
    _engine().containers.unpause(_id(request))
    response.send(204)


def remove(request: Request, response: ResponseWriter) -> None:
    _engine().containers.remove(_id(request), request.flag("force"), request.flag("v"))
    response.send(204)


def wait(request: Request, response: ResponseWriter) -> None:
    """Headers go out at once (the CLI waits for them before `start`), the body at exit."""
    manager = _engine().containers
    container = manager.get(_id(request))
    condition = request.arg("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise BadRequest(f"invalid condition: {condition!r}")
    stream = response.start_stream(200)
    stream.flush()
    result: dict[str, Any] = {}

    def block() -> None:
        try:
            result["code"] = manager.wait(container.id, condition)
        except AgentError as error:
            result["error"] = error.message

    waiter = threading.Thread(target=block, name=f"wait-{container.id[:12]}", daemon=True)
    waiter.start()
    while waiter.is_alive():
        waiter.join(0.5)
        if waiter.is_alive() and response.peer_closed():
            return  # `docker run -d` drops the connection; the waiter ends with the container
    error = {"Message": result["error"]} if "error" in result else None
    stream.write_json({"StatusCode": result.get("code", 0), "Error": error})


def resize(request: Request, response: ResponseWriter) -> None:
    manager = _engine().containers
    container = manager.get(_id(request))
    if container.state.status != RUNNING:
        raise AgentError(409, f"container {container.id} is not running")
    if not container.config.get("Tty"):
        response.send(200)
        return
    shim_attach.resize(manager.attach_socket(container), request.int_arg("h"), request.int_arg("w"))
    response.send(200)


def attach(request: Request, response: ResponseWriter) -> None:
    """Hijack the connection and relay the container's streams both ways.

    Before the container starts, the relay connects to its shim just before the command
    runs (manager.on_next_start), so `docker run` sees every byte of output.
    """
    manager = _engine().containers
    container = manager.get(_id(request))
    tty = bool(container.config.get("Tty"))
    want_in, want_out, want_err = (
        request.flag("stdin"),
        request.flag("stdout"),
        request.flag("stderr"),
    )
    multiplexed = not tty and request.version_at_least("1.42")
    connected: queue.Queue[socket.socket | None] = queue.Queue()

    def connect(path: str | None) -> None:
        if path is None:
            connected.put(None)
            return
        try:
            connected.put(shim_attach.connect(path, want_in, want_out, want_err))
        except OSError:
            connected.put(None)

    if container.state.status == RUNNING:
        connect(manager.attach_socket(container))
    else:
        manager.on_next_start(container.id, connect)
    raw = response.hijack(MULTIPLEXED_STREAM_TYPE if multiplexed else RAW_STREAM_TYPE)
    with raw:
        shim = connected.get()
        if shim is None:
            return
        streams.relay_attach(raw, shim, tty, want_in)


def logs(request: Request, response: ResponseWriter) -> None:
    manager = _engine().containers
    container = manager.get(_id(request))
    want_out, want_err = request.flag("stdout"), request.flag("stderr")
    if not (want_out or want_err):
        raise BadRequest("you must choose at least one stream")
    tty = bool(container.config.get("Tty"))
    since = _time_arg(request.arg("since"))
    until = _time_arg(request.arg("until"))
    tail = request.arg("tail") or "all"
    stamps = request.flag("timestamps")
    follow = request.flag("follow")
    stream = response.start_stream(200, RAW_STREAM_TYPE if tty else MULTIPLEXED_STREAM_TYPE)
    streams.send_logs(
        stream,
        container,
        manager,
        want_out,
        want_err,
        tty,
        since,
        until,
        tail,
        stamps,
        follow,
        response.peer_closed,
    )


def _time_arg(text: str) -> int:
    """since/until: unix seconds with optional fraction ("1700000000.5"), in ns; 0 = unset."""
    if not text:
        return 0
    try:
        seconds, _, fraction = text.partition(".")
        return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    except ValueError:
        raise BadRequest(f"invalid time value: {text!r}") from None


def read_logs(container: Container) -> list[Any]:
    return list(read_entries(container.log_file))
