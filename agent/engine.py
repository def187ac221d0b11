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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# A failed pull keeps its partial layer files under <root>/downloads so that pulling again
# resumes them; one nobody pulled again in this long only takes disk space.
STALE_DOWNLOAD_SECONDS = 7 * 24 * 3600


@dataclass
class Engine:
    root: str
    images: ImageStore
    volumes: VolumeStore
    containers: ContainerManager
    network: object | None
    networks: Any = None  # agent.network.attachments.Attachments (user-defined networks)


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


def _user_networks(root: str, bridge: object | None, containers: ContainerManager) -> Any:
    """User-defined networks (they need what the default bridge needs: nft, rtnetlink)."""
    if bridge is None:
        return None
    from agent.network import host_gateway
    from agent.network.attachments import Attachments
    from agent.network.bridge import Bridge
    from agent.network.store import NetworkStore

    assert isinstance(bridge, Bridge)
    store = NetworkStore(os.path.join(root, "network"), bridge)
    try:
        store.load()
    except AgentError as error:  # the networks stay listed; their containers fail to start
        log.error("cannot restore the user-defined networks: %s", error)
    attachments = Attachments(store, containers.all, host_gateway.configured())
    containers.networks = attachments
    # natively the host is the default bridge's gateway; in the VM, QEMU's alias of it
    containers.prepare.host_gateway = host_gateway.configured() or bridge.gateway
    return attachments


def prune_stale_downloads(directory: Path, max_age: float = STALE_DOWNLOAD_SECONDS) -> int:
    """Delete the files a failed pull left in ``directory`` untouched for ``max_age``
    seconds; how many went. Run at engine open, before any pull can be using them."""
    cutoff = time.time() - max_age
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    except OSError as error:
        log.warning("cannot list %s: %s", directory, error)
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError as error:
            log.warning("cannot remove the stale download %s: %s", entry.path, error)
    if removed:
        log.info("removed %d stale partial download(s) from %s", removed, directory)
    return removed


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
    prune_stale_downloads(Path(root) / "downloads")
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
    if network is not None:  # published ports lead to a container's address on a bridge
        from agent.network.ports import PortPublisher

        containers.ports = PortPublisher()
    attachments = _user_networks(root, network, containers)
    containers.load()
    return Engine(root, images, volumes, containers, network, attachments)
