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
    """Create or update the context; returns its name, or None without a docker CLI."""
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
    subprocess.run(
        [docker, "context", "rm", "--force", context_name(machine)], capture_output=True, timeout=30
    )
