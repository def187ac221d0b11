"""Which device nodes a container may use: the cgroup v2 device filter (an eBPF program).

cgroup v2 has no devices.allow file: the kernel asks an eBPF program of type
CGROUP_DEVICE, attached to the container's cgroup, on every open and mknod of a device
node. Without one, a container with CAP_MKNOD (in Docker's default set) could make a node
for the VM's disk and read it. Docker's default rules: any node may be *created* (mknod),
but only the harmless ones may be read or written; --privileged lifts the filter.

The program is a handful of instructions written here directly (no compiler, no libbpf):
load the request from the context, then one block per rule that returns 1 (allow) when
the request matches; 0 (deny) when none does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from dataclasses import dataclass

from agent.runtime import linux

# bpf(2) commands, program and attach types, flags (linux/bpf.h)
_SYS_BPF = 321  # x86_64
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2

# What the program is asked (struct bpf_cgroup_dev_ctx: access_type, major, minor);
# access_type = access << 16 | type
BLOCK, CHAR = 1, 2
MKNOD, READ, WRITE = 1, 2, 4
ANY = -1  # a wildcard major or minor


@dataclass(frozen=True)
class Rule:
    """An allow rule, as `c 1:3 rwm` in Docker's terms."""

    kind: int  # BLOCK or CHAR
    major: int
    minor: int
    access: int  # MKNOD | READ | WRITE

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``"c 1:3 rwm"``, ``"b *:* m"`` (as --device-cgroup-rule takes them)."""
        try:
            kind_text, numbers, access_text = text.split()
            major_text, minor_text = numbers.split(":")
            kind = {"c": CHAR, "b": BLOCK}[kind_text]
            access = 0
            for letter in access_text:
                access |= {"m": MKNOD, "r": READ, "w": WRITE}[letter]
            major = ANY if major_text == "*" else int(major_text)
            minor = ANY if minor_text == "*" else int(minor_text)
        except (ValueError, KeyError):
            raise ValueError(
                f"invalid device cgroup rule {text!r}: use 'c|b MAJOR:MINOR rwm' ('*' for any)"
            ) from None
        return cls(kind, major, minor, access)


# Docker's defaults (moby's DefaultLinuxSpec and runc's AllowedDevices): create any node;
# use null, zero, full, random, urandom, tty, console, ptmx, the pts and tun.
DEFAULT_RULES = tuple(
    Rule.parse(text)
    for text in (
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
        "c 10:200 rwm",
    )
)


# --- the program ---------------------------------------------------------------------------
def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


_LDX_W = 0x61  # dst = *(u32 *)(src + off)
_AND32_K, _RSH32_K, _MOV32_X = 0x54, 0x74, 0xBC
_MOV64_K = 0xB7
_JNE_K, _JNE_X = 0x55, 0x5D  # if dst != imm / src: skip `off` instructions
_EXIT = 0x95


def _rule_block(rule: Rule) -> list[bytes]:
    """Instructions that return 1 when the request (r2 type, r3 access, r4 major, r5
    minor) matches ``rule``, and fall through to the next block otherwise."""
    tests = [
        (_JNE_K, 2, 0, rule.kind),
        # the requested access must be a subset of the rule's: (r3 & access) == r3
        (_MOV32_X, 1, 3, 0),
        (_AND32_K, 1, 0, rule.access),
        (_JNE_X, 1, 3, 0),
    ]
    if rule.major != ANY:
        tests.append((_JNE_K, 4, 0, rule.major))
    if rule.minor != ANY:
        tests.append((_JNE_K, 5, 0, rule.minor))
    block: list[bytes] = []
    remaining = len(tests) + 2  # the tests, then r0 = 1; exit
    for code, dst, src, imm in tests:
        remaining -= 1
        jumps = code in (_JNE_K, _JNE_X)
        block.append(_insn(code, dst, src, remaining if jumps else 0, imm))
    block += [_insn(_MOV64_K, 0, imm=1), _insn(_EXIT)]
    return block


def program(rules: tuple[Rule, ...]) -> bytes:
    """The filter's instructions: allow what one of ``rules`` allows, deny the rest."""
    code = [
        _insn(_LDX_W, 2, 1, 0),  # r2 = access_type
        _insn(_AND32_K, 2, imm=0xFFFF),  # r2 = type
        _insn(_LDX_W, 3, 1, 0),
        _insn(_RSH32_K, 3, imm=16),  # r3 = access
        _insn(_LDX_W, 4, 1, 4),  # r4 = major
        _insn(_LDX_W, 5, 1, 8),  # r5 = minor
    ]
    for rule in rules:
        code += _rule_block(rule)
    code += [_insn(_MOV64_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(code)


# --- loading and attaching -----------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _bpf(command: int, attr: bytes, what: str) -> int:
    buffer = ctypes.create_string_buffer(attr, len(attr))
    return linux.check(int(_syscall(_SYS_BPF, command, buffer, len(attr))), what)


def load(rules: tuple[Rule, ...]) -> int:
    """Load the filter for ``rules``; the program's fd (close-on-exec)."""
    try:
        return _load(program(rules), verbose=False)
    except OSError as error:
        if error.errno != errno.EACCES and error.errno != errno.EINVAL:
            raise
        return _load(program(rules), verbose=True)  # again, for the verifier's reason


def _load(instructions: bytes, verbose: bool) -> int:
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_text = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 20 if verbose else 1)
    attr = struct.pack(
        "<IIQQIIQII16sII",
        _BPF_PROG_TYPE_CGROUP_DEVICE,
        len(instructions) // 8,
        ctypes.addressof(code),
        ctypes.addressof(license_text),
        1 if verbose else 0,  # log_level
        len(log) if verbose else 0,
        ctypes.addressof(log) if verbose else 0,
        0,
        0,
        b"vmctl_devices",
        0,
        _BPF_CGROUP_DEVICE,
    )
    try:
        return _bpf(_BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD)")
    except OSError as error:
        lines = log.value.decode(errors="replace").strip().splitlines()
        reason = f" (the verifier: {lines[-1]})" if lines else ""
        raise OSError(error.errno, f"{error.strerror}{reason}") from None


def attach(program_fd: int, cgroup_dir: str) -> None:
    """Attach the filter to a cgroup; it stays attached for the cgroup's life."""
    cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = struct.pack(
            "<IIIII", cgroup_fd, program_fd, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI, 0
        )
        _bpf(_BPF_PROG_ATTACH, attr, "bpf(BPF_PROG_ATTACH)")
    finally:
        os.close(cgroup_fd)


class FilterCache:
    """One loaded program per rule set, shared by every container that uses it (an
    attached program lives on with its cgroup; the fd here only serves further attaches)."""

    def __init__(self) -> None:
        self._fds: dict[tuple[Rule, ...], int] = {}
        self._lock = threading.Lock()

    def attach(self, rules: tuple[Rule, ...], cgroup_dir: str) -> None:
        with self._lock:
            fd = self._fds.get(rules)
            if fd is None:
                fd = self._fds[rules] = load(rules)
        attach(fd, cgroup_dir)
