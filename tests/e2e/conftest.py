"""End-to-end fixtures: one real VM per test session, driven through the `vmctl` CLI.

The VM boots under whatever accelerator the host offers (tcg here). Nothing is mocked:
the image is built from Debian packages into an empty VMCTL_HOME on first use. On any
failure the serial console, host agent and guest agent logs are attached to the report,
and at the end every process the session started is stopped and checked gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docker_suite import DockerCLI

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(tool: str) -> str:
    """A tool the e2e tests cannot do without: absent in CI is a failure, not a skip."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed"
        if IN_CI:
            pytest.fail(message + " (CI must run the end-to-end tests)")
        pytest.skip(message)
    return path


@dataclass
class VM:
    home: Path
    name: str
    share: Path
    env: dict[str, str]
    start_output: str = ""

    @property
    def dir(self) -> Path:
        return self.home / "machines" / self.name

    @property
    def socket(self) -> Path:
        return self.dir / "engine.sock"

    def vmctl(
        self, *args: str, check: bool = True, timeout: float = 900, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "vmctl.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"vmctl {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def ssh(self, command: str, check: bool = True) -> str:
        return self.vmctl(
            "machine", "ssh", self.name, "--", "sh", "-c", command, check=check, timeout=120
        ).stdout

    def status(self) -> dict[str, object]:
        data = json.loads(self.vmctl("machine", "status", self.name, "--format", "json").stdout)
        assert isinstance(data, dict)
        return data

    def pid(self, filename: str) -> int | None:
        try:
            return int((self.dir / filename).read_text().strip())
        except (OSError, ValueError):
            return None

    def logs(self) -> str:
        proc = self.vmctl("machine", "logs", self.name, "-n", "60", check=False, timeout=60)
        return proc.stdout + proc.stderr


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


_session_vm: VM | None = None


@pytest.fixture(scope="session")
def vm() -> Iterator[VM]:
    """A machine started from an empty VMCTL_HOME (the image is built on first use)."""
    global _session_vm
    require("qemu-system-x86_64")
    require("qemu-img")
    # Short paths: unix socket paths are capped near 104 bytes.
    home = Path(tempfile.mkdtemp(prefix="vmctl-e2e-", dir="/tmp"))
    share = Path(tempfile.mkdtemp(prefix="vmctl-share-", dir="/tmp"))
    env = dict(os.environ, VMCTL_HOME=str(home), DOCKER_CONFIG=str(home / "docker-config"))
    machine = VM(home=home, name="default", share=share, env=env)
    _session_vm = machine
    try:
        started = machine.vmctl(
            "machine", "start", "--memory", "1G", "--cpus", "2", "--mount", str(share), timeout=1800
        )
        machine.start_output = started.stdout + started.stderr
        yield machine
    finally:
        _session_vm = None
        stop_everything(machine)
        shutil.rmtree(share, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def processes_naming(directory: Path) -> list[int]:
    """Every live process whose command line names the directory or a file in it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        text = f" {cmdline.strip()} "
        if (f"{directory}/" in text or f" {directory} " in text) and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def stop_everything(machine: VM) -> None:
    """Leave no VM behind: stop each machine cleanly, then kill whatever still names the
    session's home, and fail loudly if anything had to be killed."""
    machines = machine.home / "machines"
    for machine_dir in sorted(machines.iterdir()) if machines.is_dir() else []:
        machine.vmctl("machine", "stop", machine_dir.name, check=False, timeout=180)
    stray = processes_naming(machine.home)
    for pid in stray:
        os.kill(pid, 9)
    if stray:
        pytest.fail(f"processes left running after the session, killed: {stray}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and _session_vm is not None and _session_vm.dir.exists():
        try:
            report.sections.append(("vmctl machine logs", _session_vm.logs()))
        except Exception as e:  # the logs are a courtesy; never mask the failure
            report.sections.append(("vmctl machine logs", f"could not collect logs: {e}"))


@pytest.fixture
def running_vm(vm: VM) -> VM:
    """The session machine, running: test files that run after test_machine.py (which
    stops and finally removes it) get it back, created with the session's options."""
    if not vm.dir.exists():
        vm.vmctl(
            "machine",
            "start",
            "--memory",
            "1G",
            "--cpus",
            "2",
            "--mount",
            str(vm.share),
            timeout=900,
        )
    elif vm.status()["state"] != "running" or not vm.socket.exists():
        vm.vmctl("machine", "start", timeout=900)
    return vm


class Engine(DockerCLI):
    """The docker CLI pointed at one machine's engine socket, remembering what it names."""

    def __init__(self, vm: VM) -> None:
        super().__init__(vm.socket, vm.env)
        self.vm = vm

    def state(self, name: str) -> dict[str, object]:
        state = self.inspect(name)["State"]
        assert isinstance(state, dict)
        return state

    def exec_ok(self, name: str, command: str) -> str:
        return self.ok("exec", name, "sh", "-c", command)


@pytest.fixture
def engine(running_vm: VM) -> Iterator[Engine]:
    client = Engine(running_vm)
    try:
        yield client
    finally:
        client.cleanup()
