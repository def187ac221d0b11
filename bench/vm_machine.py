"""A machine for a benchmark: started if it is not running, stopped (and its files kept
for the next run) afterwards if this benchmark started it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def vmctl(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"vmctl {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def machine_socket(name: str, env: dict[str, str] | None = None) -> str:
    """The engine socket of a running machine (from `vmctl machine env`)."""
    text = vmctl("machine", "env", name, "--shell", "bash", env=env)
    host = next(
        line.split("=", 1)[1].strip("'\"") for line in text.splitlines() if "DOCKER_HOST=" in line
    )
    return host.removeprefix("unix://")


@contextlib.contextmanager
def bench_machine(name: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the engine socket of machine ``name``, booting it (without the home share)
    if it is not running, and stopping it afterwards only if this call booted it."""
    status = subprocess.run(
        [sys.executable, "-m", "vmctl.cli", "machine", "status", name, "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    exists = status.returncode == 0
    running = exists and json.loads(status.stdout).get("state") == "running"
    if not exists:
        vmctl("machine", "create", name, "--no-mount", env=env)
    if not running:
        print(f"starting machine {name}…", file=sys.stderr)
        vmctl("machine", "start", name, env=env)
    try:
        yield machine_socket(name, env)
    finally:
        if not running:
            subprocess.run(
                [sys.executable, "-m", "vmctl.cli", "machine", "stop", name],
                cwd=ROOT,
                env=env,
                check=False,
            )
