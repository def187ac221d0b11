"""`vmctl run`, `ps`, `logs`, `exec`, … as a user runs them, against a native agent (root).

The agent runs on this host in a private network namespace (its default bridge lives and
dies there), with its root under /var/tmp; the CLI is run as a subprocess pointed at its
socket through VMCTL_HOST (VMCTL_HOME is a temp dir, so no machine is ever touched).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.runtime.conftest import REPO, TIMEOUT
from tests.runtime.conftest import NativeAgent as Agent

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)
if shutil.which("unshare") is None:
    pytest.skip("util-linux's unshare is missing", allow_module_level=True)


def names(agent: Agent) -> set[str]:
    return {c["Names"][0].lstrip("/") for c in agent.client.list_containers(all=True)}


# -- run ---------------------------------------------------------------------------------


def test_run_prints_output_and_exits_with_the_containers_code(agent: Agent) -> None:
    hello = agent.vmctl("run", "--rm", "busybox", "echo", "hello")
    assert (hello.returncode, hello.stdout, hello.stderr) == (0, "hello\n", "")
    three = agent.vmctl("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (three.returncode, three.stdout, three.stderr) == (3, "out\n", "err\n")
    assert not names(agent), "--rm containers must be gone"


def test_run_reports_what_cannot_run(agent: Agent) -> None:
    missing = agent.vmctl("run", "--rm", "busybox", "no-such-command")
    assert missing.returncode == 127, missing.stderr
    assert missing.stderr.startswith("error: ") and "executable file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    image = agent.vmctl("run", "--rm", "no-such-image")
    assert image.returncode == 125
    assert "Unable to find image 'no-such-image:latest' locally" in image.stderr
    assert "error: No such image" in image.stderr and "hint: " in image.stderr
    assert not names(agent), "a --rm container that never started must be removed too"


def test_run_passes_options_through(agent: Agent) -> None:
    result = agent.vmctl(
        "run", "--rm", "--network", "none", "-e", "GREETING=hi there", "-w", "/tmp",
        "-u", "nobody", "--entrypoint", "sh", "busybox", "-c", 'echo "$GREETING"; pwd; id -u',
    )  # fmt: skip
    assert result.stdout.split("\n")[:3] == ["hi there", "/tmp", "65534"], result.stderr
    named = agent.vmctl("run", "--name", "keepme", "busybox", "true", check=True)
    assert named.stdout == ""
    assert "keepme" in names(agent)
    agent.vmctl("rm", "keepme", check=True)


def test_stdin_is_forwarded_and_closed_at_eof(agent: Agent) -> None:
    echoed = agent.vmctl("run", "-i", "--rm", "busybox", "cat", input=b"data\n")
    assert (echoed.returncode, echoed.stdout) == (0, "data\n")
    big = b"x" * (3 << 20)
    counted = agent.vmctl("run", "-i", "--rm", "busybox", "wc", "-c", input=big)
    assert counted.stdout.strip() == str(len(big)), counted.stderr


def run_in_pty(agent: Agent, argv: list[str], keys: bytes = b"") -> tuple[int, bytes, list[int]]:
    """Run vmctl on a new terminal of 33x101; its exit code, output, and the terminal's
    lflag before and after (raw mode must be undone)."""
    pid, master = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "vmctl.cli", *argv], agent.env)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    before = termios.tcgetattr(master)[3]
    output = b""
    deadline = time.monotonic() + TIMEOUT
    sent = False
    while time.monotonic() < deadline:
        if keys and not sent and b"# " in output:  # the shell's prompt
            os.write(master, keys)
            sent = True
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child side closed
            break
        if not data:
            break
        output += data
    _, status = os.waitpid(pid, 0)
    after = termios.tcgetattr(master)[3]
    os.close(master)
    return os.waitstatus_to_exitcode(status), output, [before, after]


def test_tty_run_through_a_terminal(agent: Agent) -> None:
    code, output, (before, after) = run_in_pty(
        agent,
        ["run", "-it", "--rm", "busybox", "sh"],
        keys=b"tty; stty size; echo sum=$((6*7))\rexit 4\r",
    )
    assert code == 4, output
    assert b"/dev/pts/0\r\n" in output
    assert b"33 101\r\n" in output  # the terminal's size reached the container
    assert b"sum=42\r\n" in output
    assert before & termios.ICANON and before & termios.ECHO
    assert after == before, "the terminal must leave raw mode"


# -- the other verbs ---------------------------------------------------------------------


def test_detached_logs_follow_and_stop(agent: Agent) -> None:
    script = "trap 'echo bye; exit 0' TERM; echo one; sleep 0.3; echo two >&2; "
    script += "while true; do sleep 0.1; done"
    started = agent.vmctl("run", "-d", "--name", "follow-me", "busybox", "sh", "-c", script)
    assert started.returncode == 0, started.stderr
    container_id = started.stdout.strip()
    assert len(container_id) == 64 and container_id.isalnum()
    follower = agent.popen(
        "logs", "-f", "follow-me", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b"two" not in (
            agent.vmctl("logs", "follow-me").stderr.encode()
        ):
            time.sleep(0.1)
        stopped = agent.vmctl("stop", "-t", "5", "follow-me")
        assert (stopped.returncode, stopped.stdout) == (0, "follow-me\n")
        out, err = follower.communicate(timeout=15)  # -f ends when the container does
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0
    assert out == b"one\nbye\n" and err == b"two\n"
    tail = agent.vmctl("logs", "--tail", "1", "-t", "follow-me")
    assert tail.stdout.endswith(" bye\n") and tail.stdout[:4].isdigit()
    state = json.loads(agent.vmctl("inspect", "follow-me", check=True).stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    agent.vmctl("rm", "follow-me", check=True)


def test_ps_lists_and_formats_json(agent: Agent) -> None:
    agent.vmctl("run", "-d", "--name", "lister", "busybox", "sleep", "60", check=True)
    agent.vmctl("run", "--name", "done-already", "busybox", "true", check=True)
    try:
        table = agent.vmctl("ps", check=True).stdout.splitlines()
        assert table[0].split() == [
            "CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES",
        ]  # fmt: skip
        assert len(table) == 2 and table[1].endswith("lister")
        assert '"sleep 60"' in table[1] and " Up " in table[1]
        listing = agent.vmctl("ps", "-a", "--format", "json", check=True).stdout
        rows = [json.loads(line) for line in listing.splitlines()]
        by_name = {row["Names"]: row for row in rows}
        assert set(by_name) == {"lister", "done-already"}
        assert by_name["lister"]["State"] == "running"
        assert by_name["done-already"]["Status"].startswith("Exited (0)")
        assert by_name["lister"]["Command"] == '"sleep 60"'
        assert by_name["lister"]["RunningFor"].endswith(" ago")
        quiet = agent.vmctl("ps", "-q", check=True).stdout.split()
        assert len(quiet) == 1 and len(quiet[0]) == 12
    finally:
        agent.vmctl("rm", "-f", "lister", "done-already", check=True)


def test_exec_exit_code_stdin_and_errors(agent: Agent) -> None:
    agent.vmctl("run", "-d", "--name", "exec-target", "busybox", "sleep", "60", check=True)
    try:
        five = agent.vmctl("exec", "exec-target", "sh", "-c", "echo in; echo err >&2; exit 5")
        assert (five.returncode, five.stdout, five.stderr) == (5, "in\n", "err\n")
        script = 'cat; echo "$X"'
        piped = agent.vmctl(
            "exec", "-i", "-e", "X=1", "exec-target", "sh", "-c", script, input=b"abc\n"
        )
        assert (piped.returncode, piped.stdout) == (0, "abc\n1\n"), piped.stderr
        missing = agent.vmctl("exec", "exec-target", "no-such-command")
        # as with dockerd, the start failure is told in the exec's own output stream
        assert missing.returncode == 127
        assert "executable file not found" in missing.stdout + missing.stderr
    finally:
        agent.vmctl("rm", "-f", "exec-target", check=True)
    gone = agent.vmctl("exec", "exec-target", "true")
    assert gone.returncode == 1 and "No such container" in gone.stderr
    assert "hint: list containers with: vmctl ps -a" in gone.stderr


def test_rm_force_kill_restart_start_attach(agent: Agent) -> None:
    agent.vmctl("run", "-d", "--name", "victim", "busybox", "sleep", "60", check=True)
    restarted = agent.vmctl("restart", "-t", "1", "victim")
    assert (restarted.returncode, restarted.stdout) == (0, "victim\n"), restarted.stderr
    killed = agent.vmctl("kill", "-s", "KILL", "victim", check=True)
    assert killed.stdout == "victim\n"
    state = agent.client.inspect_container("victim")["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 137)
    removed = agent.vmctl("rm", "-f", "victim", check=True)
    assert removed.stdout == "victim\n" and "victim" not in names(agent)
    assert agent.vmctl("rm", "-f", "victim").returncode == 0  # -f: absent is fine
    absent = agent.vmctl("rm", "victim")
    assert absent.returncode == 1 and "No such container: victim" in absent.stderr
    agent.vmctl("run", "--name", "again", "busybox", "sh", "-c", "echo ran; exit 6")
    attached = agent.vmctl("start", "-a", "again")
    assert (attached.returncode, attached.stdout) == (6, "ran\n")
    assert agent.vmctl("start", "again", check=True).stdout == "again\n"
    agent.vmctl("rm", "-f", "again", check=True)


def test_signals_reach_the_container_and_host_flag_works(agent: Agent) -> None:
    script = "trap 'echo got TERM; exit 4' TERM; echo ready; sleep 60 & wait"
    process = agent.popen(
        "run", "--rm", "--host", f"unix://{agent.socket}", "busybox", "sh", "-c", script,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert out == b"got TERM\n" and process.returncode == 4


def test_unreachable_engine_is_a_clear_error(agent: Agent, tmp_path: Path) -> None:
    result = agent.vmctl("ps", "--host", f"unix://{tmp_path}/nothing.sock")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: the engine is not running at {tmp_path}")
    assert "hint: " in result.stderr and "Traceback" not in result.stderr
