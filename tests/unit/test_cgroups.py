"""cgroup v2 management against a fake cgroup tree: plain files named like cgroupfs."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from agent.runtime import cgroups
from agent.runtime.cgroups import (
    MIB,
    Cgroup,
    CgroupError,
    Hierarchy,
    Resources,
    cpu_weight,
    find_unified_mount,
    io_weight,
    parse_io_stat,
    system_cpu_usage,
)

CONTROLLER_FILES = {
    "memory": ("memory.max", "memory.swap.max", "memory.low", "memory.current", "memory.stat"),
    "cpu": ("cpu.max", "cpu.weight"),
    "cpuset": ("cpuset.cpus", "cpuset.mems"),
    "pids": ("pids.max", "pids.current"),
    "io": ("io.weight", "io.stat"),
}
CORE_FILES = ("cgroup.procs", "cgroup.events", "cgroup.freeze", "cgroup.controllers", "cpu.stat")


def fake_cgroup(path: Path, controllers: str = "") -> Path:
    """A directory with the files cgroupfs shows for ``controllers`` (empty contents)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in CORE_FILES:
        (path / name).write_text("")
    (path / "cgroup.controllers").write_text(controllers)
    (path / "cgroup.subtree_control").write_text("")
    for controller in controllers.split():
        for name in CONTROLLER_FILES.get(controller, ()):
            (path / name).write_text("")
    return path


@pytest.fixture
def cgroupfs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Make writes to cgroup.subtree_control behave as on cgroupfs; returns the write log.

    ``+ctl`` adds a controller the level is offered (else ENOENT, as the kernel answers) and
    the change shows in the children's cgroup.controllers.
    """
    writes: list[tuple[str, str]] = []
    real_write = cgroups._write

    def write(path: Path, value: str) -> None:
        writes.append((str(path), value))
        if path.name != "cgroup.subtree_control":
            real_write(path, value)
            return
        offered = set((path.parent / "cgroup.controllers").read_text().split())
        enabled = set(path.read_text().split())
        for token in value.split():
            if token[1:] not in offered:
                raise OSError(errno.ENOENT, "No such file or directory")
            (enabled.add if token[0] == "+" else enabled.discard)(token[1:])
        path.write_text(" ".join(sorted(enabled)))
        for child in path.parent.iterdir():
            if child.is_dir():
                (child / "cgroup.controllers").write_text(" ".join(sorted(enabled)))

    monkeypatch.setattr(cgroups, "_write", write)
    return writes


# --- mountinfo ---------------------------------------------------------------------------

HYBRID_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
"""


def test_mountinfo_finds_the_cgroup2_mount_not_v1_ones() -> None:
    assert find_unified_mount(HYBRID_MOUNTINFO) == Path("/sys/fs/cgroup/unified")


def test_mountinfo_prefers_the_root_of_the_hierarchy_and_unescapes() -> None:
    text = (
        "50 40 0:38 /vmctl /mnt/sub\\040tree rw - cgroup2 cgroup2 rw\n"
        "51 40 0:38 / /run/my\\040cgroup rw,nosuid - cgroup2 none rw,nsdelegate\n"
    )
    assert find_unified_mount(text) == Path("/run/my cgroup")
    assert find_unified_mount(text.splitlines()[0]) == Path("/mnt/sub tree")


def test_mountinfo_without_cgroup2() -> None:
    assert find_unified_mount(HYBRID_MOUNTINFO.replace("cgroup2", "cgroup")) is None
    assert find_unified_mount("") is None


def test_mountinfo_of_this_process_parses() -> None:
    found = find_unified_mount()
    assert found is None or found.is_absolute()


# --- Resources from HostConfig -------------------------------------------------------------


def test_host_config_keys_are_read() -> None:
    res = Resources.from_host_config(
        {
            "Memory": 64 * MIB,
            "MemorySwap": 96 * MIB,
            "MemoryReservation": 32 * MIB,
            "CpuShares": 512,
            "CpuPeriod": 50000,
            "CpuQuota": 25000,
            "CpusetCpus": "0",
            "CpusetMems": "0",
            "PidsLimit": 50,
            "BlkioWeight": 300,
        }
    )
    assert res == Resources(
        memory=64 * MIB,
        memory_swap=96 * MIB,
        memory_reservation=32 * MIB,
        cpu_shares=512,
        cpu_period=50000,
        cpu_quota=25000,
        cpuset_cpus="0",
        cpuset_mems="0",
        pids_limit=50,
        blkio_weight=300,
    )
    assert res.controllers_needed() == {"memory", "cpu", "cpuset", "pids", "io"}


