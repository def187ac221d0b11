"""A machine's lifecycle as the CLI drives it: create, start, stop, status, remove.

The state is never stored as such; it is derived from what is really there (is the
host agent alive, is QEMU alive, does the engine answer), so `status` cannot lie after
a crash or a `kill -9`.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmctl import client, procs
from vmctl.config import MachineConfig, load_config, save_config
from vmctl.console import tail_lines
from vmctl.errors import VmctlError
from vmctl.keys import generate_keypair, write_known_hosts
from vmctl.localports import check_port_free
from vmctl.paths import MachineFiles, Paths, check_socket_path
from vmctl.qemu import QEMU_INSTALL_HINT, qemu_binary
from vmctl.seed import write_seed_config
from vmctl.status import (
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    AgentStatus,
    read_status,
    write_status,
)

Progress = Callable[[str], None]
START_TIMEOUT = 600.0  # a cold tcg boot takes seconds; this only catches a wedged agent
STOP_TIMEOUT = 60.0


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    DEGRADED = "degraded"


@dataclass
class MachineStatus:
    name: str
    state: State
    detail: str
    hostagent_pid: int | None
    qemu_pid: int | None
    agent: AgentStatus | None
    engine_ok: bool | None = None
    engine_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        a = self.agent
        return {
            "name": self.name,
            "state": self.state.value,
            "detail": self.detail,
            "hostagent_pid": self.hostagent_pid,
            "qemu_pid": self.qemu_pid,
            "accel": a.accel if a else "",
            "accel_reason": a.accel_reason if a else "",
            "ssh_port": a.ssh_port if a and self.state == State.RUNNING else None,
            "boot_seconds": a.boot_seconds if a else None,
            "engine_ok": self.engine_ok,
            "engine_error": self.engine_error,
            "warnings": a.warnings if a else [],
            "ports": a.ports if a and self.state == State.RUNNING else [],
        }


def silent(_: str) -> None:
    pass


class Machine:
    def __init__(self, paths: Paths, name: str) -> None:
        self.paths = paths
        self.name = name
        self.files = MachineFiles(paths.machine_dir(name))

    # -- existence and config -------------------------------------------------------

    def exists(self) -> bool:
        return self.files.config.exists()

    def require(self) -> None:
        if not self.exists():
            raise VmctlError(
                f"machine {self.name!r} does not exist",
                hint=f"create it with: vmctl machine create {self.name} "
                "(or list them: vmctl machine ls)",
            )

    def config(self) -> MachineConfig:
        self.require()
        return load_config(self.files.config)

    def create(self, config: MachineConfig) -> None:
        """Everything or nothing: a failure removes the half-made directory."""
        if self.exists() or self.files.dir.exists():
            raise VmctlError(
                f"machine {self.name!r} already exists",
                hint=f"start it with: vmctl machine start {self.name}",
            )
        config.validate()
        check_socket_path(self.files.engine_socket)
        check_socket_path(self.files.qmp_socket)
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise VmctlError("qemu-img not found on PATH", hint=QEMU_INSTALL_HINT)
        self.files.dir.mkdir(parents=True, mode=0o700)
        try:
            generate_keypair(self.files.client_key, comment=f"vmctl client for {self.name}")
            host_line = generate_keypair(self.files.host_key, comment=f"vmctl-{self.name} host")
            write_known_hosts(self.files.known_hosts, self.files.ssh_alias, host_line)
            result = subprocess.run(
                [
                    qemu_img,
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    str(self.files.disk),
                    f"{config.disk_gib}G",
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise VmctlError(
                    f"qemu-img could not create the data disk: {result.stderr.strip()}"
                )
            save_config(self.files.config, config)  # last: its presence means "created"
        except BaseException:
            shutil.rmtree(self.files.dir, ignore_errors=True)
            raise

    # -- state ----------------------------------------------------------------------

    def status(self, check_engine: bool = True) -> MachineStatus:
        self.require()
        agent_pid = procs.live_pid(self.files.hostagent_pid, self.files.dir)
        qemu_pid = procs.live_pid(self.files.qemu_pid, self.files.dir)
        agent = read_status(self.files.status)
        if agent_pid is None and qemu_pid is not None:
            return MachineStatus(
                self.name,
                State.DEGRADED,
                f"the host agent is not running but QEMU (pid {qemu_pid}) is; "
                f"`vmctl machine start {self.name}` takes it over",
                None,
                qemu_pid,
                agent,
            )
        if agent_pid is None:
            return MachineStatus(
                self.name, State.STOPPED, self.stopped_detail(agent), None, None, agent
            )
        state = agent.state if agent and agent.pid == agent_pid else STARTING
        if state == RUNNING and qemu_pid is None:
            return MachineStatus(
                self.name,
                State.DEGRADED,
                "the host agent runs but QEMU is gone",
                agent_pid,
                None,
                agent,
            )
        if state in (STOPPING, FAILED):
            return MachineStatus(
                self.name, State.STOPPING, "shutting down", agent_pid, qemu_pid, agent
            )
        if state != RUNNING:
            return MachineStatus(self.name, State.STARTING, "booting", agent_pid, qemu_pid, agent)
        result = MachineStatus(self.name, State.RUNNING, "", agent_pid, qemu_pid, agent)
        if check_engine:
            try:
                client.ping(client.connect_unix(self.files.engine_socket, timeout=10))
                result.engine_ok = True
            except (VmctlError, OSError) as e:
                result.engine_ok = False
                result.engine_error = str(e)
                result.detail = f"the engine does not answer: {e}"
        return result

    @staticmethod
    def stopped_detail(agent: AgentStatus | None) -> str:
        if agent is None:
            return ""
        if agent.state == FAILED:
            return f"last start failed: {agent.message}"
        if agent.state in (RUNNING, STARTING, STOPPING):
            return "the host agent and QEMU exited without a clean stop"
        return agent.message if agent.message not in ("", "stopped") else ""

    # -- start ----------------------------------------------------------------------

    def start(self, progress: Progress = silent) -> MachineStatus:
        current = self.status(check_engine=False)
        if current.state in (State.RUNNING, State.STARTING):
            raise VmctlError(
                f"machine {self.name!r} is already running",
                hint=f"see `vmctl machine status {self.name}`, or restart it with "
                f"`vmctl machine restart {self.name}`",
            )
        if current.state == State.STOPPING:
            raise VmctlError(f"machine {self.name!r} is stopping", hint="wait, then start it")
        config = self.config()
        self.preflight(config)
        ensure_image(self.paths, progress)
        write_seed_config(self.files.seed_config, config)
        if current.state == State.DEGRADED:
            progress(f"taking over the running VM of {self.name!r}")
        argv = [sys.executable, "-m", "vmctl.hostagent", "--dir", str(self.files.dir)]
        rotate(self.files.hostagent_log)
        pid = procs.spawn_daemon(argv, self.files.hostagent_log)
        return self.wait_started(pid, progress)

    def check_host(self, config: MachineConfig) -> None:
        """What this host must offer before the machine can boot (checked before create
        too, so a start that cannot work leaves no new machine behind)."""
        config.validate()  # shared folders must exist now
        if shutil.which(qemu_binary()) is None:
            raise VmctlError(f"{qemu_binary()} not found on PATH", hint=QEMU_INSTALL_HINT)
        check_socket_path(self.files.engine_socket)
        check_socket_path(self.files.qmp_socket)
        if socket_in_use(self.files.engine_socket):
            raise VmctlError(
                f"{self.files.engine_socket} is in use by another process",
                hint="stop whatever listens there, or remove the file if nothing should",
            )
        if config.ssh_port:
            check_port_free(config.ssh_port)

    def preflight(self, config: MachineConfig) -> None:
        """Fail before booting anything for what can be known up front."""
        self.check_host(config)
        for key in (self.files.client_key, self.files.host_key, self.files.disk):
            if not key.exists():
                raise VmctlError(
                    f"machine {self.name!r} is incomplete: {key.name} is missing",
                    hint=f"remove it and create it again: vmctl machine rm --force {self.name}",
                )

    def wait_started(self, pid: int, progress: Progress) -> MachineStatus:
        deadline = time.monotonic() + START_TIMEOUT
        shown_warnings = 0
        last_accel = ""
        while time.monotonic() < deadline:
            agent = read_status(self.files.status)
            if agent is not None and agent.pid == pid:
                for warning in agent.warnings[shown_warnings:]:
                    progress(f"warning: {warning}")
                shown_warnings = len(agent.warnings)
                if agent.accel and agent.accel != last_accel:
                    reason = textwrap.shorten(agent.accel_reason, 110, placeholder=" …")
                    progress(f"booting with {agent.accel} ({reason})")
                    last_accel = agent.accel
                if agent.state == RUNNING:
                    return self.status()
                if agent.state == FAILED:
                    procs.wait_gone(pid, 30)
                    raise VmctlError(agent.message, hint=agent.hint, detail=agent.detail)
            if not procs.alive(pid):
                agent = read_status(self.files.status)
                if agent is not None and agent.pid == pid and agent.state == FAILED:
                    raise VmctlError(agent.message, hint=agent.hint, detail=agent.detail)
                raise VmctlError(
                    "the host agent exited during start",
                    hint=f"see its log: {self.files.hostagent_log}",
                    detail=tail_lines(self.files.hostagent_log, 20, missing=""),
                )
            time.sleep(0.05)
        raise VmctlError(
            f"machine {self.name!r} did not start within {START_TIMEOUT:.0f} s",
            hint=f"see `vmctl machine logs {self.name}`",
        )

    # -- stop and remove ------------------------------------------------------------

    def stop(self, progress: Progress = silent) -> None:
        from vmctl.hostagent import QemuProcess, power_down, remove_qemu_files

        current = self.status(check_engine=False)
        if current.state == State.STOPPED:
            raise VmctlError(
                f"machine {self.name!r} is not running",
                hint=f"start it with: vmctl machine start {self.name}",
            )
        if current.hostagent_pid is not None:
            progress(f"stopping {self.name!r}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(current.hostagent_pid, signal.SIGTERM)
            if not procs.wait_gone(current.hostagent_pid, STOP_TIMEOUT):
                progress("the host agent did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(current.hostagent_pid, signal.SIGKILL)
                procs.wait_gone(current.hostagent_pid, 5)
        qemu_pid = procs.live_pid(self.files.qemu_pid, self.files.dir)
        if qemu_pid is not None:
            # No host agent (it died, or was just killed): power the guest down ourselves.
            progress("powering down the VM (its host agent is not running)")
            power_down(QemuProcess(qemu_pid), self.files.qmp_socket)
            status = read_status(self.files.status) or AgentStatus()
            status.state, status.pid = STOPPED, 0
            status.message = "stopped while its host agent was not running"
            write_status(self.files.status, status)
        # What the processes would have removed, had they ended cleanly; only theirs.
        if procs.live_pid(self.files.qemu_pid, self.files.dir) is None:
            remove_qemu_files(self.files)
        if procs.live_pid(self.files.hostagent_pid, self.files.dir) is None:
            self.files.hostagent_pid.unlink(missing_ok=True)
            if not socket_in_use(self.files.engine_socket):
                self.files.engine_socket.unlink(missing_ok=True)

    def remove(self, force: bool) -> None:
        current = self.status(check_engine=False)
        if current.state != State.STOPPED:
            if not force:
                raise VmctlError(
                    f"machine {self.name!r} is running",
                    hint=f"stop it first (vmctl machine stop {self.name}) or use --force",
                )
            self.stop()
        shutil.rmtree(self.files.dir)


LOG_ROTATE_BYTES = 5 * 2**20


def rotate(log: Path) -> None:
    """Keep one previous log: the host agent's log is appended at every start."""
    try:
        if log.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass


def socket_in_use(path: Path) -> bool:
    """True if something accepts connections on the unix socket at path."""
    if not path.exists():
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def ensure_image(paths: Paths, progress: Progress) -> None:
    """Build the image if it is missing or the project's files changed; quiet if not."""
    from vmctl.image_stamp import inputs_fingerprint, stamped_current, write_stamp

    fingerprint = inputs_fingerprint()  # before the check: a change during it shows next time
    if stamped_current(paths.images, fingerprint):
        return
    from images.builder import build_image
    from images.errors import ImageBuildError

    lines: list[str] = []
    try:
        build_image(paths.images, paths.build_cache, progress=lines.append)
    except ImageBuildError as e:
        for line in lines:
            progress(line)
        raise VmctlError(f"image build failed: {e.message}", hint=e.hint) from None
    write_stamp(paths.images, fingerprint)
    if not lines or " is up to date (" not in lines[-1]:
        for line in lines:
            progress(line)


def list_machines(paths: Paths) -> list[str]:
    if not paths.machines.is_dir():
        return []
    return sorted(p.name for p in paths.machines.iterdir() if (p / "config.json").exists())
