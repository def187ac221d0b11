"""System endpoints: ``/_ping``, ``/version``, ``/info``, ``/system/df`` and ``/events``.

``/_ping`` is asked before anything else, so this module imports little at the top; the
others import what they need when called.
"""

from __future__ import annotations

import os
import threading
import time

from agent import __version__, sysinfo
from agent.api.request import Request
from agent.api.response import TEXT_TYPE, ResponseWriter
from agent.api.versions import API_VERSION, MIN_API_VERSION
from agent.errors import BadRequest
from agent.logsetup import debug_enabled

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.images.store import ImageStore

PLATFORM_NAME = "vmctl agent"
# the classic builder (POST /build?version=1) is the only one the agent implements
BUILDER_VERSION = "1"


def ping(request: Request, response: ResponseWriter) -> None:
    """Liveness and capabilities: clients read Api-Version, Ostype and Builder-Version here."""
    response.set_header("Builder-Version", BUILDER_VERSION)
    response.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
    response.set_header("Pragma", "no-cache")
    response.set_header("Swarm", "inactive")
    response.send(200, b"" if request.method == "HEAD" else b"OK", TEXT_TYPE)


def version_info() -> dict[str, object]:
    """The SystemVersion document (also what the docker SDK negotiates its version from)."""
    arch = sysinfo.go_arch()
    kernel = sysinfo.kernel_version()
    runtime_version = sysinfo.python_version()
    git_commit = sysinfo.git_commit()
    build_time = sysinfo.build_time()
    return {
        "Platform": {"Name": PLATFORM_NAME},
        "Components": [
            {
                "Name": "Engine",
                "Version": __version__,
                # free-form; the docker CLI prints these keys for the Engine component
                "Details": {
                    "ApiVersion": API_VERSION,
                    "Arch": arch,
                    "BuildTime": build_time,
                    "Experimental": "false",
                    "GitCommit": git_commit,
                    "GoVersion": runtime_version,
                    "KernelVersion": kernel,
                    "MinAPIVersion": MIN_API_VERSION,
                    "Os": "linux",
                    "OperatingSystem": sysinfo.os_description(),
                    "PythonVersion": runtime_version,
                },
            }
        ],
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": git_commit,
        # the field is named for dockerd's Go runtime; ours is Python, and we say so
        "GoVersion": runtime_version,
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel,
        "BuildTime": build_time,
        "Experimental": False,
    }


def version(request: Request, response: ResponseWriter) -> None:
    response.send_json(version_info())


# --- /info --------------------------------------------------------------------------------------

ENGINE_ID_FILE = "engine-id"
# what a limit needs (a controller the hierarchy lacks makes docker's warning true)
_LIMIT_WARNINGS = (
    ("memory", "WARNING: No memory limit support"),
    ("memory", "WARNING: No swap limit support"),
    ("cpu", "WARNING: No cpu cfs quota support"),
    ("cpu", "WARNING: No cpu cfs period support"),
    ("cpu", "WARNING: No cpu shares support"),
    ("cpuset", "WARNING: No cpuset support"),
    ("pids", "WARNING: No pids limit support"),
)
# statfs names as dockerd prints them under "Backing Filesystem"
_FS_NAMES = {"ext2": "extfs", "ext3": "extfs", "ext4": "extfs", "overlay": "overlayfs"}


_engine_id_lock = threading.Lock()


def _engine_id(root: str) -> str:
    """A random ID made once per engine root (dockerd keeps one the same way)."""
    with _engine_id_lock:
        return _read_or_make_id(os.path.join(root, ENGINE_ID_FILE))


def _read_or_make_id(path: str) -> str:
    try:
        with open(path) as handle:
            text = handle.read().strip()
        if text:
            return text
    except OSError:
        pass
    import uuid  # here: uuid imports platform, which the agent's start-up avoids

    value = str(uuid.uuid4())
    try:
        with open(path + ".tmp", "w") as handle:
            handle.write(value + "\n")
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # a read-only root: the ID lasts as long as this process
    return value


def _backing_filesystem(path: str) -> str:
    """The type of the filesystem holding ``path``, from the longest mount point over it."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                fields = line.split()
                point = fields[4].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best = point
                    fstype = fields[fields.index("-") + 1]
    except (OSError, ValueError, IndexError):
        pass
    return _FS_NAMES.get(fstype, fstype)


def _read_text(path: str, default: str = "") -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def _mem_total() -> int:
    for line in _read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _proxy(*names: str) -> str:
    """A proxy setting of the daemon's environment, its credentials masked as dockerd does."""
    import re

    value = next((os.environ[n] for n in names if os.environ.get(n)), "")
    return re.sub(r"//[^/@]+@", "//xxxxx:xxxxx@", value)


