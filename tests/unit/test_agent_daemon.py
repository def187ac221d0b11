"""``python -m agent`` as a process: its socket, readiness line, signals, and real clients."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import __version__

REPO = Path(__file__).resolve().parents[2]
DOCKER = "/usr/local/bin/docker"
TIMEOUT = 15.0


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env


def start_agent(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO,
        env=agent_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(path: Path, process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        if process.poll() is not None:
            raise AssertionError(f"agent exited early: {process.communicate()}")
        time.sleep(0.02)
    raise AssertionError("agent did not announce readiness")


def wait_for_text(path: Path, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never reached {path}"
        time.sleep(0.02)


def ping(sock_path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(sock_path))
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(signum)
    try:
        return process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class Agent:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.sock = directory / "run" / "engine.sock"
        self.announce = directory / "console"
        self.log = directory / "agent.log"
        self.process = start_agent(
            "--socket", str(self.sock), "--announce", str(self.announce),
            "--log-file", str(self.log),
        )  # fmt: skip
        self.ready_line = wait_for_line(self.announce, self.process)


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    # short, so the socket path stays well under the 108-byte limit of AF_UNIX
    directory = Path(tempfile.mkdtemp(prefix="agd-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(tmp_dir: Path) -> Iterator[Agent]:
    running = Agent(tmp_dir)
    try:
        yield running
    finally:
        stop(running.process)


def test_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--help"],
        cwd=REPO, env=agent_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0
    assert "--socket" in result.stdout and "/run/vmctl/engine.sock" in result.stdout


def test_ready_line_socket_mode_and_directory(agent: Agent) -> None:
    assert agent.ready_line == (f"VMCTL-READY agent={__version__} api=1.50 socket={agent.sock}\n")
    assert stat.S_ISSOCK(agent.sock.lstat().st_mode)
    assert stat.S_IMODE(agent.sock.lstat().st_mode) == 0o600
    assert stat.S_IMODE(agent.sock.parent.stat().st_mode) == 0o700
    assert ping(agent.sock).endswith(b"\r\n\r\nOK")


def test_sigterm_removes_the_socket_and_exits_zero(agent: Agent) -> None:
    assert stop(agent.process, signal.SIGTERM) == 0
    assert not agent.sock.exists()
    assert "shutting down" in agent.log.read_text()


def test_sigint_also_stops_cleanly(agent: Agent) -> None:
    assert stop(agent.process, signal.SIGINT) == 0
    assert not agent.sock.exists()


def test_stale_socket_is_replaced(tmp_dir: Path) -> None:
    sock_path = tmp_dir / "run" / "engine.sock"
    sock_path.parent.mkdir()
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(sock_path))  # bound, never listening, then closed: a crash's leftover
    leftover.close()
    assert sock_path.exists()
    running = Agent(tmp_dir)
    try:
        assert ping(sock_path).endswith(b"OK")
        # logged before logging was set up: written moments later, by the start-up thread
        wait_for_text(running.log, "removing stale socket")
    finally:
        stop(running.process)


def test_live_socket_is_refused(tmp_dir: Path) -> None:
    sock_path = tmp_dir / "engine.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(sock_path))
        other.listen(1)
        process = start_agent("--socket", str(sock_path))
        _stdout, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode != 0
        assert "is in use" in stderr
        assert sock_path.exists()  # the other engine's socket was left alone


def test_a_file_that_is_not_a_socket_is_refused(tmp_dir: Path) -> None:
    path = tmp_dir / "engine.sock"
    path.write_text("precious")
    process = start_agent("--socket", str(path))
    _stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode != 0
    assert "not a socket" in stderr
    assert path.read_text() == "precious"


def test_failed_announce_is_logged_not_fatal(tmp_dir: Path) -> None:
    sock_path = tmp_dir / "engine.sock"
    process = start_agent("--socket", str(sock_path), "--announce", str(tmp_dir / "no/dir/x"))
    try:
        deadline = time.monotonic() + TIMEOUT
        while not sock_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ping(sock_path).endswith(b"OK")
    finally:
        assert stop(process) == 0
    assert "could not announce readiness" in process.stderr.read()  # type: ignore[union-attr]


def test_curl_ping(agent: Agent) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(
        [curl, "-sS", "--unix-socket", str(agent.sock), "http://x/_ping"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "OK"


def test_docker_cli_version(agent: Agent, tmp_dir: Path) -> None:
    if not os.access(DOCKER, os.X_OK):
        pytest.skip(f"{DOCKER} is not installed")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(tmp_dir / "docker-config")  # no user config, no contexts
    result = subprocess.run(
        [DOCKER, "-H", f"unix://{agent.sock}", "version"],
        capture_output=True, text=True, timeout=TIMEOUT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    server = result.stdout.split("Server:", 1)[1]
    assert server.startswith(" vmctl agent")
    assert f"Version:          {__version__}" in server
    assert "API version:      1.50 (minimum version 1.24)" in server
    assert "Go version:       python3." in server
    assert "Experimental:     false" in server
    client = result.stdout.split("Server:", 1)[0]
    assert re.search(r"API version:\s+1\.50\n", client)  # negotiation kept the CLI at 1.50


def test_docker_sdk_negotiates_from_version(agent: Agent) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=f"unix://{agent.sock}", version="auto", timeout=10)
    try:
        assert client.api.api_version == "1.50"
        assert client.ping() is True
        assert client.version()["Components"][0]["Version"] == __version__
    finally:
        client.close()


def test_wait_for_blocks_until_the_path_exists(tmp_path: Path) -> None:
    import threading
    import time

    from agent.daemon import wait_for

    flag = tmp_path / "boot-done"
    done = threading.Event()
    thread = threading.Thread(target=lambda: (wait_for(str(flag), poll=0.01), done.set()))
    thread.start()
    time.sleep(0.2)
    assert not done.is_set()
    flag.touch()
    assert done.wait(5)
    thread.join()


def test_with_wait_for_it_listens_first_and_answers_once_the_wait_ends(tmp_dir: Path) -> None:
    """The VM's order: listen and say so, wait for the boot, open the log, announce, serve;
    a request sent while it waits is answered then, on the same connection."""
    sock_path, console, log_file = tmp_dir / "engine.sock", tmp_dir / "console", tmp_dir / "log"
    boot_done = tmp_dir / "boot-done"
    process = start_agent(
        "--socket", str(sock_path), "--announce", str(console), "--log-file", str(log_file),
        "--wait-for", str(boot_done),
    )  # fmt: skip
    try:
        assert wait_for_line(console, process) == f"vmctl-agent: listening on {sock_path}\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(sock_path))
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(4096)  # not before the boot is over
            assert not log_file.exists()  # the log opens after the wait (the data disk)
            boot_done.touch()
            sock.settimeout(TIMEOUT)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
        assert console.read_text().splitlines()[1].startswith("VMCTL-READY")
        wait_for_text(log_file, "serving API")  # the start-up thread's record
    finally:
        assert stop(process) == 0


def test_a_socket_it_cannot_take_after_the_boot_is_in_the_log(tmp_dir: Path) -> None:
    """Restarted by its supervisor once the boot is over, an agent that cannot listen says
    why in its log (where `vmctl machine logs --agent` looks), not only on stderr."""
    path, log_file, boot_done = tmp_dir / "engine.sock", tmp_dir / "agent.log", tmp_dir / "done"
    path.write_text("precious")
    boot_done.touch()
    process = start_agent(
        "--socket", str(path), "--log-file", str(log_file), "--wait-for", str(boot_done)
    )  # fmt: skip
    _stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1
    assert "not a socket" in stderr and "not a socket" in log_file.read_text()
    assert path.read_text() == "precious"


FIRST_PING_SCRIPT = """
import os, signal, socket, sys, threading
from agent import lazy_import
from agent.daemon import Bound, serve

assert "agent.api.system" not in sys.modules, "the test needs /_ping's handler unimported"
path = sys.argv[1]
locked, release = threading.Event(), threading.Event()

def start_up():
    # what the engine's opener does: hold the deferred-import lock through a long import
    with lazy_import._LOCK:
        locked.set()
        release.wait(60)

def client():
    locked.wait(10)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"GET /_ping HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        try:
            print(sock.recv(4096).split(b"\\r\\n")[0].decode(), flush=True)
        except TimeoutError:
            print("no answer", flush=True)
    release.set()
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=client, daemon=True).start()
sys.exit(serve(Bound(path), start_up=start_up))
"""


def test_first_ping_does_not_wait_for_the_engine_import(tmp_dir: Path) -> None:
    """At boot the engine's opener holds the import lock for seconds; the host's first
    /_ping must not need it (its handler module is imported before the opener starts)."""
    result = subprocess.run(
        [sys.executable, "-c", FIRST_PING_SCRIPT, str(tmp_dir / "e.sock")],
        cwd=REPO, env=agent_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout.strip() == "HTTP/1.1 200 OK", result.stderr
