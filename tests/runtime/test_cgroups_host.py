"""cgroup v2 management on this host's real cgroup2 hierarchy (needs root).

On a hybrid host (v1 controllers, a v2 mount without any) this exercises what every
container gets regardless of controllers: tracking, freezing, killing, removal, CPU time.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.cgroups import MIB, CgroupError, Hierarchy, Resources, find_unified_mount

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("cgroup management needs root", allow_module_level=True)

ROOT = find_unified_mount()
if ROOT is None:
    pytest.skip("this host has no cgroup2 mount", allow_module_level=True)

# Counts up forever, one line every 5 ms: a frozen process stops writing.
COUNTER = """
import os, time
i = 0
while True:
    i += 1
    os.write(1, b"%d\\n" % i)
    time.sleep(0.005)
"""


def _force_remove(path: Path) -> None:
    """Kill and remove a cgroup tree without the code under test, so cleanup cannot fail."""
    for top, _dirs, _files in os.walk(path, topdown=False):
        cgroup = Path(top)
        for _ in range(200):
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.freeze").write_text("0")
            pids = (cgroup / "cgroup.procs").read_text().split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                os.rmdir(cgroup)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


@pytest.fixture
def hierarchy() -> Iterator[Hierarchy]:
    assert ROOT is not None
    parent = f"vmctl-test-{uuid.uuid4().hex[:12]}"
    try:
        yield Hierarchy(ROOT, parent)
    finally:
        if (ROOT / parent).exists():
            _force_remove(ROOT / parent)
        assert not (ROOT / parent).exists()


@pytest.fixture
def counter() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", COUNTER], stdout=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def _progress(proc: subprocess.Popen[bytes], wait: float) -> bytes:
    """What the counter wrote within ``wait`` seconds (empty if it made no progress)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + wait
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _drain(proc: subprocess.Popen[bytes]) -> None:
    _progress(proc, 0.05)


def test_available_leaves_the_hosts_root_alone(hierarchy: Hierarchy) -> None:
    before = (hierarchy.root / "cgroup.subtree_control").read_text()
    available = hierarchy.available()
    assert (hierarchy.root / "cgroup.subtree_control").read_text() == before
    assert hierarchy.path.is_dir()
    offered = set((hierarchy.root / "cgroup.controllers").read_text().split())
    assert available <= offered


def test_track_freeze_thaw_kill_remove(
    hierarchy: Hierarchy, counter: subprocess.Popen[bytes]
) -> None:
    cg = hierarchy.create("c1", Resources())
    assert cg.path == hierarchy.path / "c1" and cg.path.is_dir()
    assert cg.pids() == [] and not cg.populated()

    cg.add_process(counter.pid)
    assert cg.pids() == [counter.pid]
    assert cg.populated()
    cgroup_line = Path(f"/proc/{counter.pid}/cgroup").read_text()
    assert f"0::/{hierarchy.parent}/c1\n" in cgroup_line
    assert _progress(counter, 0.3), "the counter should be running before the freeze"

    opened = hierarchy.open("c1")
    assert opened is not None and opened.path == cg.path

    cg.freeze()
    assert cg.frozen()
    _drain(counter)  # a line may have been in flight
    assert _progress(counter, 0.5) == b"", "a frozen process kept writing"
    assert counter.poll() is None

    cg.thaw()
    assert not cg.frozen()
    assert _progress(counter, 2.0), "the thawed process did not resume"

    stats = cg.stats(online_cpus=os.cpu_count() or 1)
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert stats["cpu_stats"]["system_cpu_usage"] > 0
    assert stats["pids_stats"]["current"] >= 1
    if not (cg.path / "memory.current").exists():
        assert stats["memory_stats"] == {}

    cg.kill()
    assert counter.wait(timeout=5) == -signal.SIGKILL
    assert cg.pids() == [] and not cg.populated()

    cg.remove()
    assert not cg.path.exists()
    assert hierarchy.open("c1") is None
    assert hierarchy.containers() == []
    cg.remove()  # removing twice is fine


def test_kill_a_frozen_container_and_remove_kills_what_is_left(
    hierarchy: Hierarchy, counter: subprocess.Popen[bytes]
) -> None:
    cg = hierarchy.create("c2", Resources())
    cg.add_process(counter.pid)
    cg.freeze()
    cg.remove()  # EBUSY while the process lives: remove kills it and retries
    assert counter.wait(timeout=5) == -signal.SIGKILL
    assert not cg.path.exists()


def test_memory_limit_is_refused_without_a_memory_controller(hierarchy: Hierarchy) -> None:
    assert ROOT is not None
    if "memory" in (ROOT / "cgroup.controllers").read_text().split():
        pytest.skip("this host's cgroup v2 has a memory controller; refusal is unit-tested")
    with pytest.raises(CgroupError) as caught:
        hierarchy.create("c3", Resources.from_host_config({"Memory": 64 * MIB}))
    message = str(caught.value)
    assert "this host's cgroup v2 hierarchy has no memory controller" in message
    assert "run without --memory" in message
    assert "use a VM/host with cgroup v2 controllers" in message
    assert caught.value.status == 400
    assert not (hierarchy.path / "c3").exists()