def info_document() -> dict[str, object]:
    """GET /info: the engine and the machine it runs on, counted now."""
    from datetime import datetime

    from agent import engine_handle, events
    from agent import runtime as runtime_package
    from agent.runtime import cgroups

    engine = engine_handle.current()
    containers = engine.containers.all()
    running = sum(1 for c in containers if c.state.status == "running")
    paused = sum(1 for c in containers if c.state.status == "paused")
    hierarchy = engine.containers.hierarchy
    controllers: set[str] = set()
    if hierarchy is not None:
        try:
            controllers = hierarchy.available()
        except (OSError, cgroups.CgroupError):
            controllers = set()
    forwarding = _read_text("/proc/sys/net/ipv4/ip_forward") == "1"
    warnings = [text for need, text in _LIMIT_WARNINGS if need not in controllers]
    if hierarchy is None:
        warnings.insert(0, "WARNING: no cgroup v2 hierarchy: containers run without limits")
    if engine.network is None:
        warnings.append("WARNING: no default bridge on this host: containers get --network none")
    elif not forwarding:
        warnings.append("WARNING: IPv4 forwarding is disabled")
    security = ["name=seccomp,profile=builtin"]
    if hierarchy is not None:
        security.append("name=cgroupns")
    return {
        "ID": _engine_id(engine.root),
        "Containers": len(containers),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": len(containers) - running - paused,
        "Images": len(engine.images.list()),
        "Driver": "overlay2",
        "DriverStatus": [
            ["Backing Filesystem", _backing_filesystem(engine.root)],
            ["Supports d_type", "true"],
            ["Using metacopy", "false"],
            ["Native Overlay Diff", "true"],
            ["userxattr", "false"],
        ],
        "DockerRootDir": engine.root,
        "Plugins": {
            "Volume": ["local"],
            "Network": ["bridge", "host", "null"],
            "Authorization": None,
            "Log": ["json-file"],
        },
        "MemoryLimit": "memory" in controllers,
        "SwapLimit": "memory" in controllers,
        "KernelMemoryTCP": False,
        "CpuCfsPeriod": "cpu" in controllers,
        "CpuCfsQuota": "cpu" in controllers,
        "CPUShares": "cpu" in controllers,
        "CPUSet": "cpuset" in controllers,
        "PidsLimit": "pids" in controllers,
        "OomKillDisable": False,
        "IPv4Forwarding": forwarding,
        "BridgeNfIptables": _read_text("/proc/sys/net/bridge/bridge-nf-call-iptables") == "1",
        "BridgeNfIp6tables": _read_text("/proc/sys/net/bridge/bridge-nf-call-ip6tables") == "1",
        "Debug": debug_enabled(),
        "NFd": len(os.listdir("/proc/self/fd")),
        "NGoroutines": threading.active_count(),  # the daemon's threads
        "SystemTime": datetime.now().astimezone().isoformat(),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs" if hierarchy is not None else "none",
        "CgroupVersion": "2",
        "NEventsListener": events.BUS.listeners(),
        "KernelVersion": sysinfo.kernel_version(),
        "OperatingSystem": sysinfo.os_description(),
        "OSVersion": _os_version(),
        "OSType": "linux",
        "Architecture": os.uname().machine,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": None,
            "AllowNondistributableArtifactsHostnames": None,
            "InsecureRegistryCIDRs": ["::1/128", "127.0.0.0/8"],
            "IndexConfigs": {
                "docker.io": {
                    "Name": "docker.io",
                    "Mirrors": [],
                    "Secure": True,
                    "Official": True,
                }
            },
            "Mirrors": None,
        },
        "NCPU": len(os.sched_getaffinity(0)),
        "MemTotal": _mem_total(),
        "GenericResources": None,
        "HttpProxy": _proxy("HTTP_PROXY", "http_proxy"),
        "HttpsProxy": _proxy("HTTPS_PROXY", "https_proxy"),
        "NoProxy": _proxy("NO_PROXY", "no_proxy"),
        "Name": os.uname().nodename,
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": __version__,
        # no runc: the agent runs containers itself (forks of the daemon)
        "Runtimes": {"vmctl": {"path": os.path.dirname(runtime_package.__file__)}},
        "DefaultRuntime": "vmctl",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        },
        # containers outlive the daemon (their shims do) and are re-adopted at its start
        "LiveRestoreEnabled": True,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": ""},
        "RuncCommit": {"ID": ""},
        "InitCommit": {"ID": ""},
        "SecurityOptions": security,
        "FirewallBackend": {"Driver": "nftables", "Info": None} if engine.network else None,
        "CDISpecDirs": [],
        "Containerd": None,
        "Warnings": warnings,
    }


def _os_version() -> str:
    for path in sysinfo.OS_RELEASE_PATHS:
        text = _read_text(path)
        if text:
            return sysinfo.parse_os_release(text).get("VERSION_ID", "")
    return ""


def info(request: Request, response: ResponseWriter) -> None:
    response.send_json(info_document())


# --- /system/df ---------------------------------------------------------------------------------

DF_TYPES = ("container", "image", "volume", "build-cache")


