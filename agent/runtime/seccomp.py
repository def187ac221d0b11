"""Seccomp for containers: Docker-format profiles compiled to classic BPF, without libseccomp.

load_profile() validates a user's `--security-opt seccomp=<file>` text, compile_filter() turns a
profile (the default one lives in seccomp_default) into a BPF program for the x86-64 ABI, and
prepare() readies it for a forked child to install right before exec.

Shape of a compiled program:

    ld   seccomp_data.arch
    jeq  AUDIT_ARCH_X86_64, else ret <default>
    ld   seccomp_data.nr
    a binary search (jge) over ranges of syscall numbers that share one outcome; each leaf is
    a `ret`, or for a syscall with argument rules the chain of its rules in profile order:
    the first rule whose conditions all hold decides, and when none holds the default does.

Semantics follow runc + libseccomp where they are observable: entries whose includes/excludes
do not apply are dropped, names the syscall table lacks are skipped, rules whose action is the
default action are dropped, and (like runc's "ENOSYS stub") numbers above the highest syscall
the profile names fail with ENOSYS instead of the default, so a newer libc falls back to older
calls. x32 numbers (bit 30 set) get the default action.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.runtime import linux
from agent.runtime.syscalls_x86_64 import SYSCALLS


class SeccompError(Exception):
    """A seccomp profile cannot be used; the message names the entry and field at fault."""


# Return values (linux/seccomp.h); the low 16 bits carry an errno or a tracer's message.
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
RET_DATA = 0x0000FFFF

ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": RET_KILL_THREAD,  # libseccomp's name for kill-thread
    "SCMP_ACT_KILL_THREAD": RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": RET_TRAP,
    "SCMP_ACT_ERRNO": RET_ERRNO,
    "SCMP_ACT_TRACE": RET_TRACE,
    "SCMP_ACT_LOG": RET_LOG,
    "SCMP_ACT_ALLOW": RET_ALLOW,
}
# Only these carry errnoRet (runc refuses it elsewhere); both default to EPERM like runc.
_DATA_ACTIONS = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
# Default actions that let unknown calls through: no ENOSYS stub is needed for them.
_PERMISSIVE = (RET_ALLOW, RET_LOG, RET_TRACE)

OPERATORS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
BPF_MAXINSNS = 4096
# How includes/excludes name this machine's architecture (Docker uses Go's GOARCH names).
NATIVE_ARCHES = frozenset({"amd64", "x86_64", "SCMP_ARCH_X86_64"})

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARGS = 16

# Classic BPF opcodes (linux/filter.h)
_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JA = 0x05
_JEQ = 0x15
_JGT = 0x25
_JGE = 0x35
_RET_K = 0x06

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_MODE_FILTER = 2
PR_SET_SECCOMP = 22


# ---------------------------------------------------------------------------------------------
# Profile parsing and validation


@dataclass(frozen=True)
class _Cond:
    index: int
    op: str
    value: int
    value_two: int


@dataclass(frozen=True)
class _Scope:
    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True)
class _Entry:
    names: tuple[str, ...]
    ret: int
    conds: tuple[_Cond, ...]
    includes: _Scope
    excludes: _Scope


@dataclass(frozen=True)
class _Profile:
    default_ret: int
    entries: tuple[_Entry, ...]


def _cap_name(cap: str) -> str:
    name = cap.strip().upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def _uint(where: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise SeccompError(f"{where} must be an integer from 0 to {limit}, not {value!r}")
    return value


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SeccompError(f"{where} must be a list of strings, not {value!r}")
    return tuple(value)


def _ret(where: str, action: Any, data: Any, default_data: int) -> int:
    if action not in ACTIONS:
        known = ", ".join(ACTIONS)
        hint = " (SCMP_ACT_NOTIFY needs a listener, which is not supported)"
        raise SeccompError(
            f"{where} {action!r} is not one of {known}"
            + (hint if action == "SCMP_ACT_NOTIFY" else "")
        )
    if action not in _DATA_ACTIONS:
        return ACTIONS[action]
    return ACTIONS[action] | (default_data if data is None else data)


def _scope(where: str, raw: Any) -> _Scope:
    if raw is None:
        return _Scope()
    if not isinstance(raw, dict):
        raise SeccompError(f"{where} must be an object with caps, arches or minKernel")
    min_kernel = None
    if raw.get("minKernel"):
        text = raw["minKernel"]
        match = re.fullmatch(r"(\d+)\.(\d+)", text) if isinstance(text, str) else None
        if match is None:
            raise SeccompError(f'{where}.minKernel must look like "4.8", not {text!r}')
        min_kernel = (int(match[1]), int(match[2]))
    caps = tuple(_cap_name(c) for c in _strings(f"{where}.caps", raw.get("caps")))
    return _Scope(caps, _strings(f"{where}.arches", raw.get("arches")), min_kernel)


def _cond(where: str, raw: Any) -> _Cond:
    if not isinstance(raw, dict):
        raise SeccompError(f"{where} must be an object with index, value and op")
    op = raw.get("op")
    if op not in OPERATORS:
        raise SeccompError(f"{where}.op {op!r} is not one of {', '.join(OPERATORS)}")
    return _Cond(
        index=_uint(f"{where}.index", raw.get("index"), 5),
        op=op,
        value=_uint(f"{where}.value", raw.get("value", 0), _U64),
        value_two=_uint(f"{where}.valueTwo", raw.get("valueTwo", 0), _U64),
    )


def _entry(where: str, raw: Any) -> _Entry:
    if not isinstance(raw, dict):
        raise SeccompError(f"{where} must be an object with names and action")
    if "name" in raw and "names" in raw:
        raise SeccompError(f"{where} has both 'name' and 'names'; use one of them")
    if "names" in raw:
        names = _strings(f"{where}.names", raw["names"])
    elif isinstance(raw.get("name"), str):  # the older single-name form
        names = (raw["name"],)
    else:
        raise SeccompError(f"{where} needs 'names' (a list of syscall names)")
    label = f"{where} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
    errno_ret = raw.get("errnoRet")
    if errno_ret is not None:
        _uint(f"{label}.errnoRet", errno_ret, RET_DATA)
        if raw.get("action") not in _DATA_ACTIONS:
            raise SeccompError(
                f"{label}.errnoRet is only allowed with SCMP_ACT_ERRNO or SCMP_ACT_TRACE"
            )
    args = [] if raw.get("args") is None else raw["args"]
    if not isinstance(args, list):
        raise SeccompError(f"{label}.args must be a list")
    return _Entry(
        names=names,
        ret=_ret(f"{label}.action", raw.get("action"), errno_ret, errno.EPERM),
        conds=tuple(_cond(f"{label}.args[{i}]", a) for i, a in enumerate(args)),
        includes=_scope(f"{label}.includes", raw.get("includes")),
        excludes=_scope(f"{label}.excludes", raw.get("excludes")),
    )


def _parse(profile: Mapping[str, Any]) -> _Profile:
    try:
        return _parse_profile(profile)
    except SeccompError as exc:
        raise SeccompError(f"invalid seccomp profile: {exc}") from None


def _parse_profile(profile: Mapping[str, Any]) -> _Profile:
    if not isinstance(profile, Mapping):
        raise SeccompError("it must be a JSON object")
    if profile.get("architectures") and profile.get("archMap"):
        raise SeccompError("set 'architectures' or 'archMap', not both")
    _strings("architectures", profile.get("architectures"))
    data = profile.get("defaultErrnoRet")
    if data is not None:
        _uint("defaultErrnoRet", data, RET_DATA)
    default_ret = _ret("defaultAction", profile.get("defaultAction"), data, errno.EPERM)
    raw_entries = profile.get("syscalls")
    raw_entries = [] if raw_entries is None else raw_entries
    if not isinstance(raw_entries, list):
        raise SeccompError("'syscalls' must be a list of entries")
    entries = tuple(_entry(f"syscalls[{i}]", e) for i, e in enumerate(raw_entries))
    return _Profile(default_ret, entries)


def load_profile(text: str) -> dict[str, Any]:
    """Parse and check a profile in Docker's JSON format; return it with 'name' made 'names'."""
    try:
        profile = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeccompError(
            f"the seccomp profile is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    _parse(profile)
    for entry in profile.get("syscalls") or []:
        if "name" in entry:
            entry["names"] = [entry.pop("name")]
    return dict(profile)


# ---------------------------------------------------------------------------------------------
# Choosing the rules that apply


def _applies(entry: _Entry, caps: frozenset[str], kernel: tuple[int, int]) -> bool:
    inc, exc = entry.includes, entry.excludes
    if inc.arches and not NATIVE_ARCHES.intersection(inc.arches):
        return False
    if not caps.issuperset(inc.caps):
        return False
    if inc.min_kernel is not None and kernel < inc.min_kernel:
        return False
    if NATIVE_ARCHES.intersection(exc.arches):
        return False
    return not caps.intersection(exc.caps)


def running_kernel() -> tuple[int, int]:
    """(major, minor) of the running kernel, for minKernel conditions."""
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


# One syscall's outcome: (ret, conditions) tried in order; the last has no conditions.
_Chain = tuple[tuple[int, tuple[_Cond, ...]], ...]


def _ranges(
    profile: _Profile, caps: frozenset[str], kernel: tuple[int, int]
) -> list[tuple[int, _Chain]]:
    """Split syscall numbers 0..2**32-1 into ranges of equal outcome: [(first number, chain)]."""
    chains: dict[int, list[tuple[int, tuple[_Cond, ...]]]] = {}
    highest = -1
    for entry in profile.entries:
        if not _applies(entry, caps, kernel):
            continue
        for name in entry.names:
            nr = SYSCALLS.get(name)
            if nr is None:
                continue  # unknown to this table: skipped, as libseccomp does
            highest = max(highest, nr)
            if entry.ret == profile.default_ret:
                continue  # same as no rule (runc drops these too)
            chain = chains.setdefault(nr, [])
            if not chain or chain[-1][1]:  # after an unconditional rule nothing is reachable
                chain.append((entry.ret, entry.conds))
    default: _Chain = ((profile.default_ret, ()),)
    above = default
    if profile.default_ret not in _PERMISSIVE:
        above = ((RET_ERRNO | errno.ENOSYS, ()),)
    outcome: list[tuple[int, _Chain]] = []
    for nr in range(highest + 1):
        rules = chains.get(nr)
        if rules and rules[-1][1]:  # when no conditional rule matches: the default action
            rules.append((profile.default_ret, ()))
        outcome.append((nr, tuple(rules) if rules else default))
    outcome += [(highest + 1, above), (X32_SYSCALL_BIT, default)]
    merged: list[tuple[int, _Chain]] = []
    for start, outcome_chain in outcome:
        if not merged or merged[-1][1] != outcome_chain:
            merged.append((start, outcome_chain))
    return merged


# ---------------------------------------------------------------------------------------------
# Code generation


@dataclass
class _Ins:
    code: int
    k: int = 0
    jt: int | None = None  # label, or None for the next instruction (JA: its target)
    jf: int | None = None


@dataclass(frozen=True)
class _Mark:
    label: int


class _Asm:
    """Instructions with symbolic forward labels; assemble() adds JA trampolines as needed."""

    def __init__(self) -> None:
        self.items: list[_Ins | _Mark] = []
        self._labels = 0

    def label(self) -> int:
        self._labels += 1
        return self._labels

    def mark(self, label: int) -> None:
        self.items.append(_Mark(label))

    def ld(self, offset: int) -> None:
        self.items.append(_Ins(_LD_W_ABS, offset))

    def and_(self, mask: int) -> None:
        self.items.append(_Ins(_ALU_AND_K, mask))

    def jump(self, code: int, k: int, jt: int | None = None, jf: int | None = None) -> None:
        self.items.append(_Ins(code, k, jt, jf))

    def ret(self, value: int) -> None:
        self.items.append(_Ins(_RET_K, value))

    def _positions(self) -> dict[int, int]:
        pos: dict[int, int] = {}
        n = 0
        for item in self.items:
            if isinstance(item, _Mark):
                pos[item.label] = n
            else:
                n += 1
        return pos

    def _add_trampolines(self, pos: dict[int, int]) -> bool:
        """Route every conditional jump further than 255 through a JA placed after it."""
        items: list[_Ins | _Mark] = []
        n = 0
        changed = False
        for item in self.items:
            items.append(item)
            if isinstance(item, _Mark):
                continue
            far_t = item.code != _JA and item.jt is not None and pos[item.jt] - n - 1 > 255
            far_f = item.jf is not None and pos[item.jf] - n - 1 > 255
            n += 1
            if not (far_t or far_f):
                continue
            changed = True
            after = self.label()
            jt = self.label() if far_t else (item.jt if item.jt is not None else after)
            jf = self.label() if far_f else (item.jf if item.jf is not None else after)
            items[-1] = _Ins(item.code, item.k, jt, jf)
            if far_t:
                items += [_Mark(jt), _Ins(_JA, 0, item.jt)]
            if far_f:
                items += [_Mark(jf), _Ins(_JA, 0, item.jf)]
            items.append(_Mark(after))
        self.items = items
        return changed

    def assemble(self) -> bytes:
        # A trampolined jump only reaches 2 ahead, so this settles after a few passes.
        while self._add_trampolines(self._positions()):
            pass
        pos = self._positions()
        out = bytearray()
        for item in self.items:
            if isinstance(item, _Mark):
                continue
            here = len(out) // 8

            def offset(label: int | None, here: int = here) -> int:
                return 0 if label is None else pos[label] - here - 1

            if item.code == _JA:
                out += struct.pack("=HBBI", _JA, 0, 0, offset(item.jt))
            else:
                out += struct.pack("=HBBI", item.code, offset(item.jt), offset(item.jf), item.k)
        return bytes(out)


def _emit_cond(asm: _Asm, cond: _Cond, fail: int) -> None:
    """Fall through when the 64-bit argument satisfies cond, else jump to fail."""
    lo_off = _OFF_ARGS + 8 * cond.index  # little-endian: low word first
    hi_off = lo_off + 4
    hi, lo = cond.value >> 32, cond.value & _U32
    ok = asm.label()
    if cond.op == "SCMP_CMP_EQ":
        asm.ld(hi_off)
        asm.jump(_JEQ, hi, jf=fail)
        asm.ld(lo_off)
        asm.jump(_JEQ, lo, jf=fail)
    elif cond.op == "SCMP_CMP_NE":
        asm.ld(hi_off)
        asm.jump(_JEQ, hi, jf=ok)
        asm.ld(lo_off)
        asm.jump(_JEQ, lo, jt=fail)
    elif cond.op in ("SCMP_CMP_GT", "SCMP_CMP_GE"):
        asm.ld(hi_off)
        asm.jump(_JGT, hi, jt=ok)
        asm.jump(_JEQ, hi, jf=fail)
        asm.ld(lo_off)
        asm.jump(_JGT if cond.op == "SCMP_CMP_GT" else _JGE, lo, jf=fail)
    elif cond.op in ("SCMP_CMP_LT", "SCMP_CMP_LE"):
        # BPF has no "less than": branch on the complement instead.
        asm.ld(hi_off)
        asm.jump(_JGE, hi, jf=ok)
        asm.jump(_JEQ, hi, jf=fail)
        asm.ld(lo_off)
        asm.jump(_JGE if cond.op == "SCMP_CMP_LT" else _JGT, lo, jt=fail)
    else:  # SCMP_CMP_MASKED_EQ: (arg & value) == valueTwo
        mask_hi, mask_lo = cond.value >> 32, cond.value & _U32
        want_hi, want_lo = cond.value_two >> 32, cond.value_two & _U32
        if mask_hi or want_hi:  # a 32-bit mask and datum need no look at the high word
            asm.ld(hi_off)
            asm.and_(mask_hi)
            asm.jump(_JEQ, want_hi, jf=fail)
        asm.ld(lo_off)
        asm.and_(mask_lo)
        asm.jump(_JEQ, want_lo, jf=fail)
    asm.mark(ok)


def _emit_chain(asm: _Asm, chain: _Chain) -> None:
    for ret, conds in chain:
        if not conds:
            asm.ret(ret)
            return
        next_rule = asm.label()
        for cond in conds:
            _emit_cond(asm, cond, next_rule)
        asm.ret(ret)
        asm.mark(next_rule)


def _emit_search(asm: _Asm, ranges: list[tuple[int, _Chain]], lo: int, hi: int) -> None:
    """Binary search on the number in A over ranges[lo..hi]; depth is log2 of the range count."""
    if lo == hi:
        _emit_chain(asm, ranges[lo][1])
        return
    mid = (lo + hi + 1) // 2
    upper = asm.label()
    asm.jump(_JGE, ranges[mid][0], jt=upper)
    _emit_search(asm, ranges, lo, mid - 1)
    asm.mark(upper)
    _emit_search(asm, ranges, mid, hi)


def compile_filter(
    profile: Mapping[str, Any],
    capabilities: Iterable[str],
    kernel: tuple[int, int] | None = None,
) -> bytes:
    """Compile a Docker-format profile into a BPF program (struct sock_filter[]) for x86-64.

    capabilities are the container's bounding set ("CAP_SYS_ADMIN" style) and kernel the
    (major, minor) that minKernel conditions test (default: the running kernel).
    """
    parsed = _parse(profile)
    caps = frozenset(_cap_name(c) for c in capabilities)
    ranges = _ranges(parsed, caps, running_kernel() if kernel is None else kernel)
    asm = _Asm()
    native = asm.label()
    asm.ld(_OFF_ARCH)
    asm.jump(_JEQ, AUDIT_ARCH_X86_64, jt=native)
    # i386 (int 0x80) and any other ABI get the default action: compat syscalls are not
    # supported, so 32-bit binaries in a container fail rather than run unfiltered.
    asm.ret(parsed.default_ret)
    asm.mark(native)
    asm.ld(_OFF_NR)
    _emit_search(asm, ranges, 0, len(ranges) - 1)
    program = asm.assemble()
    count = len(program) // 8
    if count > BPF_MAXINSNS:
        raise SeccompError(
            f"the seccomp profile compiles to {count} BPF instructions, over the kernel's limit "
            f"of {BPF_MAXINSNS}; merge entries or drop argument conditions"
        )
    return program


# ---------------------------------------------------------------------------------------------
# Installation


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class PreparedFilter:
    """A BPF program with every ctypes object built, so install() allocates next to nothing."""

    def __init__(self, program: bytes) -> None:
        if not program or len(program) % 8 or len(program) // 8 > BPF_MAXINSNS:
            raise SeccompError(
                f"a seccomp program must be 1 to {BPF_MAXINSNS} 8-byte instructions, "
                f"not {len(program)} bytes"
            )
        self.length = len(program) // 8
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(self.length, ctypes.addressof(self._buffer))
        self._address = ctypes.addressof(self._fprog)
        self._args = (
            ctypes.c_long(linux.SYS_SECCOMP),
            ctypes.c_long(SECCOMP_SET_MODE_FILTER),
            ctypes.c_long(0),
            ctypes.c_void_p(self._address),
        )

    def install(self) -> None:
        """Load the filter into the calling thread; needs no_new_privs or CAP_SYS_ADMIN."""
        if linux.syscall(*self._args) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.ENOSYS:  # kernels before 3.17 only have the prctl interface
            linux.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self._address)
            return
        hint = " (set no_new_privs first or keep CAP_SYS_ADMIN)" if err == errno.EACCES else ""
        raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(err)}{hint}")


def prepare(program: bytes) -> PreparedFilter:
    """Build the buffers for program now; call .install() in the child right before exec."""
    return PreparedFilter(program)
