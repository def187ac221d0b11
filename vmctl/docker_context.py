"""A docker CLI context per machine (`vmctl-<name>`), so `docker --context` finds it.

It is created or updated at start, never made current: switching the user's context
behind their back would redirect every other docker command they run.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def context_name(machine: str) -> str:
    return f"vmctl-{machine}"


def ensure_context(machine: str, engine_socket: Path) -> str | None:
    """Create or update the context; its name, or None (no docker CLI, or it failed:
    the context is a convenience and never fails a start)."""
    try:
        return _ensure_context(machine, engine_socket)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("docker context for %s not written: %s", machine, e)
        return None


def _ensure_context(machine: str, engine_socket: Path) -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    name = context_name(machine)
    host = f"host=unix://{engine_socket}"
    exists = (
        subprocess.run(
            [docker, "context", "inspect", name], capture_output=True, timeout=30
        ).returncode
        == 0
    )
    argv = [
        docker,
        "context",
        "update" if exists else "create",
        name,
        "--description",
        f"vmctl machine {machine}",
        "--docker",
        host,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        log.warning("docker context %s failed: %s", name, result.stderr.strip())
        return None
    return name


def remove_context(machine: str) -> None:
    docker = shutil.which("docker")
    if docker is None:
        return
    try:
        subprocess.run(
            [docker, "context", "rm", "--force", context_name(machine)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("docker context for %s not removed: %s", machine, e)
