"""Health checks with the docker CLI against the agent running natively on this host (root).

Intervals are short (1 s or less), so each test takes a few seconds of real time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_suite import DockerCLI, wait_until
from tests.runtime.conftest import REPO, mounts_under, stop_process

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    if os.environ.get("CI") == "true":
        pytest.fail("the health check tests need root", pytrace=False)
    pytest.skip("running containers needs root", allow_module_level=True)

FAST = ["--health-interval", "1s", "--health-timeout", "5s"]


def _health(dk: DockerCLI, name: str) -> dict[str, Any]:
    state = dk.inspect(name)["State"]
    return dict(state.get("Health") or {})


def _status(dk: DockerCLI, name: str) -> str:
    return str(_health(dk, name).get("Status", "none"))


def _ps_names(dk: DockerCLI, *filters: str) -> list[str]:
    args = [arg for f in filters for arg in ("--filter", f)]
    return dk.ok("ps", "-a", *args, "--format", "{{.Names}}").split()


def test_a_passing_check_turns_healthy(dk: DockerCLI) -> None:
    name = dk.name("ok")
    dk.ok(
        "run", "-d", "--name", name, *FAST, "--health-retries", "2",
        "--health-cmd", "test -e /tmp/ready && echo fine",
        "busybox", "sh", "-c", "touch /tmp/ready; exec sleep 300",
    )  # fmt: skip
    assert _status(dk, name) == "starting"
    assert name in _ps_names(dk, "health=starting")
    wait_until(lambda: _status(dk, name) == "healthy", "the check to pass", timeout=20)
    health = _health(dk, name)
    assert health["FailingStreak"] == 0
    entry = health["Log"][-1]
    assert entry["ExitCode"] == 0 and entry["Output"] == "fine\n"
    assert entry["Start"] <= entry["End"]
    status = dk.ok("ps", "--filter", f"name={name}", "--format", "{{.Status}}").strip()
    assert status.startswith("Up ") and status.endswith("(healthy)")
    assert name in _ps_names(dk, "health=healthy")
    assert name not in _ps_names(dk, "health=unhealthy")
    assert name not in _ps_names(dk, "health=none")
    until = str(int(time.time()) + 1)
    events = dk.ok(
        "events", "--since", "0", "--until", until, "--filter", f"container={name}",
        "--filter", "event=health_status", "--format", "{{.Action}}",
    )  # fmt: skip
    assert events.splitlines() == ["health_status: healthy"]
    # the probes are not execs: no exec events, no exec ids
    assert dk.inspect(name)["ExecIDs"] in (None, [])

    # the monitor stops with the container, which then counts as unhealthy
    dk.ok("stop", "-t", "1", name)
    stopped = _health(dk, name)
    assert stopped["Status"] == "unhealthy"
    time.sleep(2.5)
    assert _health(dk, name)["Log"] == stopped["Log"]


def test_a_failing_check_turns_unhealthy_after_its_retries(dk: DockerCLI) -> None:
    name = dk.name("bad")
    dk.ok(
        "run", "-d", "--name", name, *FAST, "--health-retries", "3",
        "--health-cmd", "echo broken >&2; exit 1", "busybox", "sleep", "300",
    )  # fmt: skip
    wait_until(lambda: len(_health(dk, name).get("Log") or []) >= 2, "two probes", timeout=20)
    two = _health(dk, name)
    if len(two["Log"]) == 2:  # not yet the third failure
        assert two["Status"] == "starting" and two["FailingStreak"] == 2
    wait_until(lambda: _status(dk, name) == "unhealthy", "the check to fail", timeout=20)
    health = _health(dk, name)
    assert health["FailingStreak"] >= 3
    assert all(e["ExitCode"] == 1 and e["Output"] == "broken\n" for e in health["Log"])
    assert name in _ps_names(dk, "health=unhealthy")
    status = dk.ok("ps", "--filter", f"name={name}", "--format", "{{.Status}}").strip()
    assert status.endswith("(unhealthy)")
    wait_until(lambda: len(_health(dk, name)["Log"]) == 5, "five results", timeout=20)
    time.sleep(1.5)
    assert len(_health(dk, name)["Log"]) == 5  # only the last five are kept


def test_failures_in_the_start_period_do_not_count(dk: DockerCLI) -> None:
    name = dk.name("slow")
    dk.ok(
        "run", "-d", "--name", name, "--health-interval", "1s", "--health-retries", "1",
        "--health-start-period", "4s", "--health-start-interval", "300ms",
        "--health-cmd", "exit 1", "busybox", "sleep", "300",
    )  # fmt: skip
    started = time.monotonic()
    wait_until(lambda: len(_health(dk, name).get("Log") or []) >= 3, "probes", timeout=20)
    if time.monotonic() - started < 3:  # still inside the start period (probed every 300 ms)
        health = _health(dk, name)
        assert health["Status"] == "starting" and health["FailingStreak"] == 0
    wait_until(lambda: _status(dk, name) == "unhealthy", "the check to count", timeout=20)
    assert time.monotonic() - started > 3


def test_a_probe_that_outlives_its_timeout_is_killed(dk: DockerCLI) -> None:
    name = dk.name("hang")
    dk.ok(
        "run", "-d", "--name", name, "--health-interval", "1s", "--health-timeout", "500ms",
        "--health-retries", "1", "--health-cmd", "sleep 77", "busybox", "sleep", "300",
    )  # fmt: skip
    wait_until(lambda: _status(dk, name) == "unhealthy", "the probe to time out", timeout=20)
    entry = _health(dk, name)["Log"][0]
    assert entry["ExitCode"] == -1
    assert entry["Output"] == "Health check exceeded timeout (500ms)"
    top = dk.ok("top", name)
    assert "sleep 300" in top and "sleep 77" not in top


def test_the_image_check_is_inherited_and_can_be_turned_off(dk: DockerCLI) -> None:
    base = dk.name("base")
    image = dk.name("img")
    dk.images.append(image)
    dk.ok("create", "--name", base, "busybox", "true")
    dk.ok("commit", "-c", 'HEALTHCHECK --interval=1s --retries=1 CMD ["true"]', base, image)
    config = dk.inspect(image)["Config"]["Healthcheck"]
    assert config == {"Test": ["CMD", "true"], "Interval": 1_000_000_000, "Retries": 1}
    inherits = dk.name("inherits")
    dk.ok("run", "-d", "--name", inherits, image, "sleep", "300")
    wait_until(lambda: _status(dk, inherits) == "healthy", "the image's check", timeout=20)
    # a flag overrides one field; the image supplies the rest
    tuned = dk.name("tuned")
    dk.ok("run", "-d", "--name", tuned, "--health-retries", "4", image, "sleep", "300")
    check = dk.inspect(tuned)["Config"]["Healthcheck"]
    assert check["Test"] == ["CMD", "true"] and check["Retries"] == 4
    off = dk.name("off")
    dk.ok("run", "-d", "--name", off, "--no-healthcheck", image, "sleep", "300")
    assert "Health" not in dk.inspect(off)["State"]
    assert off in _ps_names(dk, "health=none")
    assert inherits not in _ps_names(dk, "health=none")
    status = dk.ok("ps", "--filter", f"name={off}", "--format", "{{.Status}}").strip()
    assert status.startswith("Up ") and "(" not in status


def test_bad_checks_are_refused(dk: DockerCLI) -> None:
    bad = dk("run", "--health-cmd", "true", "--health-interval", "1us", "busybox", "true")
    assert bad.returncode != 0
    assert "Interval in Healthcheck cannot be less than 1ms" in bad.stderr
    negative = dk("create", "--health-cmd", "true", "--health-retries", "-1", "busybox", "true")
    assert negative.returncode != 0 and "Traceback" not in negative.stderr


@contextlib.contextmanager
def _serve(root: str, short: str) -> Iterator[DockerCLI]:
    """`vmctl engine serve` on ``root`` until the block ends (SIGTERM: containers run on)."""
    sock = Path(short) / "engine.sock"
    argv = [sys.executable, "-m", "vmctl.cli", "engine", "serve", "--socket", str(sock)]
    argv += ["--root", root, "--run-root", f"{short}/run"]
    with open(Path(short) / "agent.log", "ab") as log:
        process = subprocess.Popen(
            ["unshare", "-n", *argv], stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        cli = DockerCLI(sock, {**os.environ, "DOCKER_CONFIG": short})
        wait_until(lambda: cli("version").returncode == 0, "the agent to answer", timeout=30)
        yield cli
    finally:
        stop_process(process)


def test_health_survives_a_daemon_restart() -> None:
    root = tempfile.mkdtemp(prefix="vmctl-health-", dir="/var/tmp")
    short = tempfile.mkdtemp(prefix="vh")
    name = "health-restart"
    try:
        with _serve(root, short) as dk:
            dk.ok(
                "run", "-d", "--name", name, "--network", "none", *FAST,
                "--health-cmd", "true", "busybox", "sleep", "300",
            )  # fmt: skip
            wait_until(lambda: _status(dk, name) == "healthy", "the check to pass", timeout=20)
        record = json.loads(
            (Path(root) / "containers" / _container_dir(root, name) / "container.json").read_text()
        )
        assert record["state"]["health"]["Status"] == "healthy"
        with _serve(root, short) as dk:
            assert _status(dk, name) == "healthy"
            count = len(_health(dk, name)["Log"])
            last = _health(dk, name)["Log"][-1]["Start"]
            wait_until(
                lambda: _health(dk, name)["Log"][-1]["Start"] > last,
                "a probe after the restart",
                timeout=20,
            )
            assert len(_health(dk, name)["Log"]) >= min(count + 1, 5)
            dk.ok("rm", "-f", name)
    finally:
        for mount in reversed(mounts_under(root)):
            subprocess.run(["umount", "-l", mount], check=False)
        leftover = mounts_under(root)
        subprocess.run(["rm", "-rf", root, short], check=False)
    assert not leftover


def _container_dir(root: str, name: str) -> str:
    for directory in (Path(root) / "containers").iterdir():
        record = directory / "container.json"
        if record.exists() and json.loads(record.read_text()).get("name") == name:
            return directory.name
    raise AssertionError(f"no record of {name}")
