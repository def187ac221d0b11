"""Fixtures for running real containers on this host as root.

The busybox image is built the way the VM image builder builds it, from the host's
busybox-static (install.sh installs it), and loaded into a store in a temporary root. Each
test module gets its own engine root and cgroup parent; teardown removes every container,
the cgroups and the root, and fails the test if a mount under the root is left behind.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.containers.manager import ContainerManager
from agent.containers.model import Container
from agent.images.archive import load_archive
from agent.images.store import ImageStore
from agent.runtime import cgroups
from agent.runtime.logfile import read_entries
from agent.volumes.store import VolumeStore
from images import busybox as bb

HOST_BUSYBOX = Path("/bin/busybox")


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    if not HOST_BUSYBOX.exists():
        pytest.skip("the host's busybox-static is missing: run ./install.sh")


@pytest.fixture(scope="session")
def busybox_tarball(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    _needs_root()
    data = HOST_BUSYBOX.read_bytes()
    applets = bb.applet_paths(data, tmp_path_factory.mktemp("busybox"))
    return bb.build_container_image(data, applets, "host", 1700000000).tarball


@dataclass
class Result:
    code: int
    out: str
    err: str
    container: Container


class Engine:
    """A ContainerManager in a throw-away root, with helpers for tests."""

    def __init__(self, root: str, tarball: bytes) -> None:
        self.root = root
        self.images = ImageStore(Path(root) / "images")
        load_archive(self.images, io.BytesIO(tarball))
        self.volumes = VolumeStore(os.path.join(root, "volumes"))
        self.cgroup_parent = f"vmctl-test-{secrets.token_hex(4)}"
        mount = cgroups.find_unified_mount()
        self.hierarchy = cgroups.Hierarchy(mount, self.cgroup_parent) if mount else None
        self.manager = self.new_manager()

    def new_manager(self) -> ContainerManager:
        return ContainerManager(
            self.root,
            self.images,
            self.volumes,
            self.hierarchy,
            None,
            run_root=os.path.join(self.root, "run"),
        )

    def create(self, cmd: list[str], **host_config: Any) -> Container:
        config = host_config.pop("config", {})
        host_config.setdefault("NetworkMode", "none")
        body = {"Image": "busybox", "Cmd": cmd, "HostConfig": host_config, **config}
        return self.manager.create(body)

    def run(self, cmd: list[str], **host_config: Any) -> Result:
        container = self.create(cmd, **host_config)
        self.manager.start(container.id)
        code = self.manager.wait(container.id, timeout=60)
        out, err = self.output(container)
        return Result(code, out, err, container)

    def sh(self, script: str, **host_config: Any) -> Result:
        return self.run(["sh", "-c", script], **host_config)

    def output(self, container: Container) -> tuple[str, str]:
        out, err = [], []
        for entry in read_entries(container.log_file):
            (err if entry.stream == "stderr" else out).append(entry.data.decode())
        return "".join(out), "".join(err)

    def close(self) -> None:
        for container in self.manager.all():
            self.manager.remove(container.id, force=True, volumes=True)
        if self.hierarchy is not None:
            parent = Path(self.hierarchy.root) / self.cgroup_parent
            if parent.exists():
                for child in parent.iterdir():
                    if child.is_dir():
                        child.rmdir()
                parent.rmdir()


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return [line.split()[4] for line in handle if line.split()[4].startswith(path)]


@pytest.fixture
def engine(busybox_tarball: bytes) -> Iterator[Engine]:
    root = tempfile.mkdtemp(prefix="vmctl-rt-", dir="/var/tmp")
    engine = Engine(root, busybox_tarball)
    try:
        yield engine
    finally:
        try:
            engine.close()
            leftover = mounts_under(root)
        finally:
            for mount in reversed(mounts_under(root)):
                os.system(f"umount -l {mount}")
            shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"mounts left behind: {leftover}"