def test_empty_host_config_needs_no_controller() -> None:
    res = Resources.from_host_config({"Memory": 0, "PidsLimit": None, "CpusetCpus": ""})
    assert res == Resources()
    assert res.controllers_needed() == set()
    assert Resources(pids_limit=-1, memory_swap=-1, cpu_quota=-1).controllers_needed() == set()


def test_create_defaults_swap_to_twice_memory_but_update_does_not() -> None:
    assert Resources.from_host_config({"Memory": 64 * MIB}).memory_swap == 128 * MIB
    assert Resources.from_host_config({"Memory": 64 * MIB}, update=True).memory_swap == 0


def test_cpu_shares_are_clamped_like_dockerd() -> None:
    assert Resources.from_host_config({"CpuShares": 1}).cpu_shares == 2
    assert Resources.from_host_config({"CpuShares": -5}).cpu_shares == 2
    assert Resources.from_host_config({"CpuShares": 10**7}).cpu_shares == 262144


@pytest.mark.parametrize(
    ("host_config", "message"),
    [
        ({"Memory": 4 * MIB}, "Minimum memory limit allowed is 6MB"),
        ({"Memory": -1}, "Minimum memory limit allowed is 6MB"),
        (
            {"Memory": 64 * MIB, "MemorySwap": 32 * MIB},
            "Minimum memoryswap limit should be larger than memory limit, see usage",
        ),
        (
            {"MemorySwap": 32 * MIB},
            "You should always set the Memory limit when using Memoryswap limit, see usage",
        ),
        ({"MemoryReservation": MIB}, "Minimum memory reservation allowed is 6MB"),
        (
            {"Memory": 16 * MIB, "MemoryReservation": 32 * MIB},
            "Minimum memory limit can not be less than memory reservation limit, see usage",
        ),
        (
            {"NanoCpus": 500_000_000, "CpuPeriod": 100000},
            "Conflicting options: Nano CPUs and CPU Period cannot both be set",
        ),
        (
            {"NanoCpus": 500_000_000, "CpuQuota": 50000},
            "Conflicting options: Nano CPUs and CPU Quota cannot both be set",
        ),
        ({"NanoCpus": 10**6}, "range of CPUs is from 0.01 to"),
        ({"NanoCpus": 10**15}, "range of CPUs is from 0.01 to"),
        ({"CpuPeriod": 999}, "CPU cfs period can not be less than 1ms"),
        ({"CpuPeriod": 1_000_001}, "CPU cfs period can not be less than 1ms"),
        ({"CpuQuota": 999}, "CPU cfs quota can not be less than 1ms (i.e. 1000)"),
        ({"CpusetCpus": "0-"}, "Invalid value 0- for cpuset cpus"),
        ({"CpusetCpus": "3-1"}, "Invalid value 3-1 for cpuset cpus"),
        ({"CpusetMems": "a"}, "Invalid value a for cpuset mems"),
        ({"CpusetCpus": "0,4095"}, "Requested CPUs are not available - requested 0,4095"),
        ({"BlkioWeight": 9}, "Range of blkio weight is from 10 to 1000"),
        ({"BlkioWeight": 1001}, "Range of blkio weight is from 10 to 1000"),
        ({"Memory": "64m"}, "invalid HostConfig.Memory '64m': expected an integer"),
        ({"PidsLimit": "10"}, "invalid HostConfig.PidsLimit"),
    ],
)
def test_dockerd_refusals(host_config: dict[str, object], message: str) -> None:
    with pytest.raises(CgroupError) as caught:
        Resources.from_host_config(host_config)
    assert message in str(caught.value)
    assert caught.value.status == 400


def test_update_may_set_swap_alone_and_accepts_limits_at_the_boundaries() -> None:
    Resources.from_host_config({"MemorySwap": 32 * MIB}, update=True)
    res = Resources.from_host_config(
        {"Memory": 6 * MIB, "CpuPeriod": 1000, "CpuQuota": 1000, "BlkioWeight": 10}
    )
    assert res.cpu_max() == "1000 1000"
    Resources.from_host_config({"NanoCpus": 10**7, "BlkioWeight": 1000})
    Resources.from_host_config({"CpuPeriod": 10**6, "CpuQuota": -1})


# --- values written -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(2, 1), (1, 1), (0, 1), (3, 1), (1024, 39), (262144, 10000), (10**9, 10000)],
)
def test_cpu_weight_linear_formula_at_the_boundaries(shares: int, weight: int) -> None:
    assert cpu_weight(shares) == weight


