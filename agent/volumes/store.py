"""Named volumes on the data disk: ``<root>/<name>/_data`` plus ``<root>/<name>/meta.json``.

A volume is a directory; a new one is filled from the image's content at the path it is
mounted on, the first time a container uses it (Docker's copy-up), unless `nocopy` is asked.
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
from dataclasses import dataclass, field
from typing import Any

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


class VolumeError(Exception):
    status = 400


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


class VolumeStore:
    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, mode=0o701, exist_ok=True)
        self._lock = threading.RLock()

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
    ) -> Volume:
        if driver not in ("", "local"):
            raise VolumeError(f"volume driver {driver!r} is not available: only 'local' is")
        if options:
            raise VolumeError("the local driver takes no options here (type/device/o)")
        anonymous = not name
        name = name or secrets.token_hex(32)
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
                name, os.path.join(directory, "_data"), created, dict(labels or {}), {}, anonymous
            )
            self._save(volume)
            return volume

    def _load(self, name: str) -> Volume | None:
        try:
            with open(self._meta(name)) as handle:
                data = json.load(handle)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return Volume(mountpoint=os.path.join(self.root, name, "_data"), **data)

    def get(self, name: str) -> Volume:
        volume = self._load(name) if _NAME.match(name) else None
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
            self.get(name)
            if in_use_by:
                raise VolumeInUse(f"remove {name}: volume is in use - [{', '.join(in_use_by)}]")
            shutil.rmtree(os.path.join(self.root, name))

    def prune(self, in_use: set[str], all_volumes: bool = False) -> tuple[list[str], int]:
        """Remove unused volumes (only anonymous ones unless ``all_volumes``, as Docker 23+
        does); the names removed and the bytes reclaimed."""
        removed, reclaimed = [], 0
        with self._lock:
            for volume in self.all():
                if volume.name in in_use or not (volume.anonymous or all_volumes):
                    continue
                reclaimed += _tree_size(os.path.join(self.root, volume.name))
                shutil.rmtree(os.path.join(self.root, volume.name))
                removed.append(volume.name)
        return removed, reclaimed


def _tree_size(path: str) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total