def _tree_size(path: str) -> int:
    """Bytes of the regular files and links under ``path`` (hard links counted once)."""
    total, seen = 0, set()
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                info = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if info.st_nlink > 1:
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


def _layer_sizes(store: ImageStore, chains: list[str]) -> list[int]:
    import json

    sizes = []
    for chain in chains:
        meta = store.layers_dir / chain.removeprefix("sha256:") / "meta.json"
        try:
            sizes.append(int(json.loads(meta.read_bytes()).get("size", 0)))
        except (OSError, ValueError):
            sizes.append(0)
    return sizes


def _unix_seconds(text: str) -> int:
    from agent.runtime.logfile import parse_timestamp

    try:
        return parse_timestamp(text) // 1_000_000_000
    except ValueError:
        return 0


def disk_usage(types: set[str]) -> dict[str, object]:
    """GET /system/df: what images, containers, volumes and the build cache take."""
    from agent import engine_handle
    from agent.api import containers as container_api
    from agent.api import volumes as volume_api

    engine = engine_handle.current()
    result: dict[str, object] = {}
    all_containers = engine.containers.all()
    if "image" in types or "container" in types:
        images = engine.images.list()
        layer_users: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for image in images:
            for chain, size in zip(
                image.chain_ids, _layer_sizes(engine.images, image.chain_ids), strict=True
            ):
                layer_users[chain] = layer_users.get(chain, 0) + 1
                sizes[chain] = size
        image_size = {image.id: image.size for image in images}
    if "image" in types:
        summaries = []
        for image in images:
            shared = sum(sizes[c] for c in set(image.chain_ids) if layer_users[c] > 1)
            summaries.append(
                {
                    "Id": image.id,
                    "ParentId": "",
                    "RepoTags": image.repo_tags,
                    "RepoDigests": image.repo_digests,
                    "Created": _unix_seconds(image.created),
                    "Size": image.size,
                    "SharedSize": shared,
                    "Labels": (image.config.get("config") or {}).get("Labels") or {},
                    "Containers": sum(1 for c in all_containers if c.image_id == image.id),
                }
            )
        result["LayersSize"] = sum(sizes.values())
        result["Images"] = summaries
    if "container" in types:
        documents = []
        for container in all_containers:
            document = container_api.summary(container)
            size_rw = _tree_size(container.upper)
            document["SizeRw"] = size_rw
            document["SizeRootFs"] = size_rw + image_size.get(container.image_id, 0)
            documents.append(document)
        result["Containers"] = documents
    if "volume" in types:
        in_use = volume_api.volumes_in_use(engine)
        result["Volumes"] = [
            volume_api.document(v, (engine.volumes.size(v), in_use.get(v.name, 0)))
            for v in engine.volumes.all()
        ]
    if "build-cache" in types:
        # the classic builder caches by image (its steps' images), not in a store of its own
        result["BuildCache"] = []
    return result


def system_df(request: Request, response: ResponseWriter) -> None:
    wanted = request.args("type")
    for kind in wanted:
        if kind not in DF_TYPES:
            raise BadRequest(f"unknown object type: {kind}")
    response.send_json(disk_usage(set(wanted or DF_TYPES)))


# --- /events ------------------------------------------------------------------------------------

EVENTS_POLL = 0.5  # seconds between checks that the client is still there


def _event_time(request: Request, name: str) -> int | None:
    """since/until: unix seconds with an optional fraction ("1700000000.123456789"), in ns."""

    text = request.arg(name).strip()
    if not text:
        return None
    seconds, _, fraction = text.partition(".")
    if not seconds.lstrip("-").isdigit() or (fraction and not fraction.isdigit()):
        raise BadRequest(f"invalid value for {name}: {text!r} (expected unix seconds)")
    value = int(seconds) * 1_000_000_000
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return value - nanos if value < 0 else value + nanos


def events(request: Request, response: ResponseWriter) -> None:
    """Stream events: the backlog since ``since``, then live ones until ``until`` (or until
    the client goes away)."""
    from agent import events as bus
    from agent.api.filter_args import parse_filters

    since = _event_time(request, "since")
    until = _event_time(request, "until")
    if since is not None and until is not None and until < since:
        raise BadRequest("since time cannot be after until time")
    event_filter = bus.EventFilter(parse_filters(request.arg("filters")))
    replay, subscription = bus.BUS.subscribe(event_filter, since, until)
    with subscription:
        stream = response.start_stream(200)
        for past in replay:
            stream.write_json(past.to_json(), flush=False)
        stream.flush()
        while until is None or time.time_ns() < until:
            wait = EVENTS_POLL
            if until is not None:
                wait = min(wait, max(0.0, (until - time.time_ns()) / 1e9))
            event = subscription.get(wait)
            if event is not None:
                if until is not None and event.time_nano > until:
                    break
                stream.write_json(event.to_json())
            elif subscription.closed or response.peer_closed():
                break
