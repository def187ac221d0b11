"""Image endpoints of the Engine API: list, inspect, history, tag, remove, prune, save,
load, import; pulls go to :mod:`agent.api.registry_api`.

Image events (tag, untag, delete, load, import, save) go on the engine's event bus.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from agent import engine_handle, events
from agent.api.request import Request
from agent.api.response import JSON_TYPE, ResponseWriter
from agent.errors import BadRequest
from agent.images.archive import load_archive
from agent.images.filters import (
    LIST_KEYS,
    PRUNE_KEYS,
    ImageFilter,
    intermediates,
    parse_filters,
    parse_rfc3339,
)
from agent.images.filters import created_seconds as _created
from agent.images.importer import import_tarball
from agent.images.prune import prune_images
from agent.images.reference import Reference, familiar, parse
from agent.images.save import SavePlan, select
from agent.images.store import DeleteRecords, Image, ImageStore

log = logging.getLogger(__name__)

TAR_TYPE = "application/x-tar"
ZERO_TIME = "0001-01-01T00:00:00Z"

# the fields of the API's ImageConfig (1.50); older versions get a container Config's too
_IMAGE_CONFIG_DEFAULTS: dict[str, Any] = {
    "User": "",
    "Env": None,
    "Cmd": None,
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}
_IMAGE_CONFIG_FIELDS = frozenset(
    (*_IMAGE_CONFIG_DEFAULTS, "ExposedPorts", "Healthcheck", "ArgsEscaped", "StopSignal", "Shell")
)
_LEGACY_CONFIG_DEFAULTS: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Image": "",
}


def _store() -> ImageStore:
    return engine_handle.current().images


def _emit(action: str, image_id: str, attributes: dict[str, str] | None = None) -> None:
    try:
        events.publish("image", action, image_id, attributes or {})
    except Exception:  # an event must never fail the request that caused it
        log.exception("image event %s for %s failed", action, image_id)


# --- documents ------------------------------------------------------------------------------


def _labels(image: Image) -> dict[str, str]:
    labels = (image.config.get("config") or {}).get("Labels")
    return dict(labels) if isinstance(labels, dict) else {}


def summary(
    image: Image,
    tags: list[str] | None = None,
    digests: list[str] | None = None,
    containers: int = -1,
    shared_size: int = -1,
    api_version_below_1_44: bool = False,
) -> dict[str, Any]:
    """An entry of GET /images/json. ``containers`` is -1 unless counted (system df)."""
    document = {
        "Containers": containers,
        "Created": int(_created(image)),
        "Id": image.id,
        "Labels": _labels(image),
        "ParentId": "",
        "RepoDigests": image.repo_digests if digests is None else digests,
        "RepoTags": image.repo_tags if tags is None else tags,
        "SharedSize": shared_size,
        "Size": image.size,
    }
    if api_version_below_1_44:
        document["VirtualSize"] = image.size
    return document


def image_config(section: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
    """The image's ``config`` as inspect shows it (ImageConfig; a container Config < 1.50)."""
    shown = {**(_LEGACY_CONFIG_DEFAULTS if legacy else {}), **_IMAGE_CONFIG_DEFAULTS}
    for key, value in section.items():
        if legacy or key in _IMAGE_CONFIG_FIELDS:
            shown[key] = value
    return shown


def inspect(image: Image, version_at_least: Callable[[str], bool]) -> dict[str, Any]:
    """GET /images/{name}/json."""
    config = image.config
    lower = [str(d) for d in reversed(image.layer_dirs[:-1])]
    graph = {"LowerDir": ":".join(lower)} if lower else {}
    if image.layer_dirs:
        graph["UpperDir"] = str(image.layer_dirs[-1])
    document: dict[str, Any] = {
        "Id": image.id,
        "RepoTags": image.repo_tags,
        "RepoDigests": image.repo_digests,
        "Parent": "",
        "Comment": str(config.get("comment") or ""),
        "Created": image.created or None,
        "DockerVersion": str(config.get("docker_version") or ""),
        "Author": str(config.get("author") or ""),
        "Config": image_config(config.get("config") or {}, legacy=not version_at_least("1.50")),
        "Architecture": str(config.get("architecture") or ""),
    }
    if config.get("variant"):
        document["Variant"] = config["variant"]
    document["Os"] = str(config.get("os") or "")
    if config.get("os.version"):
        document["OsVersion"] = config["os.version"]
    document["Size"] = image.size
    if not version_at_least("1.44"):
        document["VirtualSize"] = image.size
    document |= {
        "GraphDriver": {"Data": graph, "Name": "overlay2"},
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }
    return document


