"""A container's processes, read from /proc: `docker top` and the stats that need them.

Which processes: those in the container's cgroup (and any cgroup below it). Without a
cgroup (a host with no cgroup v2), those in the init's pid namespace, or with the host's
pid namespace the init and its descendants.

`docker top` without ps_args prints `ps -ef`'s columns; the agent computes them itself, as
the guest's busybox `ps` has no `-ef`. Other ps_args run the host's `ps` as dockerd does
and keep the lines whose PID is the container's.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError, BadRequest

PS_EF_TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
PS_TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    tty: int  # tty_nr
    cpu_ticks: int  # utime + stime
    start_ticks: int  # since boot
    rss_pages: int


def read_stat(pid: int, proc: str = "/proc") -> ProcessInfo | None:
    try:
        data = Path(f"{proc}/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()  # the name may hold spaces and ")"
    return ProcessInfo(
        pid=pid,
        ppid=int(rest[1]),
        tty=int(rest[4]),
        cpu_ticks=int(rest[11]) + int(rest[12]),
        start_ticks=int(rest[19]),
        rss_pages=int(rest[21]),
    )


def cgroup_pids(cgroup_dir: str) -> list[int]:
    pids: set[int] = set()
    for directory, _dirs, _files in os.walk(cgroup_dir):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
    return sorted(pids)


def _namespace(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def namespace_pids(init_pid: int) -> list[int]:
    """Without a cgroup: the processes that share the init's pid namespace, or (when that
    is the host's) the init and its descendants."""
    mine = _namespace(init_pid, "pid")
    if mine is None:
        return []
    shared = mine == _namespace(os.getpid(), "pid")
    children: dict[int, list[int]] = {}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if not shared:
            if _namespace(pid, "pid") == mine:
                found.append(pid)
            continue
        info = read_stat(pid)
        if info is not None:
            children.setdefault(info.ppid, []).append(pid)
    if not shared:
        return sorted(found)
    tree, todo = [], [init_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(tree)


def container_pids(cgroup_dir: str | None, init_pid: int) -> list[int]:
    """The container's processes, without the daemon's `docker exec` helpers (children of
    the daemon that wait in the container's cgroup for the command they started)."""
    if cgroup_dir is not None and os.path.isdir(cgroup_dir):
        pids = cgroup_pids(cgroup_dir)
    else:
        pids = namespace_pids(init_pid) if init_pid else []
    daemon = os.getpid()
    return [pid for pid in pids if (info := read_stat(pid)) is not None and info.ppid != daemon]


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        info = read_stat(pid)
        if info is not None:
            total += info.rss_pages * PAGE_SIZE
    return total


def cpu_nanoseconds(pids: list[int]) -> int:
    """CPU time of the live processes (without a cgroup's cpu.stat to ask)."""
    ticks = sum(info.cpu_ticks for pid in pids if (info := read_stat(pid)) is not None)
    return ticks * 1_000_000_000 // CLOCK_TICKS


# --- docker top ---------------------------------------------------------------------------


def _uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _user(pid: int) -> str:
    uid = None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[2])  # the effective uid, as ps shows
    if uid is None:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _tty(tty_nr: int) -> str:
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{minor + (major - 136) * 256}"
    if major == 4:
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    return "?"


def _duration(seconds: int) -> str:
    days, seconds = divmod(seconds, 86400)
    text = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{days}-{text}" if days else text


def _start_time(started: float, now: float) -> str:
    local = time.localtime(started)
    if now - started < 86400:
        return time.strftime("%H:%M", local)
    if time.localtime(now).tm_year == local.tm_year:
        return time.strftime("%b%d", local)
    return time.strftime("%Y", local)


def _command(pid: int, fallback: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        raw = b""
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if words:
        return " ".join(words)
    try:
        return "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
    except OSError:
        return fallback


def ps_ef(pids: list[int]) -> dict[str, object]:
    """`ps -ef` of these processes, as docker top's Titles and Processes."""
    now = time.time()
    uptime = _uptime()
    boot = now - uptime
    rows = []
    for pid in pids:
        info = read_stat(pid)
        if info is None:
            continue  # it exited meanwhile
        started = info.start_ticks / CLOCK_TICKS
        elapsed = max(uptime - started, 1e-9)
        cpu_seconds = info.cpu_ticks / CLOCK_TICKS
        rows.append(
            [
                _user(pid),
                str(pid),
                str(info.ppid),
                str(min(int(cpu_seconds * 100 / elapsed), 99)),
                _start_time(boot + started, now),
                _tty(info.tty),
                _duration(int(cpu_seconds)),
                _command(pid, "?"),
            ]
        )
    return {"Titles": list(PS_EF_TITLES), "Processes": rows}


def run_ps(ps_args: str, pids: list[int]) -> dict[str, object]:
    """The host's `ps` with the client's arguments, filtered to these processes."""
    try:
        args = shlex.split(ps_args)
    except ValueError as error:
        raise BadRequest(f"invalid ps_args {ps_args!r}: {error}") from None
    if "\0" in ps_args:
        raise BadRequest("invalid ps_args: it holds a NUL byte")
    program = shutil.which("ps")
    if program is None:
        raise AgentError(500, "ps is not installed here: use docker top without ps arguments")
    try:
        done = subprocess.run(
            [program, *args], capture_output=True, timeout=PS_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise AgentError(500, f"ps {ps_args} did not finish in {PS_TIMEOUT:g} s") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise BadRequest(f"ps {ps_args} failed: {message[0] if message else done.returncode}")
    return parse_ps(done.stdout.decode(errors="replace"), pids)


def parse_ps(output: str, pids: list[int]) -> dict[str, object]:
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise BadRequest("ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise BadRequest("Couldn't find PID field in ps output")
    column = titles.index("PID")
    wanted = set(pids)
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)  # the last column (the command) keeps spaces
        if len(fields) <= column or not fields[column].isdigit():
            continue
        if int(fields[column]) in wanted:
            rows.append(fields + [""] * (len(titles) - len(fields)))
    return {"Titles": titles, "Processes": rows}
