"""`vmctl engine serve`: the engine natively on this host, used by the real docker CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.runtime.conftest import REPO, mounts_under

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"


def test_engine_serve_runs_busybox_for_the_docker_cli() -> None:
    if not os.path.exists(DOCKER):
        pytest.fail("the docker CLI is missing (CI installs it at /usr/local/bin/docker)")
    root = tempfile.mkdtemp(prefix="vmctl-serve-", dir="/var/tmp")
    short = tempfile.mkdtemp(prefix="vs")
    sock = f"{short}/engine.sock"
    argv = ["unshare", "-n", sys.executable, "-m", "vmctl.cli", "engine", "serve"]
    argv += ["--socket", sock, "--root", root, "--run-root", f"{short}/run"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(f"{short}/serve.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    docker_env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": short}
    try:
        deadline = time.monotonic() + 60
        hello = None
        while time.monotonic() < deadline and process.poll() is None:
            hello = subprocess.run(
                [DOCKER, "run", "--rm", "busybox", "echo", "hello"],
                capture_output=True,
                text=True,
                env=docker_env,
                timeout=60,
            )
            if hello.returncode == 0 or "No such image" in hello.stderr:
                break
            time.sleep(0.5)
        assert hello is not None and process.poll() is None, Path(f"{short}/serve.log").read_text()
        assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr
        assert os.stat(sock).st_mode & 0o777 == 0o600
        assert (Path(root) / "preload" / "busybox.tar").exists()
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        assert not os.path.exists(sock)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for mount in reversed(mounts_under(root)):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(short, ignore_errors=True)


def test_engine_serve_refuses_without_root() -> None:
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        + [sys.executable, "-m", "vmctl.cli", "engine", "serve", "--socket", "/tmp/x.sock"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": "/tmp"},
        timeout=60,
    )
    assert result.returncode != 0
    assert "needs root" in result.stderr and "Traceback" not in result.stderr, result.stderr
