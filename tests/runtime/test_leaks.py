"""Hundreds of container runs leave nothing behind (needs root).

Every start forks a shim and an init, mounts an overlay, makes a cgroup, opens sockets,
pipes and a pidfd, and starts a watcher thread; every removal must give all of it back, on
the success paths and on the error paths alike. The test counts those resources before and
after 200 create/start/wait/remove cycles and names whatever is left over.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agent.errors import AgentError
from tests.runtime.conftest import Engine

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)

CYCLES = 200
GRACE = 5.0  # seconds for watcher threads to finish after the last removal


# --- what a run could leak -----------------------------------------------------------------


def _mount_points() -> Counter[str]:
    with open("/proc/self/mountinfo") as handle:
        return Counter(line.split()[4] for line in handle)


def _cgroups(engine: Engine) -> set[str]:
    if engine.hierarchy is None or not engine.hierarchy.path.exists():
        return set()
    return {directory for directory, _, _ in os.walk(engine.hierarchy.path)}


def _fds() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory listing's own descriptor, closed by now
            continue
    return found


def _stat(pid: str) -> tuple[str, int] | None:
    """(comm, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
    return comm, int(data[data.rindex(b")") + 2 :].split()[1])


def _children() -> dict[int, str]:
    """This process's children, zombies (a shim nobody reaped) included."""
    me = os.getpid()
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        info = _stat(pid)
        if info is not None and info[1] == me:
            found[int(pid)] = info[0]
    return found


def _inside(root: str) -> dict[int, str]:
    """Processes working or rooted under the engine's root: cwd or root links there, or
    (for a container's process, which sees its pivoted root as "/") a root mount whose
    overlay layers live there."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        where = []
        for link in ("cwd", "root"):
            try:
                target = os.readlink(f"/proc/{pid}/{link}")
            except OSError:
                continue
            if target == root or target.startswith(root + "/"):
                where.append(f"{link} {target}")
        try:
            with open(f"/proc/{pid}/mountinfo") as handle:
                if any(line.split()[4] == "/" and root + "/" in line for line in handle):
                    where.append("root mount from the engine's layers")
        except OSError:
            pass
        if where:
            info = _stat(pid)
            found[int(pid)] = f"{info[0] if info else '?'} ({', '.join(where)})"
    return found


def _manager_threads() -> list[str]:
    """The manager's per-container threads (shim watchers, pending restarts)."""
    names = (t.name for t in threading.enumerate())
    return [n for n in names if n.startswith(("watch-", "restart-"))]


def _run_dir(engine: Engine) -> set[str]:
    return set(os.listdir(engine.manager.run_root))


@dataclass
class Snapshot:
    mounts: Counter[str]
    cgroups: set[str]
    fds: dict[int, str]
    children: dict[int, str]
    inside_root: dict[int, str]
    threads: int
    thread_names: list[str]
    interfaces: set[str]
    containers: set[str]

    @classmethod
    def take(cls, engine: Engine) -> Snapshot:
        return cls(
            mounts=_mount_points(),
            cgroups=_cgroups(engine),
            fds=_fds(),
            children=_children(),
            inside_root=_inside(engine.root),
            threads=threading.active_count(),
            thread_names=sorted(t.name for t in threading.enumerate()),
            interfaces=set(os.listdir("/sys/class/net")),
            containers=set(os.listdir(engine.manager.root)),
        )


def _foreign_mount(engine: Engine, point: str) -> bool:
    """A mount under another engine fixture's root: a test running at the same time."""
    others = os.path.join(os.path.dirname(engine.root), "vmctl-rt-")
    ours = engine.root + "/"
    return point.startswith(others) and not (point + "/").startswith(ours)


def leaks(engine: Engine, before: Snapshot, after: Snapshot) -> list[str]:
    """One line per kind of resource there is more of, naming the extra items.

    Only additions count: mounts and interfaces are the whole host's, and a test running
    alongside may remove some of its own meanwhile.
    """
    problems = []
    extra_mounts = [
        p for p in (after.mounts - before.mounts).elements() if not _foreign_mount(engine, p)
    ]
    if extra_mounts:
        problems.append(
            f"mounts: {sum(before.mounts.values())} before, {sum(after.mounts.values())} "
            f"after; extra: {sorted(extra_mounts)[:10]}"
        )
    pairs: list[tuple[str, set[object], set[object]]] = [
        ("cgroups", set(before.cgroups), set(after.cgroups)),
        ("file descriptors", set(before.fds.items()), set(after.fds.items())),
        ("child processes", set(before.children.items()), set(after.children.items())),
        ("processes in the root", set(before.inside_root.items()), set(after.inside_root.items())),
        ("network interfaces", set(before.interfaces), set(after.interfaces)),
        ("container directories", set(before.containers), set(after.containers)),
    ]
    for what, old, new in pairs:
        added = sorted(map(str, new - old))
        if added:
            problems.append(f"{what}: {len(old)} before, {len(new)} after; extra: {added[:10]}")
    if after.threads > before.threads:
        extra = Counter(after.thread_names) - Counter(before.thread_names)
        problems.append(
            f"threads: {before.threads} before, {after.threads} after; "
            f"extra: {sorted(extra.elements())[:10]}"
        )
    return problems


def settle(engine: Engine, baseline: Snapshot) -> list[str]:
    """What is still leaked once watcher threads (and the work of any test running
    alongside) had a short grace period to finish."""
    deadline = time.monotonic() + GRACE
    while True:
        problems = leaks(engine, baseline, Snapshot.take(engine))
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.05)


