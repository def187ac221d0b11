"""Volume endpoints of the Engine API, on top of :mod:`agent.volumes.store`.

Only the ``local`` driver exists. A volume is in use while any container (running or
not) refers to it, by a mount recorded at its last start or, for a container never
started, by its ``Binds``/``Mounts``: such a volume cannot be removed or pruned.
"""

from __future__ import annotations

from typing import Any

from agent import engine_handle, events
from agent.api.filter_args import Filters, bool_filter, match_labels, parse_filters
from agent.api.request import Request
from agent.api.response import ResponseWriter
from agent.containers.model import Container
from agent.engine import Engine
from agent.errors import BadRequest, Conflict
from agent.volumes.store import Volume, VolumeNotFound

ANONYMOUS_LABEL = "com.docker.volume.anonymous"
LIST_FILTERS = ("dangling", "driver", "label", "name")
PRUNE_FILTERS = ("label", "label!", "all")
# before API 1.42 a prune removed every unused volume; since, only anonymous ones by default
PRUNE_ALL_BEFORE = "1.42"


def _engine() -> Engine:
    return engine_handle.current()


# --- who uses a volume ----------------------------------------------------------------------


def _configured_volumes(container: Container) -> set[str]:
    """Named volumes in a container's create body (a container not started yet has no
    recorded mounts, but its volumes are already taken)."""
    from agent.containers import options

    names: set[str] = set()
    host_config = container.host_config
    for bind in host_config.get("Binds") or []:
        try:
            request = options.parse_bind(str(bind))
        except (options.OptionError, ValueError):
            continue
        if request.kind == "volume" and request.source:
            names.add(request.source)
    for mount in host_config.get("Mounts") or []:
        is_volume = isinstance(mount, dict) and str(mount.get("Type", "")).lower() == "volume"
        if is_volume and mount.get("Source"):
            names.add(str(mount["Source"]))
    return names


def users(engine: Engine, name: str) -> list[str]:
    """IDs of the containers that use volume ``name``."""
    found = list(engine.containers.volume_users(name))
    for container in engine.containers.all():
        if container.id not in found and name in _configured_volumes(container):
            found.append(container.id)
    return found


def volumes_in_use(engine: Engine) -> dict[str, int]:
    """Volume name → number of containers using it."""
    counts: dict[str, int] = {}
    for container in engine.containers.all():
        names = {str(m.get("Name")) for m in container.mounts if m.get("Type") == "volume"}
        names |= _configured_volumes(container)
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return counts


# --- documents ------------------------------------------------------------------------------


def document(volume: Volume, usage: tuple[int, int] | None = None) -> dict[str, Any]:
    """The Volume object; ``usage`` (size, containers) only for /system/df."""
    doc = volume.inspect()
    if doc.get("Labels") is None:
        doc["Labels"] = {}
    if doc.get("Options") is None:
        doc["Options"] = {}
    if usage is not None:
        doc["UsageData"] = {"Size": usage[0], "RefCount": usage[1]}
    return doc


def _matches(volume: Volume, filters: Filters, in_use: dict[str, int]) -> bool:
    dangling = bool_filter(filters, "dangling")
    if dangling is not None and (volume.name not in in_use) != dangling:
        return False
    if "name" in filters and not any(v in volume.name for v in filters["name"]):
        return False
    if "driver" in filters and "local" not in filters["driver"]:
        return False
    labels = document(volume)["Labels"]
    return "label" not in filters or match_labels(labels, filters["label"])


# --- handlers -------------------------------------------------------------------------------


def _string_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequest(f"{key} must be an object of strings")
    return dict(value)


def create(request: Request, response: ResponseWriter) -> None:
    body = request.json_object()
    for key in ("Name", "Driver"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise BadRequest(f"{key} must be a string")
    if body.get("ClusterVolumeSpec"):
        raise BadRequest("cluster volumes need swarm mode, which this engine does not run")
    name = str(body.get("Name") or "")
    driver = str(body.get("Driver") or "local")
    labels = _string_map(body, "Labels")
    options = _string_map(body, "DriverOpts")
    store = _engine().volumes
    if name:
        try:
            existing = store.get(name)
        except VolumeNotFound:
            existing = None
        if existing is not None and options and options != existing.options:
            raise Conflict(
                f"volume {name} already exists with other options; remove it first "
                "or leave the options out"
            )
    # only a container's unnamed volumes are anonymous, or what is labelled so
    anonymous = ANONYMOUS_LABEL in labels
    volume = store.create(name, labels, options, driver, anonymous)
    response.send_json(document(volume), status=201)


def list_volumes(request: Request, response: ResponseWriter) -> None:
    filters = parse_filters(request.arg("filters"), LIST_FILTERS)
    engine = _engine()
    in_use = volumes_in_use(engine)
    found = [document(v) for v in engine.volumes.all() if _matches(v, filters, in_use)]
    response.send_json({"Volumes": found, "Warnings": []})


def inspect_volume(request: Request, response: ResponseWriter) -> None:
    response.send_json(document(_engine().volumes.get(request.params["name"])))


def remove(request: Request, response: ResponseWriter) -> None:
    """409 while a container uses it; ``force`` only makes a missing volume no error."""
    engine = _engine()
    name = request.params["name"]
    try:
        engine.volumes.remove(name, users(engine, name))
    except VolumeNotFound:
        if not request.flag("force"):
            raise
    response.send(204)


def _prune_selector(filters: Filters) -> Any:
    include = filters.get("label", [])
    exclude = filters.get("label!", [])

    def select(volume: Volume) -> bool:
        labels = document(volume)["Labels"]
        if include and not match_labels(labels, include):
            return False
        return not any(match_labels(labels, [item]) for item in exclude)

    return select


def prune(request: Request, response: ResponseWriter) -> None:
    filters = parse_filters(request.arg("filters"), PRUNE_FILTERS)
    all_volumes = bool_filter(filters, "all")
    if all_volumes is None:
        all_volumes = not request.version_at_least(PRUNE_ALL_BEFORE)
    engine = _engine()
    removed, reclaimed = engine.volumes.prune(
        set(volumes_in_use(engine)), all_volumes, _prune_selector(filters)
    )
    events.publish("volume", "prune", "", {"reclaimed": str(reclaimed)})
    response.send_json({"VolumesDeleted": removed, "SpaceReclaimed": reclaimed})
