"""The engine's state, opened once per daemon: images, volumes, containers, the bridge.

Layout under the root (in the VM the data disk, /var/lib/vmctl; documented in
docs/runtime.md): ``images/``, ``volumes/``, ``containers/``, ``network/``. Ephemeral
sockets live under the run root (/run/vmctl). Opening is done off the request path, in a
background thread started once the API socket listens, so `/_ping` answers during a boot
while containers are re-adopted; handlers that need the engine call :func:`current`,
which waits for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

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
OPEN_TIMEOUT = 300.0


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
    marker = images.root / f".preloaded-{digest[:16]}"
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
    volumes = VolumeStore(os.path.join(root, "volumes"))
    mount = cgroups.find_unified_mount()
    hierarchy = cgroups.Hierarchy(mount) if mount is not None else None
    network = _bridge(root) if with_bridge else None
    containers = ContainerManager(
        root,
        images,
        volumes,
        hierarchy,
        network,  # type: ignore[arg-type]
        run_root=os.path.join(run_root, "containers"),
    )
    holder["containers"] = containers
    containers.load()
    return Engine(root, images, volumes, containers, network)


class _Opener:
    """Opens the engine in a thread; :meth:`get` waits for it (or its failure)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._engine: Engine | None = None
        self._error: str = ""
        self._started = False

    def start(self, **kwargs: object) -> None:
        self._started = True

        def work() -> None:
            try:
                self._engine = open_engine(**kwargs)  # type: ignore[arg-type]
                log.info("engine ready: %d containers", len(self._engine.containers.all()))
            except Exception as error:
                log.exception("the engine could not start")
                self._error = str(error)
            finally:
                self._ready.set()

        threading.Thread(target=work, name="engine-open", daemon=True).start()

    def get(self) -> Engine:
        if not self._started:
            raise AgentError(
                503, "this agent runs no container engine (it was started without --root)"
            )
        if not self._ready.wait(OPEN_TIMEOUT):
            raise AgentError(503, "the engine is still starting; try again")
        if self._engine is None:
            raise AgentError(500, f"the engine failed to start: {self._error}")
        return self._engine


_opener = _Opener()


def start_in_background(**kwargs: object) -> None:
    _opener.start(**kwargs)


def current() -> Engine:
    return _opener.get()
