"""Re-adoption after kill -9 of the agent, and recovery after a reboot (needs root).

A ContainerManager runs in a separate Python process that starts containers and is then
killed with SIGKILL. The containers' shims must keep them running (and logging) with no
daemon at all; a new ContainerManager on the same root must find them again with load(),
report their exit code and release what they held. When the shims are gone too (a reboot),
load() must restart what the restart policy says and mark the rest exited.

Orphaned shims are re-parented to the nearest "subreaper". This machine's pid 1 never reaps
orphans (they would stay zombies for good), so the daemon runs under a tiny reaper process
that stands in for the VM's init.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.containers import rootfs
from agent.containers.manager import ContainerManager
from agent.containers.model import Container
from agent.runtime.logfile import read_entries
from tests.runtime.conftest import Engine

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
TICKS = 30
TICKER = f"i=0; while [ $i -lt {TICKS} ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit 5"
FOREVER = "echo up; while :; do sleep 1; done"

# argv: root, cgroup parent ("" for none), JSON list of create bodies. Prints one JSON line
# (each container's id, shim pid and init pid), then sleeps until killed.
DAEMON = """
import json, os, sys, time
from pathlib import Path
from agent.containers.manager import ContainerManager
from agent.images.store import ImageStore
from agent.runtime import cgroups
from agent.volumes.store import VolumeStore

root, parent, bodies = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
mount = cgroups.find_unified_mount()
manager = ContainerManager(
    root,
    ImageStore(Path(root) / "images"),
    VolumeStore(os.path.join(root, "volumes")),
    cgroups.Hierarchy(mount, parent) if mount and parent else None,
    None,
    run_root=os.path.join(root, "run"),
)
started = []
for body in bodies:
    container = manager.create(body)
    manager.start(container.id)
    state = container.state
    started.append({"id": container.id, "shim_pid": state.shim_pid, "init_pid": state.pid})
print(json.dumps(started), flush=True)
while True:
    time.sleep(60)
"""

# argv: a file for the command's pid, then the command. Becomes a child subreaper, runs the
# command and reaps every process re-parented to it, as an init does, until it is killed.
REAPER = """
import ctypes, os, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
child = subprocess.Popen(sys.argv[2:])
with open(sys.argv[1] + ".tmp", "w") as handle:
    handle.write(str(child.pid))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.05)
"""


# --- processes -----------------------------------------------------------------------------


def _proc(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a process, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


@dataclass(frozen=True)
class Process:
    """A pid together with its start time, so a reused pid is never taken for it."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Process:
        info = _proc(pid)
        assert info is not None, f"process {pid} is already gone"
        return cls(pid, info[1])

    def alive(self) -> bool:
        info = _proc(self.pid)
        return info is not None and info[1] == self.start and info[0] != "Z"

    def exists(self) -> bool:
        """Alive or an unreaped zombie."""
        info = _proc(self.pid)
        return info is not None and info[1] == self.start

    def kill(self) -> None:
        if self.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


@dataclass(frozen=True)
class Launched:
    id: str
    shim: Process
    init: Process


@dataclass
class Daemon:
    reaper: subprocess.Popen[bytes]
    pidfile: Path
    process: Process | None
    containers: list[Launched]

    def record(self) -> Process | None:
        """The daemon process, once its reaper has told its pid."""
        if self.process is None and self.pidfile.exists():
            with contextlib.suppress(AssertionError):
                self.process = Process.of(int(self.pidfile.read_text()))
        return self.process

    def kill(self) -> None:
        process = self.record()
        assert process is not None, "the daemon's pid is unknown"
        process.kill()
        wait_for(lambda: not process.exists(), 10, f"the daemon {process.pid} to die")


