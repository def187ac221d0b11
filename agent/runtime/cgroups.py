"""cgroup v2 for containers: one cgroup per container, limits from docker's HostConfig, stats.

Layout. Every container gets ``<mount>/<parent>/<container id>`` (in the VM
``/sys/fs/cgroup/vmctl/<id>``). The agent itself never lives in ``<parent>``: cgroup v2's
"no internal processes" rule forbids a non-root cgroup that holds processes from enabling
controllers for its children, so ``<parent>`` only ever holds child cgroups and its
``cgroup.subtree_control`` can hand memory, cpu, io, pids and cpuset down to every container.
Enabling them means writing ``+memory`` and friends to each level's ``cgroup.subtree_control``
from the mount root down to ``<parent>``; only what each level is offered (its
``cgroup.controllers``) can be enabled.

Why one plain directory per container, without a runtime manager or systemd: the guest has no
systemd, the agent forks container processes itself, and a cgroup is all it needs to track,
freeze (``docker pause``), kill and account a container. Those are core cgroup v2 features
(``cgroup.procs``, ``cgroup.freeze``, ``cgroup.kill``, ``cpu.stat``) that work with no
controller at all, so a container that asks for no limit still gets a cgroup, even on a host
whose v2 hierarchy has no controllers (a hybrid v1/v2 host). A limit whose controller is
missing is refused with a clear error rather than silently dropped, so ``--memory`` never
looks applied when it is not. The cgroup directory outlives the agent, so a restarted agent
re-adopts a running container with ``Hierarchy.open``.

Values follow what docker 28 with runc writes on cgroup v2: ``memory.swap.max`` is
MemorySwap minus Memory (docker's MemorySwap counts memory plus swap), CpuShares map linearly
to ``cpu.weight``, BlkioWeight to ``io.bfq.weight`` or converted to ``io.weight``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_MEMORY = 6 * MIB  # dockerd's linuxMinMemory
MIN_CPU_SHARES = 2
MAX_CPU_SHARES = 262144
DEFAULT_CPU_PERIOD = 100_000  # µs; what docker uses to turn NanoCpus into a quota
MIN_CPU_QUOTA = 1000  # µs; the kernel refuses a smaller cfs quota
MIN_CPU_PERIOD = 1000
MAX_CPU_PERIOD = 1_000_000
NANO = 1_000_000_000

# The controllers container limits need, in the order they are enabled.
CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")

# For messages: the docker run flag behind each cgroup file.
FLAG_OF_FILE = {
    "memory.max": "--memory",
    "memory.swap.max": "--memory-swap",
    "memory.low": "--memory-reservation",
    "cpu.max": "--cpus/--cpu-quota/--cpu-period",
    "cpu.weight": "--cpu-shares",
    "cpuset.cpus": "--cpuset-cpus",
    "cpuset.mems": "--cpuset-mems",
    "pids.max": "--pids-limit",
    "io.weight": "--blkio-weight",
}

_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


class CgroupError(AgentError):
    """A cgroup could not be set up or changed; the message says what to do about it.

    ``status`` is 400 for a request the host cannot satisfy (bad or unsupported limit) and
    500 for a failure of the host's cgroup file system.
    """

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(status, message)


def find_unified_mount(mountinfo: str | None = None) -> Path | None:
    """The cgroup2 mount point from /proc/self/mountinfo text, or None when there is none.

    A mount of the hierarchy's root is preferred over a bind mount of a subtree.
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    whole: list[str] = []
    partial: list[str] = []
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields, fs = before.split(), after.split()
        if not sep or len(fields) < 5 or not fs or fs[0] != "cgroup2":
            continue
        (whole if fields[3] == "/" else partial).append(_unescape(fields[4]))
    found = whole or partial
    return Path(found[0]) if found else None


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (\\040 for a space and so on)."""
    raw = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), os.fsencode(field))
    return os.fsdecode(raw)


def cpu_weight(shares: int) -> int:
    """cpu.weight for docker's CpuShares, with the linear formula docker 28 (runc) uses."""
    shares = min(max(shares, MIN_CPU_SHARES), MAX_CPU_SHARES)
    return 1 + ((shares - 2) * 9999) // 262142


def io_weight(blkio_weight: int) -> int:
    """io.weight (1-10000) for docker's BlkioWeight (10-1000)."""
    return 1 + ((blkio_weight - 10) * 9999) // 990


