"""The container runtime end to end: the real docker CLI against the VM's engine socket.

Every test names its containers and removes them afterwards (the `engine` fixture), so the
tests are independent of each other and of their order; `running_vm` brings the machine
back when an earlier test file stopped or removed it. Timeouts are generous: under tcg a
`docker run` takes about a second and the guest computes slowly.
"""

from __future__ import annotations

import http.server
import ipaddress
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import Engine

pytestmark = pytest.mark.e2e


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- running commands ---------------------------------------------------------------------


def test_run_prints_output_and_passes_exit_codes(engine: Engine) -> None:
    hello = engine("run", "--rm", "--name", engine.name("hello"), "busybox", "echo", "hello")
    assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr

    three = engine("run", "--name", engine.name("three"), "busybox", "sh", "-c", "exit 3")
    assert three.returncode == 3, three.stderr

    missing = engine("run", "--name", engine.name("missing"), "busybox", "nosuchcmd")
    assert missing.returncode == 127, missing.stderr
    assert "nosuchcmd" in missing.stderr
    assert "Traceback" not in missing.stderr

    cat = engine(
        "run", "-i", "--rm", "--name", engine.name("cat"), "busybox", "cat", input="data\n"
    )
    assert (cat.returncode, cat.stdout) == (0, "data\n"), cat.stderr


# -- resource limits ----------------------------------------------------------------------


def test_memory_limit_kills_with_oom(engine: Engine) -> None:
    name = engine.name("oom")
    # The shell doubles a string until the 32 MiB cgroup (no swap) cannot hold it.
    proc = engine(
        "run",
        "--name",
        name,
        "--memory",
        "32m",
        "--memory-swap",
        "32m",
        "busybox",
        "sh",
        "-c",
        "x=a; while :; do x=$x$x; done",
        timeout=300,
    )
    assert proc.returncode == 137, proc.stderr
    assert engine.ok("inspect", "-f", "{{.State.OOMKilled}}", name).strip() == "true"
    assert engine.ok("inspect", "-f", "{{.HostConfig.Memory}}", name).strip() == str(32 * 2**20)


def test_pids_limit_stops_a_fork_bomb(engine: Engine) -> None:
    name = engine.name("pids")
    # The container's init watches its own pids.current with shell builtins only (no fork,
    # so the full cgroup cannot stop it) and logs each new maximum.
    watcher = (
        "read limit < /sys/fs/cgroup/pids.max; echo limit=$limit; max=0; "
        "while :; do read c < /sys/fs/cgroup/pids.current; "
        'if [ "$c" -gt "$max" ]; then max=$c; echo max=$max; fi; done'
    )
    engine.ok("run", "-d", "--name", name, "--pids-limit", "20", "busybox", "sh", "-c", watcher)
    wait_for(lambda: "max=" in engine.ok("logs", name), 60, "the pids watcher to start")

    bomb = engine(
        "exec",
        name,
        "sh",
        "-c",
        # the sleepers must not hold the exec's output open
        "i=0; while [ $i -lt 60 ]; do sleep 1000 </dev/null >/dev/null 2>&1 & i=$((i + 1)); "
        "done; echo all forked",
    )
    assert bomb.returncode != 0, bomb.stdout
    assert "all forked" not in bomb.stdout
    assert "can't fork" in bomb.stderr, bomb.stderr

    def maxima() -> list[int]:
        return [int(m) for m in re.findall(r"^max=(\d+)$", engine.ok("logs", name), re.M)]

    # The bomb filled the cgroup: the watcher saw it nearly full, and never past the limit.
    # One over it may show for an instant: the kernel charges a fork first, then finds it
    # over the limit and takes the charge back (pids_try_charge), and the watcher reads in
    # a tight loop. A fork that succeeded past the limit would show as more.
    wait_for(lambda: max(maxima()) >= 15, 60, "the watcher to see the bomb's children")
    logs = engine.ok("logs", name)
    assert "limit=20" in logs
    assert max(maxima()) <= 21, logs
    assert engine.state(name)["Status"] == "running"


