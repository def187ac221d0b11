"""`docker stats`: the JSON dockerd sends, from the container's cgroup and /proc.

The CLI computes from these fields: CPU % from ``cpu_stats``/``precpu_stats``
(``cpu_usage.total_usage``, ``system_cpu_usage``, ``online_cpus``), memory from
``memory_stats`` (``usage`` minus ``stats.inactive_file``, over ``limit``), block I/O from
``blkio_stats.io_service_bytes_recursive``, network from ``networks`` and PIDs from
``pids_stats.current``. Every field is always present: a host whose cgroup v2 hierarchy
lacks the memory or io controller (a hybrid v1/v2 host) gets the memory used by the
container's processes (their resident set) and no block I/O entries, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.containers import processes
from agent.containers.model import ZERO_TIME, Container
from agent.runtime import cgroups
from agent.runtime.logfile import timestamp

NETWORK_FIELDS = (
    "rx_bytes",
    "rx_packets",
    "rx_errors",
    "rx_dropped",
    "tx_bytes",
    "tx_packets",
    "tx_errors",
    "tx_dropped",
)


@dataclass
class Sample:
    read: str
    sections: dict[str, Any]  # cpu_stats, memory_stats, pids_stats, blkio_stats
    networks: dict[str, dict[str, int]] | None


def online_cpus() -> int:
    return int(os.sysconf("SC_NPROCESSORS_ONLN") or 1)


def _host_memory() -> int:
    try:
        return cgroups.host_memory_total(Path("/proc/meminfo").read_text())
    except OSError:
        return 0


def network_counters(pid: int) -> dict[str, dict[str, int]]:
    """Interface counters in the container's network namespace (/proc/<pid>/net/dev),
    loopback left out, as docker reports them."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return {}
    out: dict[str, dict[str, int]] = {}
    for line in lines:
        name, _, numbers = line.partition(":")
        values = numbers.split()
        if name.strip() in ("", "lo") or len(values) < 16:
            continue
        receive, transmit = values[0:4], values[8:12]  # bytes packets errs drop
        out[name.strip()] = dict(zip(NETWORK_FIELDS, map(int, receive + transmit), strict=True))
    return out


def _empty_cpu() -> dict[str, Any]:
    return {
        "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "system_cpu_usage": 0,
        "online_cpus": 0,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def sample(container: Container, cgroup: cgroups.Cgroup | None, own_network: bool) -> Sample:
    """One reading of a running container."""
    pid = container.state.pid
    cgroup_dir = str(cgroup.path) if cgroup is not None else None
    pids = processes.container_pids(cgroup_dir, pid)
    if cgroup is not None:
        sections = cgroup.stats(online_cpus())
    else:
        cpu = _empty_cpu()
        cpu["cpu_usage"]["total_usage"] = processes.cpu_nanoseconds(pids)
        cpu["system_cpu_usage"] = cgroups.system_cpu_usage(_read("/proc/stat"))
        cpu["online_cpus"] = online_cpus()
        sections = {
            "cpu_stats": cpu,
            "memory_stats": {},
            "pids_stats": {"current": len(pids), "limit": 0},
            "blkio_stats": {"io_service_bytes_recursive": []},
        }
    if not sections["memory_stats"]:
        # no memory controller: what the processes hold resident, against the limit asked
        # for or the machine's memory
        limit = int(container.host_config.get("Memory") or 0) or _host_memory()
        sections["memory_stats"] = {
            "usage": processes.rss_bytes(pids),
            "limit": limit,
            "stats": {"inactive_file": 0},
        }
    sections["memory_stats"].setdefault("stats", {}).setdefault("inactive_file", 0)
    networks = network_counters(pid) if own_network else None
    return Sample(timestamp(), sections, networks)


def document(
    container: Container, current: Sample | None, previous: Sample | None
) -> dict[str, Any]:
    """The stats JSON: ``current`` with ``previous`` as the "pre" fields; every field is
    there, zero without a reading (a stopped container)."""
    empty_cpu = _empty_cpu()
    doc: dict[str, Any] = {
        "read": current.read if current else ZERO_TIME,
        "preread": previous.read if previous else ZERO_TIME,
        "pids_stats": {"current": 0, "limit": 0},
        "blkio_stats": {"io_service_bytes_recursive": []},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": empty_cpu,
        "precpu_stats": previous.sections["cpu_stats"] if previous else _empty_cpu(),
        "memory_stats": {"usage": 0, "limit": 0, "stats": {"inactive_file": 0}},
        "name": "/" + container.name,
        "id": container.id,
    }
    if current is not None:
        doc.update(current.sections)
        if current.networks is not None:
            doc["networks"] = current.networks
    return doc


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None
