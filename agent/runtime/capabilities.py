"""Linux capabilities: Docker's default set, --cap-add/--cap-drop, and applying them.

A container's process gets one set used as its bounding, permitted and effective sets
(inheritable and ambient stay empty, as Docker 23+ does). A process that runs as a non-root
user keeps the bounding set but starts with no permitted or effective capabilities, so
`--user 1000` cannot chown or bind low ports unless a setuid/file-capability binary grants it.
"""

from __future__ import annotations

import contextlib
import ctypes

from agent.runtime import linux

# Number of every capability the kernel headers (6.1) define.
CAPABILITIES: dict[str, int] = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "MKNOD": 27,
    "LEASE": 28,
    "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}

# What Docker grants by default (moby oci/caps/defaults.go).
DEFAULT: frozenset[str] = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)


class CapabilityError(ValueError):
    """An unknown capability name in --cap-add/--cap-drop."""


def _last_cap() -> int:
    """The highest capability the running kernel knows (it may be newer than our table)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


LAST_CAP = _last_cap()


def normalize(name: str) -> str:
    """ "cap_net_admin", "NET_ADMIN" and "CAP_NET_ADMIN" all mean NET_ADMIN; "ALL" stays."""
    upper = name.strip().upper()
    upper = upper.removeprefix("CAP_")
    if upper != "ALL" and upper not in CAPABILITIES:
        raise CapabilityError(f"unknown capability: {name!r}")
    return upper


def resolve(cap_add: list[str] | None, cap_drop: list[str] | None, privileged: bool) -> set[str]:
    """The container's capability set, with Docker's rules: drop applies before add, and
    "ALL" in either list means every capability."""
    if privileged:
        return set(CAPABILITIES)
    adds = {normalize(c) for c in cap_add or []}
    drops = {normalize(c) for c in cap_drop or []}
    caps = set(DEFAULT)
    if "ALL" in drops:
        caps = set()
    caps -= drops
    if "ALL" in adds:
        caps = set(CAPABILITIES)
    caps |= adds - {"ALL"}
    return caps


def mask(caps: set[str]) -> int:
    value = 0
    for name in caps:
        value |= 1 << CAPABILITIES[name]
    return value


def as_list(caps: set[str]) -> list[str]:
    """Docker's spelling for inspect output (CAP_ prefix), in capability number order."""
    return ["CAP_" + name for name in sorted(caps, key=CAPABILITIES.__getitem__)]


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class Applier:
    """Prepared in the daemon, used in the forked child between fork and exec.

    ``bound()`` trims the bounding set while the process is still fully privileged;
    ``set_sets()`` runs after the user switch (PR_SET_KEEPCAPS keeps the permitted set across
    setuid, and the explicit capset makes the result exact).
    """

    def __init__(self, caps: set[str], as_root: bool) -> None:
        # Only what the daemon itself holds can be granted (--privileged asks for all; a
        # host may withhold some, e.g. CAP_SYS_RESOURCE in a sandboxed VM).
        self.bits = mask(caps) & _OWN_PERMITTED
        self.drop = [n for n in range(LAST_CAP + 1) if not self.bits >> n & 1]
        granted = self.bits if as_root else 0
        self._header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
        self._data = (_Data * 2)()
        self._data[0].effective = self._data[0].permitted = granted & 0xFFFFFFFF
        self._data[1].effective = self._data[1].permitted = granted >> 32
        self._header_ref = ctypes.byref(self._header)
        self._data_ref = ctypes.byref(self._data)

    def bound(self) -> None:
        for number in self.drop:
            try:
                linux.prctl(linux.PR_CAPBSET_DROP, number)
            except OSError as error:
                if error.errno != 22:  # EINVAL: a capability this kernel lacks
                    raise

    def keep_across_setuid(self) -> None:
        linux.prctl(linux.PR_SET_KEEPCAPS, 1)

    def set_sets(self) -> None:
        linux.check(linux.syscall(linux.SYS_CAPSET, self._header_ref, self._data_ref), "capset")
        with contextlib.suppress(OSError):
            linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)


def current(pid: int | str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, from /proc (for tests and inspect)."""
    result = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Cap"):
                key, value = line.split(":", 1)
                result[key] = int(value.strip(), 16)
    return result


_OWN_PERMITTED = current().get("CapPrm", (1 << 64) - 1)