def test_cpus_holds_a_busy_loop_near_half_a_core(engine: Engine) -> None:
    name = engine.name("cpu")
    engine.ok(
        "run", "-d", "--name", name, "--cpus", "0.5", "busybox", "sh", "-c", "while :; do :; done"
    )
    assert engine.exec_ok(name, "cat /sys/fs/cgroup/cpu.max").strip() == "50000 100000"
    # an exec with its own terminal (the agent sets it up inside the container's mounts)
    assert engine.ok("exec", "-t", name, "tty").strip().startswith("/dev/pts/")

    def sample() -> tuple[float, float]:
        """(guest uptime in s, the container's CPU time in s), read in one exec."""
        out = engine.exec_ok(name, "cat /proc/uptime /sys/fs/cgroup/cpu.stat")
        uptime = float(out.split()[0])
        usage = re.search(r"^usage_usec (\d+)$", out, re.M)
        assert usage is not None, out
        return uptime, int(usage.group(1)) / 1e6

    time.sleep(2)  # past the first periods, and the start's own CPU time
    t0, u0 = sample()
    time.sleep(8)
    t1, u1 = sample()
    rate = (u1 - u0) / (t1 - t0)
    assert 0.3 <= rate <= 0.65, f"{rate:.2f} of a CPU over {t1 - t0:.1f} s"
    throttled = engine.exec_ok(name, "cat /sys/fs/cgroup/cpu.stat")
    match = re.search(r"^nr_throttled (\d+)$", throttled, re.M)
    assert match is not None and int(match.group(1)) > 0, throttled


# -- networking ---------------------------------------------------------------------------


