"""`docker commit`: a container's changes become a new image on top of its image.

The new layer is the container's overlay upper directory as a tar
(:mod:`agent.images.upper_tar`), stored through the image store like an imported layer.
The config is dockerd's: the request's config (the container's when none is given) with
the ``--change`` instructions applied, its gaps filled from the container's config; a
builder passes ``config_override`` to set it exactly. A running container is paused while
its files are read (when this host can freeze it), so the layer is one moment's state.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from agent.containers.changes import INIT_PATHS
from agent.containers.health import merge_healthcheck
from agent.containers.model import RUNNING, Container
from agent.errors import AgentError, BadRequest, Conflict
from agent.images.config_changes import apply_changes
from agent.images.importer import now_rfc3339
from agent.images.reference import InvalidReference, Reference, parse
from agent.images.store import Image, ImageStore
from agent.images.upper_tar import write_upper_tar

if TYPE_CHECKING:
    from agent.containers.manager import ContainerManager

log = logging.getLogger(__name__)

# a new image's top-level fields taken from its parent's config
_PLATFORM_FIELDS = ("architecture", "os", "os.version", "os.features", "variant")


class Engine(Protocol):
    """What a commit needs of the engine (agent.engine.Engine has both)."""

    @property
    def containers(self) -> ContainerManager: ...

    @property
    def images(self) -> ImageStore: ...


def commit_container(
    engine: Engine,
    container_id_or_name: str,
    *,
    reference: str | None = None,
    changes: list[str] | None = None,
    author: str = "",
    comment: str = "",
    pause: bool = True,
    config_override: dict[str, Any] | None = None,
    created_by: str | None = None,
    empty_layer_ok: bool = True,
    config: dict[str, Any] | None = None,
) -> str:
    """Make an image of the container's current files; its id ("sha256:…").

    ``reference`` (REPO[:TAG]) tags it. ``config`` is the API request's config (merged
    with the container's as dockerd does), ``config_override`` the exact config a builder
    wants. With ``empty_layer_ok=False`` a container that changed nothing adds no layer:
    the history entry says ``empty_layer``.
    """
    manager = engine.containers
    store: ImageStore = engine.images
    container = manager.get(container_id_or_name)
    target = _target(reference)
    parent = store.get(container.image_id)
    # everything that can be refused is checked before the container is paused
    image_config = new_config(container, changes or [], config, config_override)
    if created_by is None:
        created_by = " ".join(str(word) for word in container.config.get("Cmd") or [])
    history: dict[str, Any] = {"created": now_rfc3339(), "created_by": created_by}
    if author:
        history["author"] = author
    if comment:
        history["comment"] = comment

    with tempfile.TemporaryFile(dir=store.tmp_dir, prefix="commit-") as layer:
        entries = _write_layer(manager, container, parent, layer, pause)
        layer.seek(0)
        if entries == 0 and not empty_layer_ok:
            history["empty_layer"] = True
            document = _document(parent, container, image_config, history, author, [])
            image = store.load_layers_and_config(document, _no_new_layer)
        else:
            parent_chain = parent.chain_ids[-1] if parent.chain_ids else ""
            image = store.add_layer_image(
                layer,
                lambda diff_id: _document(
                    parent, container, image_config, history, author, [diff_id]
                ),
                parent_chain=parent_chain,
            )
    if target is not None:
        store.tag(image.id, target)
    return image.id


def _target(reference: str | None) -> Reference | None:
    if not reference:
        return None
    try:
        target = parse(reference)
    except InvalidReference as error:
        raise BadRequest(f"invalid reference format: {error}") from None
    if target.digest:
        raise BadRequest("refusing to create a tag with a digest reference")
    return target if target.tag else target.with_tag("latest")


def new_config(
    container: Container,
    changes: list[str],
    request: dict[str, Any] | None = None,
    config_override: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The new image's ``config`` section."""
    if config_override is not None:
        return apply_changes(config_override, changes)
    user = apply_changes(request or container.config, changes)
    return merge_container_config(user, container.config)


def merge_container_config(user: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """dockerd's commit merge: what the request's config leaves unset comes from the
    container's (lists and maps gain the container's entries they lack)."""
    merged = copy.deepcopy(user)
    theirs = copy.deepcopy(container)
    for key in ("User", "WorkingDir", "StopSignal"):
        if not merged.get(key):
            merged[key] = theirs.get(key) or merged.get(key) or ""
    for key in ("ExposedPorts", "Volumes"):
        if not merged.get(key):
            merged[key] = theirs.get(key)
        else:
            merged[key] = {**(theirs.get(key) or {}), **merged[key]}
    if not merged.get("Env"):
        merged["Env"] = theirs.get("Env")
    else:
        names = {str(item).partition("=")[0] for item in merged["Env"]}
        extra = [e for e in theirs.get("Env") or [] if str(e).partition("=")[0] not in names]
        merged["Env"] = [*merged["Env"], *extra]
    if merged.get("Labels") is None:
        merged["Labels"] = theirs.get("Labels")
    else:
        merged["Labels"] = {**(theirs.get("Labels") or {}), **merged["Labels"]}
    if not merged.get("Entrypoint") and not merged.get("Cmd"):
        merged["Cmd"] = theirs.get("Cmd")
        merged["Entrypoint"] = theirs.get("Entrypoint")
    check = merge_healthcheck(merged.get("Healthcheck"), theirs.get("Healthcheck"))
    if check is not None:
        merged["Healthcheck"] = check
    return merged


def _write_layer(
    manager: ContainerManager, container: Container, parent: Image, out: BinaryIO, pause: bool
) -> int:
    """Write the container's layer tar; the number of entries in it."""
    paused_here = False
    if pause and container.state.status == RUNNING:
        try:
            manager.pause(container.id)
            paused_here = True
        except AgentError as error:  # no freezer on this host: read it as it runs
            log.info("committing %s without pausing it: %s", container.id[:12], error)
    mount_points = {*INIT_PATHS, *(str(m.get("Destination") or "") for m in container.mounts)}
    try:
        return write_upper_tar(
            container.upper, [str(d) for d in parent.layer_dirs], out, mount_points
        )
    except OSError as error:
        raise AgentError(500, f"cannot read the container's files: {error}") from None
    finally:
        if paused_here:
            with contextlib.suppress(Conflict):  # it stopped meanwhile
                manager.unpause(container.id)


def _document(
    parent: Image,
    container: Container,
    config: dict[str, Any],
    history: dict[str, Any],
    author: str,
    new_diff_ids: list[str],
) -> bytes:
    """The new image's config document (what its id is the digest of)."""
    document: dict[str, Any] = {
        key: parent.config[key] for key in _PLATFORM_FIELDS if key in parent.config
    }
    if author:
        document["author"] = author
    document.update(
        config=config,
        container=container.id,
        created=history["created"],
        history=[*(parent.config.get("history") or []), history],
        rootfs={"type": "layers", "diff_ids": [*parent.diff_ids, *new_diff_ids]},
    )
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _no_new_layer(index: int) -> BinaryIO:
    raise AgentError(500, f"layer {index + 1} of the parent image vanished during the commit")
