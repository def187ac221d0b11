"""Named volumes on the data disk: ``<root>/<name>/_data`` plus ``<root>/<name>/meta.json``.

A volume is a directory; a new one is filled from the image's content at the path it is
mounted on, the first time a container uses it (Docker's copy-up), unless `nocopy` is asked.
The local driver's bind form (``-o type=none -o o=bind -o device=/path``) makes a volume
whose data is that existing directory; removing the volume leaves the directory alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DRIVER_OPTIONS = ("type", "device", "o")  # what Docker's local driver takes
MAX_NAME = 255  # the name is a directory's name


class VolumeError(AgentError):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class VolumeNotFound(VolumeError):
    status = 404


class VolumeInUse(VolumeError):
    status = 409


@dataclass
class Volume:
    name: str
    mountpoint: str
    created: str
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False
    populated: bool = False  # copy-up from an image done (or not wanted)

    def inspect(self) -> dict[str, Any]:
        labels = dict(self.labels)
        if self.anonymous:
            labels.setdefault("com.docker.volume.anonymous", "")
        return {
            "Name": self.name,
            "Driver": "local",
            "Mountpoint": self.mountpoint,
            "CreatedAt": self.created,
            "Labels": labels or None,
            "Scope": "local",
            "Options": self.options or None,
        }


def check_options(options: dict[str, str]) -> None:
    """The local driver's options: only its bind form is supported (tmpfs and block
    devices would need a mount per use, which the runtime does not make yet)."""
    if not options:
        return
    for key in options:
        if key not in DRIVER_OPTIONS:
            raise VolumeError(f'invalid option: "{key}" (the local driver takes type, device, o)')
    flags = [f.strip() for f in options.get("o", "").split(",") if f.strip()]
    if options.get("type", "none") != "none" or "bind" not in flags:
        raise VolumeError(
            "only bind-backed local volumes are supported (type=none, o=bind, "
            "device=/absolute/dir); tmpfs and device volumes are not yet"
        )
    unknown = [f for f in flags if f not in ("bind", "rbind", "rw")]  # no ro: not enforced
    if unknown:
        raise VolumeError(f"unsupported mount option(s) for a bind volume: {', '.join(unknown)}")
    device = options.get("device", "")
    if not os.path.isabs(device):
        raise VolumeError(f"device must be an absolute path for a bind volume, not {device!r}")
    if not os.path.isdir(device):
        raise VolumeError(f"the bind volume's device {device} is not an existing directory")


def _mountpoint(root: str, name: str, options: dict[str, str]) -> str:
    if options.get("device") and "bind" in options.get("o", ""):
        return options["device"]
    return os.path.join(root, name, "_data")


class VolumeStore:
    def __init__(self, root: str, on_event: Callable[[str, Volume], None] | None = None) -> None:
        self.root = root
        os.makedirs(root, mode=0o701, exist_ok=True)
        self._lock = threading.RLock()
        # called with ("create" | "destroy", volume) after the change is on disk
        self.on_event = on_event or (lambda *_: None)

    def _meta(self, name: str) -> str:
        return os.path.join(self.root, name, "meta.json")

    def _save(self, volume: Volume) -> None:
        path = self._meta(volume.name)
        data = {k: v for k, v in volume.__dict__.items() if k != "mountpoint"}
        with open(path + ".tmp", "w") as handle:
            json.dump(data, handle)
        os.replace(path + ".tmp", path)

    def create(
        self,
        name: str = "",
        labels: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
        driver: str = "local",
        anonymous: bool | None = None,
    ) -> Volume:
        """A new volume, or the existing one of that name. Without a name it gets a random
        one; it is anonymous (pruned by default, as a container's unnamed volume) unless
        ``anonymous`` says otherwise (`docker volume create` without a name)."""
        if driver not in ("", "local"):
            raise VolumeError(f"volume driver {driver!r} is not available: only 'local' is")
        options = dict(options or {})
        check_options(options)
        if anonymous is None:
            anonymous = not name
        name = name or secrets.token_hex(32)
        if len(name) > MAX_NAME:
            raise VolumeError(f"volume name too long: {len(name)} characters (at most {MAX_NAME})")
        if not _NAME.match(name):
            raise VolumeError(
                f'"{name}" includes invalid characters for a local volume name, only '
                '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
                "directory, use absolute path"
            )
        with self._lock:
            existing = self._load(name)
            if existing is not None:
                return existing  # docker volume create is idempotent for the same name
            directory = os.path.join(self.root, name)
            os.makedirs(os.path.join(directory, "_data"), mode=0o755)
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            volume = Volume(
                name,
                _mountpoint(self.root, name, options),
                created,
                dict(labels or {}),
                options,
                anonymous,
            )
            self._save(volume)
        self.on_event("create", volume)
        return volume

    def _load(self, name: str) -> Volume | None:
        try:
            with open(self._meta(name)) as handle:
                data = json.load(handle)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return Volume(mountpoint=_mountpoint(self.root, name, data.get("options") or {}), **data)

    def get(self, name: str) -> Volume:
        volume = self._load(name) if len(name) <= MAX_NAME and _NAME.match(name) else None
        if volume is None:
            raise VolumeNotFound(f"get {name}: no such volume")
        return volume

    def all(self) -> list[Volume]:
        volumes = []
        for name in sorted(os.listdir(self.root)):
            volume = self._load(name)
            if volume is not None:
                volumes.append(volume)
        return volumes

    def populate(self, volume: Volume, source: str) -> None:
        """Copy the image's content at the mount path into a new, empty volume once."""
        with self._lock:
            if volume.populated:
                return
            if os.path.isdir(source) and not os.listdir(volume.mountpoint):
                shutil.copytree(source, volume.mountpoint, symlinks=True, dirs_exist_ok=True)
                info = os.stat(source)
                os.chmod(volume.mountpoint, info.st_mode & 0o7777)
                os.chown(volume.mountpoint, info.st_uid, info.st_gid)
            volume.populated = True
            self._save(volume)

    def mark_populated(self, volume: Volume) -> None:
        with self._lock:
            volume.populated = True
            self._save(volume)

    def remove(self, name: str, in_use_by: list[str]) -> None:
        with self._lock:
            volume = self.get(name)
            if in_use_by:
                raise VolumeInUse(f"remove {name}: volume is in use - [{', '.join(in_use_by)}]")
            shutil.rmtree(os.path.join(self.root, name))
        self.on_event("destroy", volume)

    def size(self, volume: Volume) -> int:
        """Bytes of the files in the volume's data (what `docker system df -v` shows)."""
        return _tree_size(volume.mountpoint)

    def prune(
        self,
        in_use: set[str],
        all_volumes: bool = False,
        select: Callable[[Volume], bool] | None = None,
    ) -> tuple[list[str], int]:
        """Remove unused volumes (only anonymous ones unless ``all_volumes``, as Docker 23+
        does; only those ``select`` accepts); the names removed and the bytes reclaimed."""
        removed: list[Volume] = []
        reclaimed = 0
        with self._lock:
            for volume in self.all():
                if volume.name in in_use or not (volume.anonymous or all_volumes):
                    continue
                if select is not None and not select(volume):
                    continue
                reclaimed += _tree_size(os.path.join(self.root, volume.name, "_data"))
                shutil.rmtree(os.path.join(self.root, volume.name))
                removed.append(volume)
        for volume in removed:
            self.on_event("destroy", volume)
        return [v.name for v in removed], reclaimed


def _tree_size(path: str) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total