def _cpu_list(spec: str) -> set[int]:
    """The numbers in a list like ``0-3,5``; ValueError for bad syntax or a reversed range."""
    if not _CPU_LIST.match(spec):
        raise ValueError(spec)
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        if int(high or low) < int(low):
            raise ValueError(spec)
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _online_cpus() -> str | None:
    try:
        return Path("/sys/devices/system/cpu/online").read_text().strip()
    except OSError:
        return None


def _as_int(host_config: dict[str, Any], key: str) -> int:
    value = host_config.get(key)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupError(f"invalid HostConfig.{key} {value!r}: expected an integer", 400)
    return value


def _as_str(host_config: dict[str, Any], key: str) -> str:
    value = host_config.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CgroupError(f"invalid HostConfig.{key} {value!r}: expected a string", 400)
    return value.strip()


@dataclass
class Resources:
    """A container's limits in docker's units (HostConfig); 0 means unset or unlimited."""

    memory: int = 0  # bytes
    memory_swap: int = 0  # memory + swap in bytes; -1 unlimited swap, 0 unset
    memory_reservation: int = 0  # bytes, a soft floor (memory.low)
    nano_cpus: int = 0  # CPUs * 1e9
    cpu_shares: int = 0  # relative weight, 2-262144 (1024 is the default share)
    cpu_period: int = 0  # µs
    cpu_quota: int = 0  # µs per period; -1 unlimited
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    pids_limit: int | None = None  # None: unset (keep); 0 or -1: unlimited
    blkio_weight: int = 0  # 10-1000

    @classmethod
    def from_host_config(cls, host_config: dict[str, Any], *, update: bool = False) -> Resources:
        """Read and validate docker's HostConfig resource keys as dockerd does.

        For a create (``update=False``) docker's defaults are applied too: an unset
        MemorySwap with a memory limit becomes twice the memory (as much swap as memory).
        """
        pids = host_config.get("PidsLimit")
        if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int)):
            raise CgroupError(f"invalid HostConfig.PidsLimit {pids!r}: expected an integer", 400)
        res = cls(
            memory=_as_int(host_config, "Memory"),
            memory_swap=_as_int(host_config, "MemorySwap"),
            memory_reservation=_as_int(host_config, "MemoryReservation"),
            nano_cpus=_as_int(host_config, "NanoCpus"),
            cpu_shares=_as_int(host_config, "CpuShares"),
            cpu_period=_as_int(host_config, "CpuPeriod"),
            cpu_quota=_as_int(host_config, "CpuQuota"),
            cpuset_cpus=_as_str(host_config, "CpusetCpus"),
            cpuset_mems=_as_str(host_config, "CpusetMems"),
            pids_limit=pids,
            blkio_weight=_as_int(host_config, "BlkioWeight"),
        )
        res.validate(update=update)
        if res.cpu_shares:
            res.cpu_shares = min(max(res.cpu_shares, MIN_CPU_SHARES), MAX_CPU_SHARES)
        if not update and res.memory > 0 and res.memory_swap == 0:
            res.memory_swap = 2 * res.memory
        return res

    def validate(self, *, update: bool = False) -> None:
        """Raise CgroupError (400) with dockerd's message for a combination it refuses."""
        problem = self._problem(update)
        if problem:
            raise CgroupError(problem, 400)

    def _problem(self, update: bool) -> str | None:
        # Same checks and wording as dockerd's verifyPlatformContainerResources.
        if self.memory != 0 and self.memory < MIN_MEMORY:
            return "Minimum memory limit allowed is 6MB"
        if self.memory > 0 and self.memory_swap > 0 and self.memory_swap < self.memory:
            return "Minimum memoryswap limit should be larger than memory limit, see usage"
        if self.memory == 0 and self.memory_swap > 0 and not update:
            return "You should always set the Memory limit when using Memoryswap limit, see usage"
        if 0 < self.memory_reservation < MIN_MEMORY:
            return "Minimum memory reservation allowed is 6MB"
        if 0 < self.memory < self.memory_reservation:
            return "Minimum memory limit can not be less than memory reservation limit, see usage"
        if self.nano_cpus > 0 and self.cpu_period > 0:
            return "Conflicting options: Nano CPUs and CPU Period cannot both be set"
        if self.nano_cpus > 0 and self.cpu_quota > 0:
            return "Conflicting options: Nano CPUs and CPU Quota cannot both be set"
        ncpu = len(os.sched_getaffinity(0))
        # Below 0.01 CPU the quota would fall under the kernel's 1 ms minimum.
        if self.nano_cpus != 0 and not NANO // 100 <= self.nano_cpus <= ncpu * NANO:
            return (
                f"range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
            )
        if self.cpu_period != 0 and not MIN_CPU_PERIOD <= self.cpu_period <= MAX_CPU_PERIOD:
            return (
                "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s "
                "(i.e. 1000000)"
            )
        if 0 < self.cpu_quota < MIN_CPU_QUOTA:
            return "CPU cfs quota can not be less than 1ms (i.e. 1000)"
        for value, what in ((self.cpuset_cpus, "cpus"), (self.cpuset_mems, "mems")):
            try:
                if value:
                    _cpu_list(value)
            except ValueError:
                return (
                    f"Invalid value {value} for cpuset {what}: invalid format, expected a list "
                    "like 0-3,5"
                )
        online = _online_cpus() if self.cpuset_cpus else None
        with contextlib.suppress(ValueError):
            if online and not _cpu_list(self.cpuset_cpus) <= _cpu_list(online):
                return (
                    f"Requested CPUs are not available - requested {self.cpuset_cpus}, "
                    f"available: {online}"
                )
        if self.blkio_weight > 0 and not 10 <= self.blkio_weight <= 1000:
            return "Range of blkio weight is from 10 to 1000"
        return None

    def requests(self) -> list[tuple[str, str]]:
        """(controller, docker flag) for every limit that is set."""
        wanted = [
            ("memory", "--memory", self.memory > 0),
            ("memory", "--memory-swap", self.memory_swap > 0),
            ("memory", "--memory-reservation", self.memory_reservation > 0),
            ("cpu", "--cpus", self.nano_cpus > 0),
            ("cpu", "--cpu-shares", self.cpu_shares > 0),
            ("cpu", "--cpu-period", self.cpu_period > 0),
            ("cpu", "--cpu-quota", self.cpu_quota > 0),
            ("cpuset", "--cpuset-cpus", bool(self.cpuset_cpus)),
            ("cpuset", "--cpuset-mems", bool(self.cpuset_mems)),
            ("pids", "--pids-limit", (self.pids_limit or 0) > 0),
            ("io", "--blkio-weight", self.blkio_weight > 0),
        ]
        return [(controller, flag) for controller, flag, on in wanted if on]

    def controllers_needed(self) -> set[str]:
        """The cgroup v2 controllers the set limits need."""
        return {controller for controller, _ in self.requests()}

    def cpu_max(self) -> str | None:
        """The cpu.max line, or None to leave it alone."""
        if self.nano_cpus > 0:
            quota = self.nano_cpus * DEFAULT_CPU_PERIOD // NANO
            return f"{quota} {DEFAULT_CPU_PERIOD}"
        if self.cpu_quota == 0 and self.cpu_period == 0:
            return None
        value = str(self.cpu_quota) if self.cpu_quota > 0 else "max"
        # With only a quota, the kernel keeps the current period.
        return f"{value} {self.cpu_period}" if self.cpu_period > 0 else value

    def swap_max(self) -> str | None:
        """The memory.swap.max value (swap only, unlike docker's MemorySwap), or None."""
        if self.memory_swap == 0:
            return None
        if self.memory_swap < 0:
            return "max"
        if self.memory <= 0:
            raise CgroupError(
                "a swap limit (--memory-swap) needs a memory limit: set --memory too", 400
            )
        return str(self.memory_swap - self.memory)

    def files(self) -> list[tuple[str, str, bool]]:
        """(cgroup file, value, required) to write; a required file must exist.

        Values that mean "unlimited" are written only where the controller exists, so that
        ``docker update --pids-limit -1`` lifts a limit, yet they never demand a controller.
        """
        out: list[tuple[str, str, bool]] = [
            ("memory.max", str(self.memory) if self.memory > 0 else "max", self.memory > 0),
            ("memory.low", str(max(self.memory_reservation, 0)), self.memory_reservation > 0),
        ]
        swap = self.swap_max()
        if swap is not None:
            # Optional like dockerd, which limits memory without swap when the kernel does
            # not account swap (no memory.swap.max); the memory controller is still needed.
            out.append(("memory.swap.max", swap, False))
        cpu_max = self.cpu_max()
        if cpu_max is not None:
            out.append(("cpu.max", cpu_max, not cpu_max.startswith("max")))
        if self.cpu_shares > 0:
            out.append(("cpu.weight", str(cpu_weight(self.cpu_shares)), True))
        if self.cpuset_cpus:
            out.append(("cpuset.cpus", self.cpuset_cpus, True))
        if self.cpuset_mems:
            out.append(("cpuset.mems", self.cpuset_mems, True))
        if self.pids_limit is not None:
            limited = self.pids_limit > 0
            out.append(("pids.max", str(self.pids_limit) if limited else "max", limited))
        if self.blkio_weight > 0:
            out.append(("io.weight", str(io_weight(self.blkio_weight)), True))
        return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    # One write(2) of the whole value: cgroupfs parses each write on its own.
    with open(path, "w") as f:
        f.write(value)