# --- the kinds of run mixed into the cycles ------------------------------------------------


def _plain(engine: Engine) -> None:
    result = engine.run(["true"])
    assert result.code == 0, result
    engine.manager.remove(result.container.id)


def _bind(engine: Engine) -> None:
    host = os.path.join(engine.root, "leak-bind")
    os.makedirs(host, exist_ok=True)
    result = engine.sh("test -d /data && echo x > /data/f", Binds=[f"{host}:/data"])
    assert result.code == 0, result
    engine.manager.remove(result.container.id)


def _tmpfs(engine: Engine) -> None:
    result = engine.sh("touch /scratch/f", Tmpfs={"/scratch": "size=64k"})
    assert result.code == 0, result
    engine.manager.remove(result.container.id)


def _volume(engine: Engine) -> None:
    result = engine.sh("echo x > /data/f", Binds=["leakvol:/data"])
    assert result.code == 0, result
    engine.manager.remove(result.container.id, volumes=True)


def _exec_fails(engine: Engine) -> None:
    container = engine.create(["nosuchcmd"])
    with pytest.raises(AgentError, match="executable file not found"):
        engine.manager.start(container.id)
    engine.manager.remove(container.id)


def _killed(engine: Engine) -> None:
    container = engine.create(["sleep", "30"])
    engine.manager.start(container.id)
    engine.manager.kill(container.id, "KILL")
    assert engine.manager.wait(container.id, timeout=30) == 137
    engine.manager.remove(container.id)


def _force_removed(engine: Engine) -> None:
    container = engine.create(["sleep", "30"])
    engine.manager.start(container.id)
    engine.manager.remove(container.id, force=True)


KINDS: list[Callable[[Engine], None]] = [
    _plain,
    _plain,
    _bind,
    _plain,
    _tmpfs,
    _plain,
    _volume,
    _exec_fails,
    _killed,
    _force_removed,
]


def _warm_up(engine: Engine) -> None:
    """One run of each kind, so one-off state (caches, the volume, the bind directory) is
    part of the baseline and not counted as a leak."""
    for kind in dict.fromkeys(KINDS):
        kind(engine)


def test_two_hundred_runs_leak_nothing(engine: Engine) -> None:
    _warm_up(engine)
    deadline = time.monotonic() + GRACE  # the warm-up's watcher threads end
    while _manager_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    baseline = Snapshot.take(engine)
    for cycle in range(CYCLES):
        kind = KINDS[cycle % len(KINDS)]
        try:
            kind(engine)
        except Exception as error:
            raise AssertionError(f"cycle {cycle} ({kind.__name__}) failed: {error}") from error
    assert engine.manager.all() == []
    problems = settle(engine, baseline)
    assert not problems, f"after {CYCLES} runs, leaked:\n  " + "\n  ".join(problems)


def test_removed_containers_leave_no_attach_sockets(engine: Engine) -> None:
    before = _run_dir(engine)
    for _ in range(3):
        _plain(engine)
        _exec_fails(engine)
    assert _run_dir(engine) == before
