"""Fixtures for running real containers on this host as root.

The busybox image is built the way the VM image builder builds it, from the host's
busybox-static (install.sh installs it), and loaded into a store in a temporary root. Each
test module gets its own engine root and cgroup parent; teardown removes every container,
the cgroups and the root, and fails the test if a mount under the root is left behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
from tests.docker_suite import DockerCLI
from vmctl.engine_client import EngineClient
from vmctl.errors import VmctlError

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
        self.manager.janitor.drain()
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


REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60  # seconds for one vmctl command


@dataclass
class NativeAgent:
    """An agent running natively on this host (root) in a private network namespace,
    with vmctl pointed at it (VMCTL_HOST) and a throw-away VMCTL_HOME."""

    socket: Path
    root: str
    env: dict[str, str]
    client: EngineClient
    pid: int  # `unshare -n` and `vmctl engine serve` exec: the agent's own process

    def netns(self) -> list[str]:
        """The command prefix that runs a program in the agent's network namespace (its
        loopback brought up: `unshare -n` leaves it down, a VM's is up)."""
        prefix = ["nsenter", f"--net=/proc/{self.pid}/ns/net"]
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
        return prefix

    def vmctl(
        self, *argv: str, input: bytes | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "vmctl.cli", *argv],
            input=input.decode() if input is not None else None,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            timeout=TIMEOUT,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def popen(self, *argv: str, **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            [sys.executable, "-m", "vmctl.cli", *argv], env=self.env, cwd=REPO, **kwargs
        )


def _wait_ready(client: EngineClient, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the agent exited ({process.returncode}):\n{log.read_text()}")
        with contextlib.suppress(VmctlError, OSError):
            client.list_containers(all=True)
            return
        time.sleep(0.1)
    pytest.fail(f"the agent did not answer within 30 s:\n{log.read_text()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def agent() -> Iterator[NativeAgent]:
    """`vmctl engine serve` (the agent, busybox preloaded from the host's busybox-static)
    in a private network namespace, so its default bridge lives and dies with it."""
    _needs_root()
    root = tempfile.mkdtemp(prefix="vmctl-verbs-", dir="/var/tmp")
    short = tempfile.mkdtemp(prefix="vv")  # socket and run root: unix paths are short
    home = tempfile.mkdtemp(prefix="vmctl-home-")
    sock = Path(short) / "engine.sock"
    log = Path(short) / "agent.log"
    argv = ["unshare", "-n", sys.executable, "-m", "vmctl.cli", "engine", "serve"]
    argv += ["--socket", str(sock), "--root", root, "--run-root", f"{short}/run"]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    client = EngineClient(sock)
    env = {**os.environ, "VMCTL_HOST": f"unix://{sock}", "VMCTL_HOME": home}
    env["PYTHONPATH"] = str(REPO)
    try:
        _wait_ready(client, process, log)
        yield NativeAgent(sock, root, env, client, process.pid)
    finally:
        try:
            with contextlib.suppress(VmctlError, OSError):
                for container in client.list_containers(all=True):
                    client.remove_container(container["Id"], force=True, volumes=True)
            stop_process(process)
            leftover = mounts_under(root)
        finally:
            for mount in reversed(mounts_under(root)):
                subprocess.run(["umount", "-l", mount], check=False)
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(short, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
        assert not leftover, f"mounts left behind: {leftover}"


@pytest.fixture
def dk(agent: NativeAgent) -> Iterator[DockerCLI]:
    """The real docker CLI pointed at the module's native agent."""
    cli = DockerCLI(agent.socket, {**os.environ, "DOCKER_CONFIG": agent.env["VMCTL_HOME"]})
    yield cli
    cli.cleanup()