def parse_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (cpu.stat, memory.stat, memory.events, cgroup.events) as ints."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_io_stat(text: str | None) -> list[dict[str, Any]]:
    """io.stat as docker's io_service_bytes_recursive: a read and a write entry per device."""
    entries: list[dict[str, Any]] = []
    for line in (text or "").splitlines():
        device, *pairs = line.split()
        major, sep, minor = device.partition(":")
        if not sep or not major.isdigit() or not minor.isdigit():
            continue
        values = {key: value for key, _, value in (pair.partition("=") for pair in pairs)}
        for op, key in (("read", "rbytes"), ("write", "wbytes")):
            value = int(values[key]) if values.get(key, "").isdigit() else 0
            entries.append({"major": int(major), "minor": int(minor), "op": op, "value": value})
    return entries


def system_cpu_usage(proc_stat: str | None) -> int:
    """Host CPU time in ns from /proc/stat, summed the way dockerd does (user..softirq)."""
    for line in (proc_stat or "").splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu" and len(parts) >= 8:
            ticks = sum(int(p) for p in parts[1:8])
            return ticks * NANO // os.sysconf("SC_CLK_TCK")
    return 0


def host_memory_total(meminfo: str | None) -> int:
    """MemTotal from /proc/meminfo, in bytes (0 when unknown)."""
    for line in (meminfo or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    """Poll ``done`` with a growing sleep until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def _check_name(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise CgroupError(f"invalid {what} {name!r} for a cgroup name", 400)


class Cgroup:
    """One container's cgroup directory."""

    def __init__(self, path: Path, proc: Path = Path("/proc")) -> None:
        self.path = Path(path)
        self._proc = proc  # where /proc/stat and /proc/meminfo are read from (tests)

    def __repr__(self) -> str:
        return f"Cgroup({str(self.path)!r})"

    def _events(self) -> dict[str, int]:
        return parse_keyed(_read(self.path / "cgroup.events"))

    def add_process(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup."""
        try:
            _write(self.path / "cgroup.procs", str(pid))
        except ProcessLookupError:
            raise CgroupError(
                f"cannot move process {pid} into {self.path}: it has exited"
            ) from None
        except OSError as e:
            raise CgroupError(
                f"cannot move process {pid} into cgroup {self.path}: {e.strerror}; "
                "the agent must run as root and the cgroup must exist"
            ) from None

    def apply(self, resources: Resources) -> None:
        """Write the limits (at create, and for ``docker update`` with the merged config)."""
        for name, value, required in resources.files():
            target = self.path / name
            if name == "io.weight" and (self.path / "io.bfq.weight").exists():
                # BFQ takes docker's own 10-1000 range unchanged.
                target, value = self.path / "io.bfq.weight", str(resources.blkio_weight)
            if not target.exists():
                if required:
                    controller = name.split(".")[0]
                    raise CgroupError(
                        f"cannot set {FLAG_OF_FILE.get(name, name)}: cgroup {self.path} has no "
                        f"{controller} controller (no {name}); run without it, or use a "
                        "VM/host with cgroup v2 controllers",
                        400,
                    )
                continue
            try:
                _write(target, value)
            except OSError as e:
                raise CgroupError(
                    f"cannot set {FLAG_OF_FILE.get(name, name)}: writing {value!r} to {target} "
                    f"failed: {e.strerror}; check the value",
                    400 if e.errno in (errno.EINVAL, errno.ERANGE, errno.EBUSY) else 500,
                ) from None

    def pids(self) -> list[int]:
        """The processes directly in this cgroup (not in child cgroups)."""
        return [int(p) for p in (_read(self.path / "cgroup.procs") or "").split()]

    def populated(self) -> bool:
        """True while any process is in this cgroup or below it."""
        return self._events().get("populated", 0) == 1

    def frozen(self) -> bool:
        return self._events().get("frozen", 0) == 1

    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every process (``docker pause``) and wait until the kernel says frozen."""
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        """Let the processes run again (``docker unpause``)."""
        self._set_frozen(False, timeout)

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        control = self.path / "cgroup.freeze"
        if not control.exists():
            raise CgroupError(
                f"cannot {'pause' if frozen else 'unpause'}: {control} is missing (the cgroup v2 "
                "freezer needs Linux 5.2 or later, and the cgroup must exist)",
                400,
            )
        try:
            _write(control, "1" if frozen else "0")
        except OSError as e:
            raise CgroupError(f"cannot write {control}: {e.strerror}") from None
        if not _wait(lambda: self.frozen() == frozen, timeout):
            state = "frozen" if frozen else "thawed"
            raise CgroupError(
                f"cgroup {self.path} was not {state} within {timeout:g} s (a process may be "
                "stuck in uninterruptible I/O); try again"
            )

    def _subtree(self) -> Iterator[Path]:
        """This cgroup and every cgroup below it, deepest first."""
        for top, _dirs, _files in os.walk(self.path, topdown=False):
            yield Path(top)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the cgroup and below it; return once it is empty."""
        control = self.path / "cgroup.kill"
        if control.exists():  # Linux 5.14+: one write, no race with forking processes
            with contextlib.suppress(FileNotFoundError):
                _write(control, "1")
            emptied = _wait(lambda: not self.populated(), timeout)
        else:
            emptied = _wait(self._kill_each, timeout)
        if not emptied and self.path.exists():
            raise CgroupError(
                f"processes {self.pids()} in cgroup {self.path} survived SIGKILL for "
                f"{timeout:g} s (stuck in uninterruptible I/O?); try again"
            )

    def _kill_each(self) -> bool:
        """One round of SIGKILL to every listed process; True when none was left."""
        found = False
        for cgroup in self._subtree():
            for pid in Cgroup(cgroup).pids():
                found = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return not found

    def oom_kill_count(self) -> int:
        """How many processes the OOM killer killed in this cgroup (memory.events)."""
        return parse_keyed(_read(self.path / "memory.events")).get("oom_kill", 0)

    def oom_killed(self) -> bool:
        return self.oom_kill_count() > 0

    def remove(self, timeout: float = 5.0) -> None:
        """Delete the cgroup (and any below it); kill what still runs there first."""
        deadline = time.monotonic() + timeout
        killed = False
        while True:
            try:
                for cgroup in self._subtree():
                    os.rmdir(cgroup)
                return
            except FileNotFoundError:
                if not self.path.exists():
                    return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise CgroupError(
                        f"cannot remove cgroup {self.path}: {e.strerror} (processes "
                        f"{self.pids()}); stop them and try again"
                    ) from None
                if not killed:  # exited processes leave at once: EBUSY means live ones
                    log.info("cgroup %s still has processes; killing them", self.path)
                    self.kill(max(deadline - time.monotonic(), 0.1))
                    killed = True
            time.sleep(0.01)

    def _task_count(self) -> int:
        # Without the pids controller: count threads, as pids.current would.
        return sum(
            len((_read(cgroup / "cgroup.threads") or "").split()) for cgroup in self._subtree()
        )

    def stats(self, online_cpus: int) -> dict[str, Any]:
        """Engine API stats sections (cpu, memory, pids, blkio) from this cgroup.

        The caller adds read/preread, precpu_stats, name, id and networks. Sections whose
        files are missing come back empty or zero.
        """
        cpu = parse_keyed(_read(self.path / "cpu.stat"))
        cpu_stats: dict[str, Any] = {
            "cpu_usage": {
                "total_usage": cpu.get("usage_usec", 0) * 1000,
                "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
                "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
            },
            "system_cpu_usage": system_cpu_usage(_read(self._proc / "stat")),
            "online_cpus": online_cpus,
            "throttling_data": {
                "periods": cpu.get("nr_periods", 0),
                "throttled_periods": cpu.get("nr_throttled", 0),
                "throttled_time": cpu.get("throttled_usec", 0) * 1000,
            },
        }
        memory_stats: dict[str, Any] = {}
        current = _read(self.path / "memory.current")
        if current is not None and current.strip().isdigit():
            host_total = host_memory_total(_read(self._proc / "meminfo"))
            limit_text = (_read(self.path / "memory.max") or "max").strip()
            limit = int(limit_text) if limit_text.isdigit() else host_total
            if host_total and limit > host_total:  # dockerd caps the limit at the machine's
                limit = host_total
            memory_stats = {
                "usage": int(current),
                "limit": limit,
                "stats": parse_keyed(_read(self.path / "memory.stat")),
            }
        pids_current = _read(self.path / "pids.current")
        if pids_current is not None and pids_current.strip().isdigit():
            pids_max = (_read(self.path / "pids.max") or "max").strip()
            pids_stats = {
                "current": int(pids_current),
                "limit": int(pids_max) if pids_max.isdigit() else 0,  # 0: no limit
            }
        else:
            pids_stats = {"current": self._task_count(), "limit": 0}
        blkio_stats: dict[str, Any] = {
            "io_service_bytes_recursive": parse_io_stat(_read(self.path / "io.stat")),
        }
        for key in (
            "io_serviced_recursive",
            "io_queue_recursive",
            "io_service_time_recursive",
            "io_wait_time_recursive",
            "io_merged_recursive",
            "io_time_recursive",
            "sectors_recursive",
        ):
            blkio_stats[key] = None  # cgroup v1 only; docker sends null on v2
        return {
            "cpu_stats": cpu_stats,
            "memory_stats": memory_stats,
            "pids_stats": pids_stats,
            "blkio_stats": blkio_stats,
        }


class Hierarchy:
    """The parent cgroup ``<root>/<parent>`` under which each container gets its own."""

    def __init__(self, root: Path, parent: str = "vmctl", proc: Path = Path("/proc")) -> None:
        parts = Path(parent).parts
        if not parts or Path(parent).is_absolute():
            raise CgroupError(f"invalid cgroup parent {parent!r}: use a relative path", 400)
        for part in parts:
            _check_name(part, "cgroup parent component")
        self.root = Path(root)
        self.parent = parent
        self.path = self.root / parent
        self._proc = proc

    def __repr__(self) -> str:
        return f"Hierarchy({str(self.root)!r}, {self.parent!r})"

    def available(self) -> set[str]:
        """Controllers container cgroups can use, enabling what each level can delegate.

        Creates the parent cgroup levels as needed. A controller a level is not offered, or
        cannot enable (a non-root level holding processes), is simply not available.
        """
        levels = [self.root]
        for part in Path(self.parent).parts:
            levels.append(levels[-1] / part)
        for level in levels:
            if level != self.root:
                try:
                    level.mkdir(exist_ok=True)
                except OSError as e:
                    raise CgroupError(
                        f"cannot create cgroup {level}: {e.strerror}; the agent needs root and "
                        f"a writable cgroup v2 mount at {self.root}"
                    ) from None
            offered = set((_read(level / "cgroup.controllers") or "").split())
            enabled = set((_read(level / "cgroup.subtree_control") or "").split())
            for controller in CONTROLLERS:
                if controller in offered and controller not in enabled:
                    try:
                        _write(level / "cgroup.subtree_control", f"+{controller}")
                    except OSError as e:
                        log.warning("cannot enable %s in %s: %s", controller, level, e.strerror)
        return set((_read(self.path / "cgroup.subtree_control") or "").split())

    def create(self, container_id: str, resources: Resources) -> Cgroup:
        """The container's cgroup with ``resources`` applied; refuses limits it cannot honour."""
        _check_name(container_id, "container id")
        available = self.available()
        problems = []
        for controller in sorted(resources.controllers_needed() - available):
            flags = [flag for c, flag in resources.requests() if c == controller]
            problems.append(
                f"this host's cgroup v2 hierarchy has no {controller} controller (under "
                f"{self.path}); run without {', '.join(flags)}, or use a VM/host with cgroup v2 "
                "controllers"
            )
        if problems:
            raise CgroupError("; ".join(problems), 400)
        path = self.path / container_id
        try:
            path.mkdir()
        except FileExistsError:
            running = Cgroup(path).pids()
            if running:
                raise CgroupError(
                    f"cgroup {path} already exists with processes {running}; remove the "
                    f"container {container_id} first",
                    409,
                ) from None
            log.info("reusing the empty cgroup %s left by an earlier run", path)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup {path}: {e.strerror}") from None
        cgroup = Cgroup(path, self._proc)
        try:
            cgroup.apply(resources)
        except BaseException:
            with contextlib.suppress(CgroupError):
                cgroup.remove()
            raise
        return cgroup

    def open(self, container_id: str) -> Cgroup | None:
        """The existing cgroup of a container (after an agent restart), or None."""
        _check_name(container_id, "container id")
        path = self.path / container_id
        return Cgroup(path, self._proc) if path.is_dir() else None

    def containers(self) -> list[str]:
        """Ids of the containers that have a cgroup here."""
        try:
            return sorted(entry.name for entry in os.scandir(self.path) if entry.is_dir())
        except OSError:
            return []
