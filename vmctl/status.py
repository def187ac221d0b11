"""status.json: what the host agent last reported about its machine.

The host agent is the only writer; the CLI reads it to follow a start and to explain
a machine's state. Written atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STARTING = "starting"
RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"
FAILED = "failed"


@dataclass
class AgentStatus:
    state: str = STOPPED
    pid: int = 0  # the host agent
    qemu_pid: int = 0
    accel: str = ""
    accel_reason: str = ""
    ssh_port: int = 0
    message: str = ""
    hint: str = ""
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)  # published on the host: "127.0.0.1:80/tcp"
    started_at: float = 0.0
    ready_at: float = 0.0
    updated_at: float = 0.0

    @property
    def boot_seconds(self) -> float | None:
        if self.ready_at and self.started_at:
            return self.ready_at - self.started_at
        return None


def read_status(path: Path) -> AgentStatus | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    known = {k: v for k, v in data.items() if k in AgentStatus.__dataclass_fields__}
    try:
        return AgentStatus(**known)
    except TypeError:
        return None


def write_status(path: Path, status: AgentStatus) -> None:
    status.updated_at = time.time()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(status), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