@dataclass
class Harness:
    """Starts daemons and managers on the engine's root and cleans up after them, whatever
    the test did: recorded processes are killed by pid, containers removed by a manager."""

    engine: Engine
    workdir: Path
    daemons: list[Daemon] = field(default_factory=list)
    managers: list[ContainerManager] = field(default_factory=list)

    def body(self, script: str, restart: str = "no") -> dict[str, Any]:
        return {
            "Image": "busybox",
            "Cmd": ["sh", "-c", script],
            "HostConfig": {"NetworkMode": "none", "RestartPolicy": {"Name": restart}},
        }

    def daemon(self, bodies: list[dict[str, Any]]) -> Daemon:
        """Run a ContainerManager in its own process and start ``bodies`` there."""
        base = self.workdir / f"daemon-{len(self.daemons)}"
        out, err, pidfile = (base.with_suffix(s) for s in (".out", ".err", ".pid"))
        parent = self.engine.cgroup_parent if self.engine.hierarchy is not None else ""
        command = [sys.executable, "-c", DAEMON, self.engine.root, parent, json.dumps(bodies)]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            reaper = subprocess.Popen(
                [sys.executable, "-c", REAPER, str(pidfile), *command],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        daemon = Daemon(reaper, pidfile, None, [])
        self.daemons.append(daemon)

        def reported() -> bool:
            problem = err.read_text()
            assert reaper.poll() is None and "Traceback" not in problem, problem
            return out.read_bytes().endswith(b"\n")

        wait_for(reported, 60, f"the daemon to start its containers ({err})")
        daemon.record()
        for entry in json.loads(out.read_text()):
            daemon.containers.append(
                Launched(entry["id"], Process.of(entry["shim_pid"]), Process.of(entry["init_pid"]))
            )
        return daemon

    def manager(self) -> ContainerManager:
        """A new daemon's manager on the same root, with load() done."""
        manager = self.engine.new_manager()
        self.managers.append(manager)
        manager.load()
        return manager

    def cleanup(self) -> None:
        try:
            self._kill_recorded()
            self._remove_containers()
        finally:
            for daemon in self.daemons:
                daemon.reaper.kill()
                daemon.reaper.wait(10)

    def _kill_recorded(self) -> None:
        recorded = [p for d in self.daemons if (p := d.record()) is not None]
        for daemon in self.daemons:
            recorded += [p for c in daemon.containers for p in (c.shim, c.init)]
        for process in recorded:
            process.kill()
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not any(p.exists() for p in recorded), 10, "killed processes")

    def _remove_containers(self) -> None:
        for manager in self.managers:
            manager.close()  # no restarts from here on
            for container in manager.all():
                with contextlib.suppress(Exception):
                    manager.remove(container.id, force=True, volumes=True)
        # What no manager of the test loaded (it failed early): hold it down, then remove it;
        # load() re-adopts what still runs, so remove() can kill it.
        containers = os.path.join(self.engine.root, "containers")
        for entry in os.listdir(containers):
            with contextlib.suppress(OSError, ValueError, TypeError):
                container = Container.load(os.path.join(containers, entry))
                container.state.stopped_by_user = True
                container.save()
        sweeper = self.engine.new_manager()
        sweeper.load()
        sweeper.close()
        for container in sweeper.all():
            sweeper.remove(container.id, force=True, volumes=True)


