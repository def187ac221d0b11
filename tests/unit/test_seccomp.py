"""Seccomp profiles compiled to BPF: checked by a small BPF interpreter and by the kernel.

Kernel checks run in forked children that set no_new_privs (so no root is needed), install a
filter and report what their system calls returned through a pipe.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import linux
from agent.runtime.seccomp import (
    AUDIT_ARCH_X86_64,
    BPF_MAXINSNS,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    RET_LOG,
    RET_TRACE,
    SeccompError,
    compile_filter,
    load_profile,
    prepare,
)
from agent.runtime.seccomp_default import DEFAULT_PROFILE
from agent.runtime.syscalls_x86_64 import SYSCALLS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
    reason="the filters are for the x86-64 Linux ABI",
)

# fmt: off
DOCKER_CAPS = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
})
# Calls the default profile refuses with Docker's capabilities (none of them is in its lists).
REFUSED = (
    "mount", "umount2", "unshare", "setns", "keyctl", "reboot", "bpf", "kexec_load",
    "init_module", "open_by_handle_at", "perf_event_open", "settimeofday", "acct", "swapon",
    "pivot_root", "userfaultfd", "add_key", "syslog",
)
ALLOWED = (
    "read", "write", "openat", "execve", "exit_group", "arch_prctl", "modify_ldt",
    "futex_waitv", "name_to_handle_at", "ptrace",
)
NAMESPACE_FLAGS = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
)
# Probes the filter refuses with EPERM, and those of them the kernel itself would not.
FILTERED = (
    "personality_no_aslr", "vsock", "mount", "unshare_bad_flag", "clone_newuser", "setns",
    "keyctl", "reboot", "x32_getpid",
)
NOT_EPERM_UNFILTERED = (
    "personality_no_aslr", "vsock", "unshare_bad_flag", "clone_newuser", "setns", "keyctl",
)
# fmt: on
EPERM_RET = RET_ERRNO | errno.EPERM
AUDIT_ARCH_I386 = 0x40000003
CLONE_FS = 0x200
AF_VSOCK = 40
NOT_A_PATH = b"/nonexistent-seccomp-test"


# ---------------------------------------------------------------------------------------------
# A classic BPF interpreter covering the instructions the compiler emits


def run_bpf(
    program: bytes, nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64
) -> tuple[int, int]:
    """Return (seccomp return value, instructions executed) for one system call."""
    full = tuple(args) + (0,) * (6 - len(args))
    data = struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0, *full)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc = acc = steps = 0
    while True:
        code, jt, jf, k = insns[pc]
        steps += 1
        pc += 1
        if code == 0x20:  # ld [k]
            (acc,) = struct.unpack_from("<I", data, k)
        elif code == 0x54:  # and #k
            acc &= k
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x25, 0x35):  # jeq, jgt, jge
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k}[code]
            pc += jt if taken else jf
        elif code == 0x06:  # ret #k
            return k, steps
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc - 1}")


def verdict(program: bytes, name: str, *args: int) -> int:
    return run_bpf(program, SYSCALLS[name], args)[0]


@pytest.fixture(scope="module")
def default_filter() -> bytes:
    return compile_filter(DEFAULT_PROFILE, DOCKER_CAPS, kernel=(6, 1))


@pytest.fixture(scope="module")
def admin_filter() -> bytes:
    return compile_filter(DEFAULT_PROFILE, DOCKER_CAPS | {"CAP_SYS_ADMIN"}, kernel=(6, 1))


# ---------------------------------------------------------------------------------------------
# Running probes under a filter in a child


def sys_ret(nr: int, *args: int | bytes | None) -> int:
    """A raw system call: its result, or -errno."""
    c_args = [
        ctypes.c_char_p(a) if isinstance(a, bytes) or a is None else ctypes.c_ulong(a) for a in args
    ]
    result = linux.syscall(ctypes.c_long(nr), *c_args)
    return -ctypes.get_errno() if result == -1 else int(result)


def in_child(program: bytes | None, probe: Callable[[], Any]) -> tuple[Any, int]:
    """Run probe() in a forked child under program; return (its result or None, wait status)."""
    prepared = prepare(program) if program is not None else None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_end)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS must not dump core
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            if prepared is not None:
                prepared.install()
            outcome: Any = ("ok", probe())
        except BaseException as exc:
            outcome = ("error", repr(exc))
        try:
            os.write(write_end, pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()  # EOF when the child exits or is killed
    _, status = os.waitpid(pid, 0)
    if not data:
        return None, status
    kind, value = pickle.loads(data)
    assert kind == "ok", f"the child failed: {value}"
    return value, status


def fork_and_wait() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def read_self() -> int:
    with open(__file__, "rb") as f:
        return len(f.read())


def unix_socket() -> bool:
    fd = sys_ret(SYSCALLS["socket"], 1, 1, 0)  # AF_UNIX, SOCK_STREAM
    if fd >= 0:
        os.close(fd)
    return fd >= 0


def default_probes() -> dict[str, Any]:
    return {
        "getpid": sys_ret(SYSCALLS["getpid"]) == os.getpid(),
        "read": read_self(),
        "fork": fork_and_wait(),
        "unix_socket": unix_socket(),
        "personality_query": sys_ret(SYSCALLS["personality"], 0xFFFFFFFF) >= 0,
        "personality_linux": sys_ret(SYSCALLS["personality"], 0) >= 0,
        "personality_no_aslr": sys_ret(SYSCALLS["personality"], 0x0040000),
        "vsock": sys_ret(SYSCALLS["socket"], AF_VSOCK, 1, 0),
        "mount": sys_ret(SYSCALLS["mount"], b"none", NOT_A_PATH, b"tmpfs", 0, None),
        "unshare_bad_flag": sys_ret(SYSCALLS["unshare"], 0x1),
        "clone_newuser": sys_ret(SYSCALLS["clone"], linux.CLONE_NEWUSER | CLONE_FS, 0, 0, 0, 0),
        "clone3": sys_ret(SYSCALLS["clone3"], 0, 0),
        "setns": sys_ret(SYSCALLS["setns"], 0xFFFFFFFF, 0),
        "keyctl": sys_ret(SYSCALLS["keyctl"], 0, 0xFFFFFFFFFFFFFFFD, 0),
        "reboot": sys_ret(SYSCALLS["reboot"], 0, 0, 0, 0),
        "chroot": sys_ret(SYSCALLS["chroot"], NOT_A_PATH),
        "fchmodat2": sys_ret(452, 0xFFFFFFFFFFFFFF9C, NOT_A_PATH, 0, 0),
        "x32_getpid": sys_ret(0x40000000 | SYSCALLS["getpid"]),
    }


@pytest.fixture(scope="module")
def unfiltered() -> dict[str, Any]:
    result, _ = in_child(None, default_probes)
    return result


# ---------------------------------------------------------------------------------------------
# The default profile in the kernel


def test_default_profile_in_the_kernel(default_filter: bytes, unfiltered: dict[str, Any]) -> None:
    got, status = in_child(default_filter, default_probes)
    assert os.waitstatus_to_exitcode(status) == 0
    # Ordinary work goes through.
    assert got["getpid"] and got["read"] == read_self() and got["fork"] == 7
    assert got["unix_socket"] and got["personality_query"] and got["personality_linux"]
    assert got["chroot"] == -errno.ENOENT  # CAP_SYS_CHROOT is in Docker's set
    # The filter, not the kernel, refuses these: unfiltered they fail otherwise or succeed.
    for probe in FILTERED:
        assert got[probe] == -errno.EPERM, probe
    for probe in NOT_EPERM_UNFILTERED:
        assert unfiltered[probe] != -errno.EPERM, probe
    assert got["clone3"] == -errno.ENOSYS != unfiltered["clone3"]  # libc falls back to clone
    # Newer than anything the profile names: ENOSYS so a libc uses its fallback (fchmodat).
    assert got["fchmodat2"] == -errno.ENOSYS


def test_cap_sys_admin_opens_mount_unshare_clone(admin_filter: bytes) -> None:
    got, status = in_child(admin_filter, default_probes)
    assert os.waitstatus_to_exitcode(status) == 0
    # Now the kernel answers: the invalid arguments are rejected on their own merits.
    assert got["mount"] == -errno.ENOENT
    assert got["unshare_bad_flag"] == -errno.EINVAL
    assert got["clone_newuser"] == -errno.EINVAL
    assert got["clone3"] == -errno.EINVAL
    assert got["setns"] == -errno.EBADF
    assert got["keyctl"] == -errno.EPERM  # still not in the profile at any capability
    assert got["fork"] == 7


# ---------------------------------------------------------------------------------------------
# The default profile in the interpreter


def test_default_profile_decisions(default_filter: bytes) -> None:
    p = default_filter
    for name in ALLOWED:
        assert verdict(p, name) == RET_ALLOW, name
    for name in REFUSED:
        assert verdict(p, name) == EPERM_RET, name
    assert verdict(p, "clone3") == RET_ERRNO | errno.ENOSYS
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert verdict(p, "personality", persona) == RET_ALLOW, persona
    for persona in (1, 0x0040000, 0x1_0000_0000, 0xFFFFFFFFFFFFFFFF):
        assert verdict(p, "personality", persona) == EPERM_RET, persona
    assert verdict(p, "socket", 2) == RET_ALLOW
    assert verdict(p, "socket", AF_VSOCK) == EPERM_RET
    assert verdict(p, "socket", AF_VSOCK | 1 << 32) == RET_ALLOW  # all 64 bits compared
    assert verdict(p, "clone", 0x01200011) == RET_ALLOW  # glibc fork()'s flags
    for flag in NAMESPACE_FLAGS:
        assert verdict(p, "clone", 0x01200011 | flag) == EPERM_RET, hex(flag)
    # Numbers above the highest the profile names get ENOSYS, x32 and i386 the default.
    assert run_bpf(p, 452)[0] == RET_ERRNO | errno.ENOSYS
    assert run_bpf(p, 0x40000000 | SYSCALLS["getpid"])[0] == EPERM_RET
    assert run_bpf(p, 0xFFFFFFFF)[0] == EPERM_RET
    assert run_bpf(p, SYSCALLS["getpid"], arch=AUDIT_ARCH_I386)[0] == EPERM_RET


def test_capabilities_and_kernel_version_select_entries(admin_filter: bytes) -> None:
    for name in ("mount", "unshare", "setns", "clone3", "bpf", "perf_event_open", "syslog"):
        assert verdict(admin_filter, name) == RET_ALLOW, name
    assert verdict(admin_filter, "clone", 0x10000000) == RET_ALLOW
    assert verdict(admin_filter, "reboot") == EPERM_RET
    booting = compile_filter(DEFAULT_PROFILE, DOCKER_CAPS | {"SYS_BOOT"}, kernel=(6, 1))
    assert verdict(booting, "reboot") == RET_ALLOW  # "SYS_BOOT" and "CAP_SYS_BOOT" both work
    old = compile_filter(DEFAULT_PROFILE, DOCKER_CAPS, kernel=(4, 7))
    assert verdict(old, "ptrace") == EPERM_RET  # minKernel 4.8
    nice = compile_filter(DEFAULT_PROFILE, DOCKER_CAPS | {"CAP_SYS_NICE"}, kernel=(6, 1))
    assert verdict(nice, "set_mempolicy_home_node") == RET_ALLOW
    assert verdict(nice, "mbind") == RET_ALLOW


def test_default_profile_size_and_search_depth(default_filter: bytes) -> None:
    count = len(default_filter) // 8
    print(f"default profile: {count} BPF instructions (limit {BPF_MAXINSNS})")
    assert count < BPF_MAXINSNS
    # A binary search: every syscall number is decided in a handful of instructions.
    worst = max(run_bpf(default_filter, nr)[1] for nr in range(500))
    assert worst <= 16, worst


def test_default_filter_is_deterministic(default_filter: bytes) -> None:
    assert compile_filter(DEFAULT_PROFILE, set(DOCKER_CAPS), kernel=(6, 1)) == default_filter
    script = (
        "import hashlib\n"
        "from agent.runtime.seccomp import compile_filter\n"
        "from agent.runtime.seccomp_default import DEFAULT_PROFILE\n"
        f"caps = {sorted(DOCKER_CAPS)!r}\n"
        "print(hashlib.sha256(compile_filter(DEFAULT_PROFILE, set(caps), (6, 1))).hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[2]
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert digests == {hashlib.sha256(default_filter).hexdigest()}


# ---------------------------------------------------------------------------------------------
# Argument comparisons at the 32-bit boundary

BOUNDARY_VALUES = (
    0,
    1,
    0x7FFFFFFF,
    0xFFFFFFFE,
    0xFFFFFFFF,
    0x1_0000_0000,
    0x1_0000_0001,
    0x1_FFFF_FFFF,
    0x2_0000_0000,
    0xFFFFFFFF_00000000,
    0xFFFFFFFF_FFFFFFFF,
)
OPS: dict[str, Callable[[int, int, int], bool]] = {
    "SCMP_CMP_EQ": lambda a, v, _: a == v,
    "SCMP_CMP_NE": lambda a, v, _: a != v,
    "SCMP_CMP_LT": lambda a, v, _: a < v,
    "SCMP_CMP_LE": lambda a, v, _: a <= v,
    "SCMP_CMP_GT": lambda a, v, _: a > v,
    "SCMP_CMP_GE": lambda a, v, _: a >= v,
    "SCMP_CMP_MASKED_EQ": lambda a, v, v2: a & v == v2,
}
CASES = [
    (op, value, two)
    for op in OPS
    for value, two in (
        [(0x1_0000_0000, 0), (0xFFFFFFFF, 0), (0x1_8000_0000, 0x1_0000_0000), (0xFF, 0x0F)]
        if op == "SCMP_CMP_MASKED_EQ"
        else [(0x1_0000_0000, 0), (0xFFFFFFFF, 0), (0x1_0000_0001, 0)]
    )
]


def getppid_rule_profile(op: str, value: int, two: int) -> dict[str, Any]:
    arg = {"index": 2, "value": value, "valueTwo": two, "op": op}
    rule = {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOMSG}
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{**rule, "args": [arg]}]}


@pytest.mark.parametrize(("op", "value", "two"), CASES)
def test_comparisons_in_interpreter(op: str, value: int, two: int) -> None:
    program = compile_filter(getppid_rule_profile(op, value, two), set())
    for arg in BOUNDARY_VALUES + (value, value - 1, value + 1):
        expected = RET_ERRNO | errno.ENOMSG if OPS[op](arg, value, two) else RET_ALLOW
        assert verdict(program, "getppid", 0, 0, arg) == expected, hex(arg)


@pytest.mark.parametrize("op", list(OPS))
def test_comparisons_in_the_kernel(op: str) -> None:
    value, two = (0x1_8000_0000, 0x1_0000_0000) if op == "SCMP_CMP_MASKED_EQ" else (2**32, 0)
    program = compile_filter(getppid_rule_profile(op, value, two), set())

    def probe() -> list[int]:
        return [sys_ret(SYSCALLS["getppid"], 0, 0, arg) for arg in BOUNDARY_VALUES]

    got, _ = in_child(program, probe)
    ppid = os.getpid()  # the child's parent is this process
    expected = [-errno.ENOMSG if OPS[op](a, value, two) else ppid for a in BOUNDARY_VALUES]
    assert got == expected


def test_entries_are_ored_and_args_anded() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"},
            ]},
            {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 5, "op": "SCMP_CMP_EQ"},
            ]},
        ],
    }  # fmt: skip
    program = compile_filter(profile, set())
    assert verdict(program, "getppid", 1, 2) == RET_ALLOW
    assert verdict(program, "getppid", 1, 3) == EPERM_RET
    assert verdict(program, "getppid", 5, 9) == RET_ALLOW
    assert verdict(program, "getppid", 2, 2) == EPERM_RET


# ---------------------------------------------------------------------------------------------
# Actions


@pytest.mark.parametrize(
    ("action", "expect_errno", "expect_signal"),
    [
        ("SCMP_ACT_ERRNO", errno.ENOMSG, None),
        ("SCMP_ACT_TRACE", errno.ENOSYS, None),  # no tracer attached: the call is skipped
        ("SCMP_ACT_LOG", None, None),
        ("SCMP_ACT_TRAP", None, signal.SIGSYS),
        ("SCMP_ACT_KILL", None, signal.SIGSYS),
        ("SCMP_ACT_KILL_THREAD", None, signal.SIGSYS),
        ("SCMP_ACT_KILL_PROCESS", None, signal.SIGSYS),
    ],
)
def test_actions_in_the_kernel(
    action: str, expect_errno: int | None, expect_signal: signal.Signals | None
) -> None:
    rule: dict[str, Any] = {"names": ["getppid"], "action": action}
    if action == "SCMP_ACT_ERRNO":
        rule["errnoRet"] = errno.ENOMSG
    program = compile_filter({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}, set())
    got, status = in_child(program, lambda: sys_ret(SYSCALLS["getppid"]))
    if expect_signal is not None:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == expect_signal
        assert got is None
    elif expect_errno is not None:
        assert got == -expect_errno
    else:
        assert got == os.getpid()


def test_action_values() -> None:
    def ret(action: str, **extra: Any) -> int:
        rule = {"names": ["getppid"], "action": action, **extra}
        profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}
        return verdict(compile_filter(profile, set()), "getppid")

    assert ret("SCMP_ACT_ERRNO") == EPERM_RET
    assert ret("SCMP_ACT_ERRNO", errnoRet=0) == RET_ERRNO
    assert ret("SCMP_ACT_TRACE", errnoRet=7) == RET_TRACE | 7
    assert ret("SCMP_ACT_LOG") == RET_LOG
    assert ret("SCMP_ACT_KILL_PROCESS") == RET_KILL_PROCESS
    # defaultErrnoRet is the default action's errno; an unrelated rule keeps EPERM.
    rule = {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [rule]}
    program = compile_filter(profile, set())
    assert verdict(program, "getpid") == RET_ERRNO | 38
    assert verdict(program, "getppid") == EPERM_RET


def test_unknown_names_and_other_arches_are_skipped() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["no_such_call", "getppid"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["arm64"]}},
            {"names": ["gettid"], "action": "SCMP_ACT_ERRNO", "excludes": {"arches": ["amd64"]}},
            {"names": ["getuid"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["amd64"]}},
        ],
    }
    program = compile_filter(profile, set())
    assert verdict(program, "getppid") == EPERM_RET
    assert verdict(program, "getpid") == RET_ALLOW
    assert verdict(program, "gettid") == RET_ALLOW
    assert verdict(program, "getuid") == EPERM_RET


# ---------------------------------------------------------------------------------------------
# Long programs: trampolines and the instruction limit

MAGIC = 0xDEADBEEF_00000000


def per_syscall_rules(conditions: int) -> dict[str, Any]:
    """Every known syscall gets its own conditional ERRNO rule: a long, wide program."""
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": [name],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.ENOMSG,
                "args": [
                    {"index": i, "value": MAGIC + nr, "op": "SCMP_CMP_EQ"}
                    for i in range(conditions)
                ],
            }
            for name, nr in sorted(SYSCALLS.items())
        ],
    }


def test_long_jumps_use_trampolines() -> None:
    program = compile_filter(per_syscall_rules(1), set())
    count = len(program) // 8
    assert 1000 < count < BPF_MAXINSNS
    assert any(program[i : i + 2] == b"\x05\x00" for i in range(0, len(program), 8))  # JA
    for name in ("read", "getppid", "set_mempolicy_home_node", "io_setup"):
        nr = SYSCALLS[name]
        assert run_bpf(program, nr, (MAGIC + nr,))[0] == RET_ERRNO | errno.ENOMSG, name
        assert run_bpf(program, nr, (MAGIC + nr + 1,))[0] == RET_ALLOW, name

    def probe() -> list[int]:
        nr = SYSCALLS["getppid"]
        return [sys_ret(nr, MAGIC + nr), sys_ret(nr, 0)]

    got, _ = in_child(program, probe)  # the kernel accepts the program and runs it right
    assert got == [-errno.ENOMSG, os.getpid()]


def test_too_long_a_program_is_refused() -> None:
    with pytest.raises(SeccompError, match="over the kernel's limit of 4096"):
        compile_filter(per_syscall_rules(3), set())


# ---------------------------------------------------------------------------------------------
# Profile validation


def test_load_profile_accepts_docker_json_and_the_single_name_form() -> None:
    text = json.dumps(
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"name": "getppid", "action": "SCMP_ACT_ALLOW"}],
        }
    )
    profile = load_profile(text)
    assert profile["syscalls"] == [{"names": ["getppid"], "action": "SCMP_ACT_ALLOW"}]
    assert verdict(compile_filter(profile, set()), "getppid") == RET_ALLOW
    assert load_profile(json.dumps(DEFAULT_PROFILE)) == DEFAULT_PROFILE


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("{not json", "not valid JSON: .* line 1 column 2"),
        ("[]", "invalid seccomp profile: it must be a JSON object"),
        ('{"syscalls": []}', "defaultAction None is not one of SCMP_ACT_KILL"),
        ('{"defaultAction": "SCMP_ACT_DENY"}', "defaultAction 'SCMP_ACT_DENY'"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}', "defaultErrnoRet must"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}', "'syscalls' must be a list"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}',
         r"syscalls\[0\] needs 'names'"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
         '"action": "SCMP_ACT_NOTIFY"}]}',
         r"syscalls\[0\] \(read\).action 'SCMP_ACT_NOTIFY'.*needs a listener"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a", "b", "c", "d"], '
         '"action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}',
         r"syscalls\[0\] \(a, b, c, \.\.\.\)\.args\[0\]\.index must be an integer from 0 to 5"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
         '"action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}',
         r"args\[0\]\.op 'SCMP_CMP_LIKE' is not one of SCMP_CMP_NE"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
         '"action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 18446744073709551616, '
         '"op": "SCMP_CMP_EQ"}]}]}', r"args\[0\]\.value must be an integer"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
         '"action": "SCMP_ACT_ALLOW", "errnoRet": 5}]}',
         r"errnoRet is only allowed with SCMP_ACT_ERRNO or SCMP_ACT_TRACE"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read", '
         '"action": "SCMP_ACT_ALLOW"}]}', r"syscalls\[0\]\.names must be a list of strings"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"name": "read", "names": ["read"], '
         '"action": "SCMP_ACT_ALLOW"}]}', "both 'name' and 'names'"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
         '"action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4"}}]}',
         r'includes\.minKernel must look like "4\.8"'),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"], '
         '"archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}', "'architectures' or 'archMap'"),
    ],
)  # fmt: skip
def test_bad_profiles_are_explained(profile: str, message: str) -> None:
    with pytest.raises(SeccompError, match=message):
        load_profile(profile)


def test_compile_validates_too() -> None:
    with pytest.raises(SeccompError, match=r"syscalls\[0\] \(read\)\.action 'allow'"):
        rule = {"names": ["read"], "action": "allow"}
        compile_filter({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [rule]}, set())


def test_prepare_checks_the_program() -> None:
    with pytest.raises(SeccompError, match="8-byte instructions"):
        prepare(b"\x06\x00\x00\x00\x00\x00\xff")
    assert prepare(b"\x06\x00\x00\x00\x00\x00\xff\x7f").length == 1