@pytest.mark.parametrize(("blkio", "weight"), [(10, 1), (11, 11), (500, 4950), (1000, 10000)])
def test_io_weight_formula(blkio: int, weight: int) -> None:
    assert io_weight(blkio) == weight


@pytest.mark.parametrize(
    ("res", "cpu_max"),
    [
        (Resources(nano_cpus=1_500_000_000), "150000 100000"),
        (Resources(nano_cpus=10_000_000), "1000 100000"),
        (Resources(cpu_quota=50000, cpu_period=200000), "50000 200000"),
        (Resources(cpu_quota=50000), "50000"),
        (Resources(cpu_period=200000), "max 200000"),
        (Resources(cpu_quota=-1, cpu_period=100000), "max 100000"),
        (Resources(), None),
    ],
)
def test_cpu_max_line(res: Resources, cpu_max: str | None) -> None:
    assert res.cpu_max() == cpu_max


def test_swap_is_memory_swap_minus_memory() -> None:
    assert Resources(memory=64 * MIB, memory_swap=96 * MIB).swap_max() == str(32 * MIB)
    assert Resources(memory=64 * MIB, memory_swap=64 * MIB).swap_max() == "0"
    assert Resources(memory=64 * MIB, memory_swap=-1).swap_max() == "max"
    assert Resources(memory=64 * MIB).swap_max() is None
    with pytest.raises(CgroupError, match="needs a memory limit"):
        Resources(memory_swap=96 * MIB).swap_max()


def read_all(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in path.iterdir() if p.is_file()}


def test_apply_writes_every_limit(tmp_path: Path) -> None:
    cg = Cgroup(fake_cgroup(tmp_path / "c1", "memory cpu cpuset pids io"))
    cg.apply(
        Resources(
            memory=64 * MIB,
            memory_swap=96 * MIB,
            memory_reservation=32 * MIB,
            nano_cpus=500_000_000,
            cpu_shares=512,
            cpuset_cpus="0-1",
            cpuset_mems="0",
            pids_limit=50,
            blkio_weight=500,
        )
    )
    files = read_all(cg.path)
    assert files["memory.max"] == str(64 * MIB)
    assert files["memory.swap.max"] == str(32 * MIB)
    assert files["memory.low"] == str(32 * MIB)
    assert files["cpu.max"] == "50000 100000"
    assert files["cpu.weight"] == "20"  # 1 + (510 * 9999) // 262142
    assert files["cpuset.cpus"] == "0-1"
    assert files["cpuset.mems"] == "0"
    assert files["pids.max"] == "50"
    assert files["io.weight"] == "4950"


def test_apply_prefers_bfq_with_dockers_own_range(tmp_path: Path) -> None:
    path = fake_cgroup(tmp_path / "c1", "io")
    (path / "io.bfq.weight").write_text("")
    Cgroup(path).apply(Resources(blkio_weight=300))
    assert (path / "io.bfq.weight").read_text() == "300"
    assert (path / "io.weight").read_text() == ""


def test_apply_lifts_limits_for_docker_update(tmp_path: Path) -> None:
    cg = Cgroup(fake_cgroup(tmp_path / "c1", "memory pids cpu"))
    cg.apply(Resources(memory=64 * MIB, pids_limit=10, cpu_quota=50000))
    cg.apply(Resources(memory=64 * MIB, memory_swap=-1, pids_limit=-1, cpu_quota=-1))
    files = read_all(cg.path)
    assert (files["pids.max"], files["memory.swap.max"], files["cpu.max"]) == ("max",) * 3
    # Unset values (None, 0) leave cpu.weight and the cpuset alone.
    assert files["cpu.weight"] == ""


def test_apply_without_limits_needs_no_controller(tmp_path: Path) -> None:
    path = fake_cgroup(tmp_path / "c1")
    Cgroup(path).apply(Resources(pids_limit=0, memory_swap=-1))
    assert not (path / "memory.max").exists()
    assert not (path / "pids.max").exists()


def test_apply_refuses_a_limit_whose_file_is_missing(tmp_path: Path) -> None:
    cg = Cgroup(fake_cgroup(tmp_path / "c1", "memory"))
    with pytest.raises(CgroupError, match=r"--pids-limit.*no pids controller") as caught:
        cg.apply(Resources(pids_limit=5))
    assert caught.value.status == 400