def history(image: Image, store: ImageStore) -> list[dict[str, Any]]:
    """GET /images/{name}/history: newest first; only the top entry names the image."""
    items: list[dict[str, Any]] = []
    layer = 0
    for entry in image.config.get("history") or []:
        if not isinstance(entry, dict):
            continue
        size = 0
        if not entry.get("empty_layer"):
            if layer < len(image.chain_ids):
                meta_size = store.layer_meta(image.chain_ids[layer]).get("size", 0)
                size = meta_size if isinstance(meta_size, int) else 0
            layer += 1
        created = str(entry.get("created") or "")
        items.append(
            {
                "Comment": str(entry.get("comment") or ""),
                "Created": int(_seconds(created)),
                "CreatedBy": str(entry.get("created_by") or ""),
                "Id": "<missing>",
                "Size": size,
                "Tags": None,
            }
        )
    items.reverse()
    if items:
        items[0]["Id"] = image.id
        items[0]["Tags"] = image.repo_tags
    return items


def _seconds(timestamp: str) -> float:
    try:
        return parse_rfc3339(timestamp) if timestamp else 0.0
    except ValueError:
        return 0.0


def _shared_sizes(store: ImageStore, images: list[Image]) -> dict[str, int]:
    """Per image, the bytes of its layers that other images use too."""
    users = Counter(chain for image in images for chain in set(image.chain_ids))
    sizes: dict[str, int] = {}
    for chain, count in users.items():
        if count > 1:
            size = store.layer_meta(chain).get("size", 0)
            sizes[chain] = size if isinstance(size, int) else 0
    return {image.id: sum(sizes.get(c, 0) for c in set(image.chain_ids)) for image in images}


# --- list, inspect, history ---------------------------------------------------------------


def list_images(request: Request, response: ResponseWriter) -> None:
    store = _store()
    chosen = ImageFilter(parse_filters(request.arg("filters"), LIST_KEYS), store.get)
    every = store.list()
    hidden = set() if request.flag("all") else intermediates(every)
    images = [image for image in every if image.id not in hidden and chosen.matches(image)]
    shared = _shared_sizes(store, every) if request.flag("shared-size") else {}
    old = not request.version_at_least("1.44")
    response.send_json(
        [
            summary(
                image,
                tags=chosen.tags(image),
                digests=chosen.digests(image),
                shared_size=shared.get(image.id, -1),
                api_version_below_1_44=old,
            )
            for image in images
        ]
    )


def inspect_image(request: Request, response: ResponseWriter) -> None:
    image = _store().get(request.params["name"])
    response.send_json(inspect(image, request.version_at_least))


def image_history(request: Request, response: ResponseWriter) -> None:
    store = _store()
    response.send_json(history(store.get(request.params["name"]), store))


# --- tag, remove, prune ----------------------------------------------------------------------


def tag_reference(repo: str, tag: str) -> Reference:
    """``repo`` (which may carry a tag) and ``tag`` as one tag reference; 400 if invalid."""
    if not repo:
        raise BadRequest("repository name must have at least one component")
    ref = parse(repo, default_tag=None)
    if ref.digest:
        raise BadRequest("refusing to create a tag with a digest reference")
    if tag:
        return parse(f"{ref.name}:{tag}")
    return ref if ref.tag else ref.with_tag("latest")