class _Token(http.server.BaseHTTPRequestHandler):
    token = b""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.token)))
        self.end_headers()
        self.wfile.write(self.token)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def host_http() -> Iterator[tuple[int, str]]:
    """A web server on the host's 127.0.0.1 (a free port) answering a random token."""
    token = uuid.uuid4().hex
    handler = type("Handler", (_Token,), {"token": token.encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], token
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_bridge_address_and_nat_to_the_host(engine: Engine, host_http: tuple[int, str]) -> None:
    port, token = host_http
    out = engine.ok(
        "run", "--rm", "--name", engine.name("addr"), "busybox", "ip", "-o", "-4", "addr", "show"
    )
    addresses = [ipaddress.ip_interface(a) for a in re.findall(r"inet (\S+)", out)]
    bridge = ipaddress.ip_network("172.17.0.0/16")
    assert [a for a in addresses if a.ip in bridge and a.network == bridge], out

    fetched = engine(
        "run",
        "--rm",
        "--name",
        engine.name("wget"),
        "busybox",
        "wget",  # no -T: Debian's busybox 1.35 wget crashes (SIGSEGV) with it
        "-qO-",
        f"http://10.0.2.2:{port}/",
    )
    assert (fetched.returncode, fetched.stdout) == (0, token), fetched.stderr


def test_network_none_has_only_loopback(engine: Engine) -> None:
    out = engine.ok(
        "run",
        "--rm",
        "--network",
        "none",
        "--name",
        engine.name("none"),
        "busybox",
        "ls",
        "/sys/class/net",
    )
    assert out.split() == ["lo"]


def test_add_host_and_dns_files(engine: Engine) -> None:
    out = engine.ok(
        "run",
        "--rm",
        "--name",
        engine.name("etc"),
        "--add-host",
        "foo:1.2.3.4",
        "--dns",
        "9.9.9.9",
        "busybox",
        "sh",
        "-c",
        "cat /etc/hosts; echo ---; cat /etc/resolv.conf",
    )
    hosts, resolv = out.split("---\n")
    assert re.search(r"^1\.2\.3\.4\s+foo$", hosts, re.M), hosts
    assert re.search(r"^nameserver 9\.9\.9\.9$", resolv, re.M), resolv
    assert [line for line in resolv.splitlines() if line.startswith("nameserver")] == [
        "nameserver 9.9.9.9"
    ]


def test_network_host_sees_the_guest_interfaces(engine: Engine) -> None:
    out = engine.ok(
        "run",
        "--rm",
        "--network",
        "host",
        "--name",
        engine.name("host"),
        "busybox",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
    )
    assert re.search(r"^\d+: eth0\s+inet 10\.0\.2\.15/", out, re.M), out
    assert "vmctl0" in out


# -- confinement --------------------------------------------------------------------------


def test_mount_needs_privileged(engine: Engine) -> None:
    # The image has no /mnt: make it first, so only the mount itself can be refused.
    script = "mkdir -p /mnt && mount -t tmpfs none /mnt && grep ' /mnt tmpfs ' /proc/mounts"
    denied = engine("run", "--rm", "--name", engine.name("nomount"), "busybox", "sh", "-c", script)
    assert denied.returncode != 0, denied.stdout
    assert "/mnt tmpfs" not in denied.stdout
    assert "denied" in denied.stderr.lower() or "not permitted" in denied.stderr.lower(), (
        denied.stderr
    )
    allowed = engine(
        "run", "--rm", "--privileged", "--name", engine.name("mount"), "busybox", "sh", "-c", script
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "/mnt tmpfs" in allowed.stdout


def test_the_vms_disk_cannot_be_read_through_a_device_node(engine: Engine) -> None:
    # CAP_MKNOD is in Docker's default set: the node can be made, but the device filter
    # (cgroup v2 eBPF) refuses to open it; --privileged lifts that.
    script = (
        "set -- $(cat /sys/class/block/vda/dev | tr : ' '); mknod /disk b $1 $2 && "
        "head -c 512 /disk | wc -c"
    )
    denied = engine("run", "--rm", "--name", engine.name("nodisk"), "busybox", "sh", "-c", script)
    assert denied.stdout.strip() == "0", denied.stdout  # the node was made, not opened
    assert "not permitted" in denied.stderr.lower(), denied.stderr
    allowed = engine(
        "run", "--rm", "--privileged", "--name", engine.name("disk"), "busybox", "sh", "-c", script
    )
    assert allowed.returncode == 0 and allowed.stdout.strip() == "512", allowed.stderr


# -- stopping and restarting ----------------------------------------------------------------


def test_stop_kills_a_process_that_ignores_sigterm(engine: Engine) -> None:
    name = engine.name("stubborn")
    script = "trap '' TERM; echo ready; while :; do sleep 1; done"
    engine.ok("run", "-d", "--name", name, "busybox", "sh", "-c", script)
    wait_for(lambda: "ready" in engine.ok("logs", name), 60, "the trap to be set")
    started = time.monotonic()
    engine.ok("stop", "-t", "1", name)
    took = time.monotonic() - started
    state = engine.state(name)
    assert (state["Status"], state["ExitCode"]) == ("exited", 137), state
    assert took >= 1.0, f"docker stop -t 1 returned after {took:.2f} s"


def test_restart_policy_across_a_reboot(engine: Engine) -> None:
    keeper = engine.name("keeper")
    once = engine.name("once")
    engine.ok(
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        keeper,
        "busybox",
        "sh",
        "-c",
        "echo boot; sleep 1000",
    )
    engine.ok("run", "-d", "--restart", "no", "--name", once, "busybox", "sleep", "1000")
    wait_for(lambda: "boot" in engine.ok("logs", keeper), 60, "keeper's first output")

    engine.vm.vmctl("machine", "stop", timeout=300)
    engine.vm.vmctl("machine", "start", timeout=900)

    def keeper_back() -> bool:
        return engine.state(keeper)["Status"] == "running"

    wait_for(keeper_back, 120, "keeper to be restarted after the reboot")
    # One log across runs, as Docker keeps it: the second "boot" is the restarted command.
    wait_for(lambda: engine.ok("logs", keeper).splitlines().count("boot") >= 2, 60, "boot twice")
    assert engine.state(keeper)["Status"] == "running"
    assert engine.state(once)["Status"] == "exited"


def test_containers_outlive_a_killed_agent(engine: Engine) -> None:
    vm = engine.vm
    name = engine.name("survivor")
    # Each second it prints a tick and whatever /tmp/note holds, so output written while
    # the agent is down can be told apart.
    script = "while :; do echo tick; cat /tmp/note 2>/dev/null; sleep 1; done"
    engine.ok("run", "-d", "--name", name, "busybox", "sh", "-c", script)
    wait_for(lambda: "tick" in engine.ok("logs", name), 60, "the first tick")
    pid = engine.state(name)["Pid"]
    assert isinstance(pid, int) and pid > 0

    note = f"written-while-the-agent-was-down-{uuid.uuid4().hex[:8]}"
    old = vm.ssh("cat /run/vmctl/agent.pid").strip()
    # One guest shell kills the agent and writes the note at once: the new agent needs
    # seconds to start under tcg, so the note reaches the log while none runs.
    out = vm.ssh(f"kill -9 {old} && echo {note} > /proc/{pid}/root/tmp/note && echo noted")
    assert out.strip() == "noted"
    wait_for(
        lambda: vm.ssh("cat /run/vmctl/agent.pid", check=False).strip() not in ("", old),
        60,
        "the supervisor to start a new agent",
    )

    def listed_running() -> bool:
        proc = engine("ps", "--format", "{{.Names}} {{.State}}")
        return proc.returncode == 0 and f"{name} running" in proc.stdout.splitlines()

    wait_for(listed_running, 120, "docker ps to list the container as running")
    assert engine.state(name)["Pid"] == pid  # the same process, re-adopted
    wait_for(lambda: note in engine.ok("logs", name), 30, "the note in the logs")
    engine.ok("stop", "-t", "2", name, timeout=120)
    assert engine.state(name)["Status"] == "exited"