def test_apply_reports_a_value_the_kernel_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cg = Cgroup(fake_cgroup(tmp_path / "c1", "cpuset"))

    def refuse(path: Path, value: str) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(cgroups, "_write", refuse)
    with pytest.raises(CgroupError, match=r"--cpuset-cpus: writing '7' to .*Invalid argument"):
        cg.apply(Resources(cpuset_cpus="7"))


# --- Hierarchy ------------------------------------------------------------------------------


def test_available_enables_controllers_at_each_level(
    tmp_path: Path, cgroupfs: list[tuple[str, str]]
) -> None:
    root = fake_cgroup(tmp_path, "cpuset cpu io memory pids hugetlb")
    fake_cgroup(root / "outer")  # parent levels exist (cgroupfs fills them on mkdir)
    fake_cgroup(root / "outer" / "vmctl")
    h = Hierarchy(root, "outer/vmctl")
    assert h.available() == {"cpuset", "cpu", "io", "memory", "pids"}
    # Each level got one "+controller" write per controller, hugetlb was never asked for.
    levels = {str(root), str(root / "outer"), str(root / "outer" / "vmctl")}
    enabled = [(p, v) for p, v in cgroupfs if p.endswith("subtree_control")]
    assert {p.rsplit("/", 1)[0] for p, _ in enabled} == levels
    assert sorted(v for p, v in enabled if p.startswith(str(root / "outer" / "vmctl"))) == [
        "+cpu",
        "+cpuset",
        "+io",
        "+memory",
        "+pids",
    ]
    # Idempotent: nothing is written again once enabled.
    cgroupfs.clear()
    assert h.available() == {"cpuset", "cpu", "io", "memory", "pids"}
    assert cgroupfs == []


def test_available_on_a_hierarchy_without_controllers(
    tmp_path: Path, cgroupfs: list[tuple[str, str]]
) -> None:
    root = fake_cgroup(tmp_path, "hugetlb")
    h = Hierarchy(root, "vmctl")
    assert h.available() == set()
    assert (root / "vmctl").is_dir()
    assert cgroupfs == []  # nothing to enable: the root's subtree_control is left alone


def test_create_refuses_a_limit_without_its_controller(
    tmp_path: Path, cgroupfs: list[tuple[str, str]]
) -> None:
    root = fake_cgroup(tmp_path, "cpu pids")
    fake_cgroup(root / "vmctl")
    h = Hierarchy(root, "vmctl")
    with pytest.raises(CgroupError) as caught:
        h.create("c1", Resources(memory=64 * MIB, memory_swap=128 * MIB, pids_limit=5))
    message = str(caught.value)
    assert message.startswith("this host's cgroup v2 hierarchy has no memory controller")
    assert "run without --memory, --memory-swap, or use a VM/host with cgroup v2" in message
    assert "pids" not in message.split("(")[0]
    assert caught.value.status == 400
    assert not (root / "vmctl" / "c1").exists()


def test_create_without_limits_and_open(tmp_path: Path, cgroupfs: list[tuple[str, str]]) -> None:
    h = Hierarchy(fake_cgroup(tmp_path), "vmctl")
    cg = h.create("c1", Resources())
    assert cg.path == tmp_path / "vmctl" / "c1" and cg.path.is_dir()
    opened = h.open("c1")
    assert opened is not None and opened.path == cg.path
    assert h.open("c2") is None
    assert h.containers() == ["c1"]


def test_create_applies_limits(tmp_path: Path, cgroupfs: list[tuple[str, str]]) -> None:
    root = fake_cgroup(tmp_path, "memory pids")
    fake_cgroup(root / "vmctl")
    # cgroupfs would make these files on mkdir; the fake container dir is made beforehand.
    fake_cgroup(root / "vmctl" / "c1", "memory pids")
    cg = Hierarchy(root, "vmctl").create("c1", Resources(memory=64 * MIB, pids_limit=7))
    assert (cg.path / "memory.max").read_text() == str(64 * MIB)
    assert (cg.path / "pids.max").read_text() == "7"


def test_create_refuses_a_cgroup_that_still_has_processes(
    tmp_path: Path, cgroupfs: list[tuple[str, str]]
) -> None:
    root = fake_cgroup(tmp_path)
    (fake_cgroup(root / "vmctl" / "c1") / "cgroup.procs").write_text("4242\n")
    with pytest.raises(CgroupError, match=r"already exists with processes \[4242\]") as caught:
        Hierarchy(root, "vmctl").create("c1", Resources())
    assert caught.value.status == 409