def tag_image(request: Request, response: ResponseWriter) -> None:
    store = _store()
    target = tag_reference(request.arg("repo"), request.arg("tag"))
    image_id = store.resolve(request.params["name"])
    store.tag(image_id, target)
    response.send(201)
    _emit("tag", image_id, {"name": familiar(target)})


def _emit_deletions(records: DeleteRecords) -> None:
    deleted_ids = [r["Deleted"] for r in records if "Deleted" in r]
    image_id = deleted_ids[0] if deleted_ids else ""
    for record in records:
        if "Untagged" in record:
            _emit("untag", image_id, {"name": record["Untagged"]})
    if image_id:
        _emit("delete", image_id, {"name": image_id})


def remove_image(request: Request, response: ResponseWriter) -> None:
    records = _store().delete(request.params["name"], force=request.flag("force"))
    response.send_json(records)
    _emit_deletions(records)


def prune(request: Request, response: ResponseWriter) -> None:
    filters = parse_filters(request.arg("filters"), PRUNE_KEYS)
    records, reclaimed = prune_images(_store(), filters)
    response.send_json({"ImagesDeleted": records or None, "SpaceReclaimed": reclaimed})
    _emit_deletions(records)
    _emit("prune", "", {"reclaimed": str(reclaimed)})


# --- save and load -----------------------------------------------------------------------


def _save(response: ResponseWriter, names: list[str]) -> None:
    store = _store()
    images = select(store, names)
    plan = SavePlan(store, images)  # every name and size checked before the head goes out
    stream = response.start_stream(200, TAR_TYPE)
    plan.write(stream)
    stream.close()
    for saved in images:
        _emit("save", saved.image.id, {"name": saved.image.id})


def save_image(request: Request, response: ResponseWriter) -> None:
    _save(response, [request.params["name"]])


def save_images(request: Request, response: ResponseWriter) -> None:
    names = request.args("names")
    if not names:
        raise BadRequest("no images to save: give one or more names=")
    _save(response, names)


def load(request: Request, response: ResponseWriter) -> None:
    """The whole archive is checked and stored before the answer starts, so a broken one is
    a 400 and leaves the store as it was."""
    store = _store()
    before = store.tags()
    loaded = load_archive(store, cast(BinaryIO, request.body))
    stream = response.start_stream(200, JSON_TYPE)
    for image in loaded:
        for tag in image.tags:
            old = before.get(str(parse(tag)))
            if old and old != image.image_id:
                stream.write_json(
                    {
                        "stream": f"The image {tag} already exists, renaming the old one "
                        f"with ID {old} to empty string\n"
                    }
                )
        for message in image.messages():
            stream.write_json({"stream": message + "\n"})
    stream.close()
    for image in loaded:
        _emit("load", image.image_id, {"name": image.tags[0] if image.tags else image.image_id})


# --- create: import (and pull) ---------------------------------------------------------------


def create(request: Request, response: ResponseWriter) -> None:
    from_image, source = request.arg("fromImage"), request.arg("fromSrc")
    if from_image:
        from agent.api.registry_api import pull_image  # imported on the first pull

        pull_image(request, response)
    elif source == "-":
        _import(request, response)
    elif source:
        raise BadRequest(
            f"cannot import from {source!r}: this engine imports only the request body "
            "(fromSrc=-); download the file and run docker import FILE"
        )
    else:
        raise BadRequest("give fromImage (pull) or fromSrc=- (import)")


def _import(request: Request, response: ResponseWriter) -> None:
    store = _store()
    repo = request.arg("repo")
    target = tag_reference(repo, request.arg("tag")) if repo else None
    image = import_tarball(
        store,
        cast(BinaryIO, request.body),
        request.args("changes"),
        request.arg("message"),
        request.arg("platform"),
    )
    if target is not None:
        store.tag(image.id, target)
    stream = response.start_stream(200, JSON_TYPE)
    stream.write_json({"status": image.id})
    stream.close()
    _emit("import", image.id, {"name": familiar(target) if target else image.id})
