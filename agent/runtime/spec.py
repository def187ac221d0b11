"""What the container init needs to know, resolved before the fork.

Everything here is plain data computed in the daemon (names looked up, paths resolved,
seccomp compiled), so the forked child only performs system calls. The defaults are
Docker's: moby's oci/defaults.go for mounts, masked and read-only paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.runtime import linux

# Docker's default masked paths (hidden behind /dev/null or an empty read-only tmpfs)
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# The device nodes every container gets: (name, major, minor, mode)
DEVICES: tuple[tuple[str, int, int, int], ...] = (
    ("null", 1, 3, 0o666),
    ("zero", 1, 5, 0o666),
    ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666),
    ("tty", 5, 0, 0o666),
)
DEV_LINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
)

DEFAULT_SHM_SIZE = 64 * 1024 * 1024

# Namespace kinds: the /proc/<pid>/ns/<name> file and the clone flag
NAMESPACES: dict[str, int] = {
    "mnt": linux.CLONE_NEWNS,
    "uts": linux.CLONE_NEWUTS,
    "ipc": linux.CLONE_NEWIPC,
    "net": linux.CLONE_NEWNET,
    "pid": linux.CLONE_NEWPID,
    "cgroup": linux.CLONE_NEWCGROUP,
}


@dataclass(frozen=True)
class Mount:
    """One mount made inside the container's root, in order."""

    target: str  # absolute path inside the container
    source: str  # host path for binds, else the filesystem's source name
    fstype: str | None = None  # None: a bind mount
    flags: int = 0
    data: str | None = None
    readonly: bool = False
    propagation: int = 0  # MS_PRIVATE / MS_SLAVE / MS_SHARED, with MS_REC when recursive
    recursive: bool = True  # binds: MS_REC, as Docker does unless bind-recursive=disabled


@dataclass
class Process:
    argv: list[str]
    env: list[str]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    tty: bool = False
    stdin: bool = False  # keep stdin open (docker run -i)
    capabilities: set[str] = field(default_factory=set)
    no_new_privileges: bool = False
    seccomp: bytes | None = None  # a compiled BPF program; None: unconfined
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)  # (resource, soft, hard)
    umask: int = 0o022
    reaper: bool = False  # --init: a minimal init runs as PID 1 and the command as its child
    console_size: tuple[int, int] | None = None  # (rows, cols) of a new terminal


@dataclass
class ContainerSpec:
    id: str
    rootfs: str  # host path of the mounted root filesystem (overlay "merged")
    process: Process
    hostname: str = ""
    domainname: str = ""
    # Namespaces to create, and those to join: kind -> path of an ns file
    new_namespaces: set[str] = field(default_factory=lambda: {"mnt", "uts", "ipc", "net", "pid"})
    join_namespaces: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)  # user mounts, after the defaults
    readonly_rootfs: bool = False
    privileged: bool = False
    shm_size: int = DEFAULT_SHM_SIZE
    shm_source: str | None = None  # --ipc container:/shareable: bind this host path instead
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS

    def clone_flags(self) -> int:
        flags = 0
        for kind in self.new_namespaces - {"pid"}:
            flags |= NAMESPACES[kind]
        return flags