@pytest.mark.parametrize("bad", ["", "..", "a/b", "."])
def test_container_ids_that_would_escape_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CgroupError, match="invalid container id"):
        Hierarchy(tmp_path).open(bad)


def test_parent_must_be_relative_without_dotdot(tmp_path: Path) -> None:
    for bad in ("/abs", "a/../b", ""):
        with pytest.raises(CgroupError, match="cgroup parent"):
            Hierarchy(tmp_path, bad)


# --- process control on the fake tree ------------------------------------------------------


def test_pids_frozen_and_oom_counts(tmp_path: Path) -> None:
    path = fake_cgroup(tmp_path / "c1", "memory")
    (path / "cgroup.procs").write_text("12\n34\n")
    (path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
    cg = Cgroup(path)
    assert cg.pids() == [12, 34]
    assert cg.frozen() and cg.populated()
    assert cg.oom_kill_count() == 2 and cg.oom_killed()
    (path / "memory.events").unlink()
    assert cg.oom_kill_count() == 0 and not cg.oom_killed()


def test_freeze_waits_for_the_kernel_and_gives_up_with_a_hint(tmp_path: Path) -> None:
    path = fake_cgroup(tmp_path / "c1")
    (path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    cg = Cgroup(path)
    cg.freeze(timeout=0.05)
    assert (path / "cgroup.freeze").read_text() == "1"
    with pytest.raises(CgroupError, match=r"was not thawed within 0.05 s .* try again"):
        cg.thaw(timeout=0.05)
    assert (path / "cgroup.freeze").read_text() == "0"


def test_freeze_without_a_freezer(tmp_path: Path) -> None:
    path = fake_cgroup(tmp_path / "c1")
    (path / "cgroup.freeze").unlink()
    with pytest.raises(CgroupError, match="cannot pause: .* Linux 5.2"):
        Cgroup(path).freeze()


def test_kill_without_cgroup_kill_signals_each_process_until_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fake_cgroup(tmp_path / "c1")
    (path / "cgroup.procs").write_text("101\n102\n")
    child = fake_cgroup(path / "inner")
    (child / "cgroup.procs").write_text("103\n")
    signals: list[tuple[int, int]] = []

    def fake_kill(pid: int, sig: int) -> None:
        signals.append((pid, sig))
        if len(signals) == 3:  # the kernel empties the cgroups once all are dead
            (path / "cgroup.procs").write_text("")
            (child / "cgroup.procs").write_text("")
        if pid == 102:
            raise ProcessLookupError  # already gone: not an error

    monkeypatch.setattr(os, "kill", fake_kill)
    Cgroup(path).kill(timeout=2)
    assert sorted(signals) == [(101, signal.SIGKILL), (102, signal.SIGKILL), (103, signal.SIGKILL)]


def test_kill_that_does_not_empty_the_cgroup_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fake_cgroup(tmp_path / "c1")
    (path / "cgroup.procs").write_text("101\n")
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)
    with pytest.raises(CgroupError, match=r"processes \[101\] .* survived SIGKILL"):
        Cgroup(path).kill(timeout=0.05)


def test_add_process_writes_cgroup_procs(tmp_path: Path) -> None:
    path = fake_cgroup(tmp_path / "c1")
    Cgroup(path).add_process(4321)
    assert (path / "cgroup.procs").read_text() == "4321"
    with pytest.raises(CgroupError, match="cannot move process 1 into cgroup"):
        Cgroup(tmp_path / "gone").add_process(1)


# --- stats ------------------------------------------------------------------------------------

CPU_STAT = """\
usage_usec 2500000
user_usec 2000000
system_usec 500000
core_sched.force_idle_usec 0
nr_periods 40
nr_throttled 7
throttled_usec 123456
nr_bursts 0
burst_usec 0
"""
MEMORY_STAT = """\
anon 1048576
file 4096000
kernel 98304
inactive_file 2048000
active_file 2048000
pgfault 1234
"""
IO_STAT = """\
8:0 rbytes=1048576 wbytes=4096 rios=10 wios=1 dbytes=0 dios=0
253:1 rbytes=0 wbytes=512 rios=0 wios=1 dbytes=0 dios=0
"""
PROC_STAT = "cpu  100 20 30 1000 5 6 7 8 0 0\ncpu0 50 10 15 500 2 3 3 4 0 0\n"
MEMINFO = "MemTotal:        2048000 kB\nMemFree:         1000000 kB\n"


def stats_tree(tmp_path: Path) -> tuple[Path, Path]:
    path = fake_cgroup(tmp_path / "c1", "memory pids io cpu")
    (path / "cpu.stat").write_text(CPU_STAT)
    (path / "memory.current").write_text("5242880\n")
    (path / "memory.max").write_text("max\n")
    (path / "memory.stat").write_text(MEMORY_STAT)
    (path / "pids.current").write_text("3\n")
    (path / "pids.max").write_text("max\n")
    (path / "io.stat").write_text(IO_STAT)
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(PROC_STAT)
    (proc / "meminfo").write_text(MEMINFO)
    return path, proc


def test_stats_in_the_engine_api_shape(tmp_path: Path) -> None:
    path, proc = stats_tree(tmp_path)
    stats = Cgroup(path, proc).stats(online_cpus=2)
    ticks = os.sysconf("SC_CLK_TCK")
    assert stats["cpu_stats"] == {
        "cpu_usage": {
            "total_usage": 2_500_000_000,
            "usage_in_kernelmode": 500_000_000,
            "usage_in_usermode": 2_000_000_000,
        },
        "system_cpu_usage": (100 + 20 + 30 + 1000 + 5 + 6 + 7) * 10**9 // ticks,
        "online_cpus": 2,
        "throttling_data": {"periods": 40, "throttled_periods": 7, "throttled_time": 123456000},
    }
    assert stats["memory_stats"] == {
        "usage": 5242880,
        "limit": 2048000 * 1024,  # "max": the machine's memory
        "stats": {
            "anon": 1048576,
            "file": 4096000,
            "kernel": 98304,
            "inactive_file": 2048000,
            "active_file": 2048000,
            "pgfault": 1234,
        },
    }
    assert stats["pids_stats"] == {"current": 3, "limit": 0}
    assert stats["blkio_stats"]["io_service_bytes_recursive"] == [
        {"major": 8, "minor": 0, "op": "read", "value": 1048576},
        {"major": 8, "minor": 0, "op": "write", "value": 4096},
        {"major": 253, "minor": 1, "op": "read", "value": 0},
        {"major": 253, "minor": 1, "op": "write", "value": 512},
    ]
    assert stats["blkio_stats"]["io_serviced_recursive"] is None


def test_stats_with_limits_set(tmp_path: Path) -> None:
    path, proc = stats_tree(tmp_path)
    (path / "memory.max").write_text(f"{64 * MIB}\n")
    (path / "pids.max").write_text("50\n")
    stats = Cgroup(path, proc).stats(online_cpus=1)
    assert stats["memory_stats"]["limit"] == 64 * MIB
    assert stats["pids_stats"] == {"current": 3, "limit": 50}
    # A limit above the machine's memory reads as the machine's, as dockerd reports it.
    (path / "memory.max").write_text(f"{1 << 50}\n")
    assert Cgroup(path, proc).stats(1)["memory_stats"]["limit"] == 2048000 * 1024


def test_stats_without_controllers_are_empty_not_errors(tmp_path: Path) -> None:
    path = fake_cgroup(tmp_path / "c1")
    (path / "cgroup.threads").write_text("7\n8\n")
    (path / "cpu.stat").write_text("usage_usec 10\nuser_usec 6\nsystem_usec 4\n")
    stats = Cgroup(path, tmp_path / "noproc").stats(online_cpus=4)
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] == 10_000
    assert stats["cpu_stats"]["throttling_data"] == {
        "periods": 0,
        "throttled_periods": 0,
        "throttled_time": 0,
    }
    assert stats["cpu_stats"]["system_cpu_usage"] == 0
    assert stats["memory_stats"] == {}
    assert stats["pids_stats"] == {"current": 2, "limit": 0}  # counted from cgroup.threads
    assert stats["blkio_stats"]["io_service_bytes_recursive"] == []
    # Even a cgroup that vanished gives zeros.
    gone = Cgroup(tmp_path / "gone").stats(1)
    assert gone["cpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert gone["pids_stats"] == {"current": 0, "limit": 0}


def test_parsers_skip_garbage() -> None:
    assert parse_io_stat("garbage\n8:x rbytes=1\n1:2 rbytes=x wbytes=5\n") == [
        {"major": 1, "minor": 2, "op": "read", "value": 0},
        {"major": 1, "minor": 2, "op": "write", "value": 5},
    ]
    assert system_cpu_usage("intr 1 2 3\n") == 0
    assert cgroups.parse_keyed("a 1\nb x\nc\n d 2 3\n") == {"a": 1}
