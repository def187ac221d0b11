"""The engine's state, opened once per daemon: images, volumes, containers, the bridge.

Layout under the root (in the VM the data disk, /var/lib/vmctl; documented in
docs/runtime.md): ``images/``, ``volumes/``, ``containers/``, ``network/``. Ephemeral
sockets live under the run root (/run/vmctl). It is opened off the request path by
:mod:`agent.engine_handle`, so `/_ping` answers during a boot while containers are
re-adopted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent import events
from agent.containers.manager import ContainerManager
from agent.errors import AgentError
from agent.images.archive import load_archive
from agent.images.store import ImageStore
from agent.runtime import cgroups
from agent.volumes.store import VolumeStore

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/var/lib/vmctl"
DEFAULT_RUN_ROOT = "/run/vmctl"
DEFAULT_PRELOAD = "/usr/share/vmctl/images/busybox.tar"


@dataclass
class Engine:
    root: str
    images: ImageStore
    volumes: VolumeStore
    containers: ContainerManager
    network: object | None


def _preload(images: ImageStore, archive: str) -> None:
    """Load the image builder's busybox once per archive version (first boot, upgrades)."""
    if not os.path.exists(archive):
        return
    with open(archive, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    # "v2": stores that loaded it before layers kept their tar records (docker save needs
    # them) load it once more, which adds the records to the layers already there
    marker = images.root / f".preloaded-v2-{digest[:16]}"
    if marker.exists():
        return
    loaded = load_archive(images, Path(archive))
    marker.write_text("".join(f"{image.image_id} {image.tags}\n" for image in loaded))
    log.info("preloaded %s", ", ".join(t for image in loaded for t in image.tags))


def _bridge(root: str) -> object | None:
    """The default bridge, when this host can have one (nft and the kernel modules)."""
    if shutil.which("nft") is None:
        log.warning("nft is not installed: containers get --network none only")
        return None
    from agent.network.bridge import DefaultBridge

    bridge = DefaultBridge(os.path.join(root, "network"))
    try:
        bridge.ensure()
    except AgentError as error:
        log.warning("no default bridge: %s", error)
        return None
    return bridge


def open_engine(
    root: str = DEFAULT_ROOT,
    run_root: str = DEFAULT_RUN_ROOT,
    preload: str | None = DEFAULT_PRELOAD,
    with_bridge: bool = True,
) -> Engine:
    os.makedirs(root, mode=0o711, exist_ok=True)
    holder: dict[str, ContainerManager] = {}

    def image_in_use(image_id: str) -> str | None:
        manager = holder.get("containers")
        return manager.image_users(image_id) if manager else None

    images = ImageStore(Path(root) / "images", in_use=image_in_use)
    if preload:
        try:
            _preload(images, preload)
        except (OSError, AgentError) as error:
            log.error("could not preload %s: %s", preload, error)
    # what happens to volumes and containers goes on the event bus (GET /events)
    volumes = VolumeStore(os.path.join(root, "volumes"), on_event=events.volume_event)
    mount = cgroups.find_unified_mount()
    hierarchy = cgroups.Hierarchy(mount) if mount is not None else None
    network = _bridge(root) if with_bridge else None
    containers = ContainerManager(
        root,
        images,
        volumes,
        hierarchy,
        network,  # type: ignore[arg-type]
        on_event=events.container_event,
        run_root=os.path.join(run_root, "containers"),
    )
    holder["containers"] = containers
    containers.load()
    return Engine(root, images, volumes, containers, network)