@pytest.fixture
def harness(engine: Engine, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(engine, tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


def _stdout(container: Container) -> str:
    return "".join(
        e.data.decode() for e in read_entries(container.log_file) if e.stream == "stdout"
    )


def _log_size(container: Container) -> int:
    try:
        return os.path.getsize(container.log_file)
    except FileNotFoundError:
        return 0


def _record_dir(harness: Harness, launched: Launched) -> str:
    return os.path.join(harness.engine.root, "containers", launched.id)


def _wait_all_up(harness: Harness, daemon: Daemon) -> None:
    wait_for(
        lambda: all(
            _stdout(Container.load(_record_dir(harness, c))) == "up\n" for c in daemon.containers
        ),
        10,
        "the containers to start",
    )


def _power_cut(daemon: Daemon) -> None:
    """The VM goes down: the daemon, then every shim and init, all with SIGKILL."""
    daemon.kill()
    for launched in daemon.containers:
        launched.shim.kill()
        launched.init.kill()
    wait_for(
        lambda: not any(p.exists() for c in daemon.containers for p in (c.shim, c.init)),
        10,
        "the shims and inits to die",
    )


def _cgroup_exists(engine: Engine, container_id: str) -> bool:
    return engine.hierarchy is not None and (engine.hierarchy.path / container_id).exists()


# --- tests ---------------------------------------------------------------------------------


def test_running_container_survives_kill_9_of_the_daemon_and_is_readopted(
    harness: Harness,
) -> None:
    daemon = harness.daemon([harness.body(TICKER)])
    (launched,) = daemon.containers
    daemon.kill()

    # No daemon runs now: the shim and the init go on, and the output still reaches the log.
    assert launched.shim.alive() and launched.init.alive()
    directory = os.path.join(harness.engine.root, "containers", launched.id)
    on_disk = Container.load(directory)
    assert on_disk.state.status == "running"
    assert on_disk.state.shim_pid == launched.shim.pid
    size = _log_size(on_disk)
    wait_for(lambda: _log_size(on_disk) > size, 2, "the log to grow with no daemon running")
    assert not os.path.exists(on_disk.exit_file)
    assert launched.shim.alive(), "the container ended before it could be re-adopted"

    manager = harness.manager()
    container = manager.get(launched.id)
    assert container.state.status == "running", "load() did not re-adopt the live container"
    assert container.state.pid == launched.init.pid

    assert manager.wait(container.id, timeout=30) == 5
    assert _stdout(container) == "".join(f"tick {i}\n" for i in range(TICKS))
    assert container.state.status == "exited" and container.state.exit_code == 5
    saved = Container.load(directory).state
    assert (saved.status, saved.exit_code, saved.pid, saved.shim_pid) == ("exited", 5, 0, 0)
    wait_for(
        lambda: not launched.shim.exists() and not launched.init.exists(), 5, "shim and init to go"
    )
    assert not rootfs.is_mounted(container.merged)
    assert not _cgroup_exists(harness.engine, container.id)


def test_after_a_reboot_load_restarts_always_and_marks_no_exited(harness: Harness) -> None:
    daemon = harness.daemon(
        [harness.body(FOREVER, restart="always"), harness.body(FOREVER, restart="no")]
    )
    always, no = daemon.containers
    _wait_all_up(harness, daemon)
    _power_cut(daemon)

    manager = harness.manager()
    stopped = manager.get(no.id)
    assert stopped.state.status == "exited"
    assert stopped.state.exit_code == 255  # no exit status survived the reboot
    assert stopped.state.restart_count == 0

    restarted = manager.get(always.id)
    wait_for(
        lambda: restarted.state.status == "running" and restarted.state.restart_count == 1,
        10,
        "the 'always' container to be restarted",
    )
    new_shim = Process.of(restarted.state.shim_pid)
    assert new_shim != always.shim and new_shim.alive()
    wait_for(lambda: _stdout(restarted) == "up\nup\n", 10, "the restarted container's output")
    assert _cgroup_exists(harness.engine, always.id) == (harness.engine.hierarchy is not None)

    time.sleep(0.5)  # the "no" container stays down
    assert stopped.state.status == "exited" and stopped.state.restart_count == 0
    assert not rootfs.is_mounted(stopped.merged)
    assert not _cgroup_exists(harness.engine, stopped.id)

    assert manager.stop(always.id, timeout=1)
    assert restarted.state.status == "exited"
    wait_for(lambda: not new_shim.exists(), 5, "the restarted shim to exit")


def test_exit_while_no_daemon_runs_is_reported_by_the_next_load(harness: Harness) -> None:
    daemon = harness.daemon([harness.body("sleep 1; echo bye; exit 7")])
    (launched,) = daemon.containers
    daemon.kill()
    directory = os.path.join(harness.engine.root, "containers", launched.id)
    exit_file = Container.load(directory).exit_file
    assert launched.shim.alive(), "the container ended before the daemon was killed"
    wait_for(lambda: os.path.exists(exit_file), 10, "the shim to write exit.json")
    wait_for(lambda: not launched.shim.exists(), 5, "the shim to be reaped")
    assert Container.load(directory).state.status == "running"  # nobody has looked yet

    manager = harness.manager()
    container = manager.get(launched.id)
    assert (container.state.status, container.state.exit_code) == ("exited", 7)
    assert manager.wait(container.id, timeout=5) == 7
    assert _stdout(container) == "bye\n"
    assert Container.load(directory).state.status == "exited"
    assert not rootfs.is_mounted(container.merged)
    assert not _cgroup_exists(harness.engine, container.id)


def test_shims_do_not_hold_the_daemons_stdout_and_stderr(harness: Harness) -> None:
    daemon = harness.daemon([harness.body(FOREVER)])
    (launched,) = daemon.containers
    daemon.kill()
    held = {
        fd: os.readlink(f"/proc/{launched.shim.pid}/fd/{fd}")
        for fd in (0, 1, 2)
        if os.path.exists(f"/proc/{launched.shim.pid}/fd/{fd}")
    }
    daemon_files = {str(harness.workdir / "daemon-0.out"), str(harness.workdir / "daemon-0.err")}
    assert not set(held.values()) & daemon_files, f"the shim holds the daemon's stdio: {held}"


def test_load_restarts_stopped_containers_as_dockerd_does(harness: Harness) -> None:
    """dockerd's start restarts a stopped container whose policy says so: one whose restart
    was pending when the engine went down, one that died while it shut down, and an
    `always` one even after a user's stop; not an unless-stopped one a user stopped."""
    bodies = [harness.body(FOREVER, restart="always") for _ in range(3)]
    daemon = harness.daemon([*bodies, harness.body(FOREVER, restart="unless-stopped")])
    pending, died, stopped_always, stopped_unless = daemon.containers
    _wait_all_up(harness, daemon)
    _power_cut(daemon)
    for launched, status, by_user in (
        (pending, "restarting", False),
        (died, "exited", False),
        (stopped_always, "exited", True),
        (stopped_unless, "exited", True),
    ):
        record = Container.load(_record_dir(harness, launched))
        record.state.status, record.state.stopped_by_user = status, by_user
        record.state.pid = record.state.shim_pid = 0
        record.save()

    manager = harness.manager()
    restarted = [manager.get(launched.id) for launched in (pending, died, stopped_always)]
    wait_for(
        lambda: all(c.state.status == "running" and c.state.restart_count == 1 for c in restarted),
        10,
        "the three to be restarted",
    )
    assert not any(c.state.stopped_by_user for c in restarted)
    time.sleep(0.5)
    user_stopped = manager.get(stopped_unless.id)
    assert user_stopped.state.status == "exited" and user_stopped.state.restart_count == 0
    for container in restarted:
        assert manager.stop(container.id, timeout=1)
