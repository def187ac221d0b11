"""A container as the daemon keeps it: Docker's create body, its state, its paths.

The record is persisted as ``container.json`` in the container's directory; the Docker
`Config` and `HostConfig` objects are stored as received (after defaults are merged from the
image) so inspect can give them back and a restarted daemon rebuilds the same container.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

# Docker's status words (State.Status in inspect)
CREATED = "created"
RUNNING = "running"
PAUSED = "paused"
RESTARTING = "restarting"
REMOVING = "removing"
EXITED = "exited"
DEAD = "dead"

ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class State:
    status: str = CREATED
    pid: int = 0  # the init, as the daemon's pid namespace sees it
    shim_pid: int = 0
    shim_start: int = 0  # /proc/<pid>/stat start time: tells a reused pid from our shim
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    restart_count: int = 0
    stopped_by_user: bool = False  # docker stop/kill: "unless-stopped" keeps it down
    has_been_started: bool = False
    # State.Health of a container with a health check (agent.containers.health), else None
    health: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.status in (RUNNING, PAUSED)

    @property
    def started(self) -> bool:
        """Running, or about to run again under its restart policy: `docker start` has
        nothing to do (dockerd counts a restarting container as running)."""
        return self.running or self.status == RESTARTING


@dataclass
class Container:
    id: str
    name: str  # without the leading "/"
    created: str
    image_id: str  # "sha256:…"
    image_name: str  # as the user asked for it ("busybox")
    config: dict[str, Any]  # Docker's Config, image defaults merged
    host_config: dict[str, Any]
    directory: str
    state: State = field(default_factory=State)
    network: dict[str, Any] = field(default_factory=dict)  # IPAddress, Gateway, MacAddress…
    # NetworkingConfig.EndpointsConfig: network name -> Aliases, IPAMConfig… (networks/attachments)
    endpoints_config: dict[str, Any] = field(default_factory=dict)
    mounts: list[dict[str, Any]] = field(default_factory=list)  # inspect's Mounts
    exec_ids: list[str] = field(default_factory=list)

    # --- files in the container's directory ---------------------------------------------
    @property
    def record_file(self) -> str:
        return os.path.join(self.directory, "container.json")

    @property
    def log_file(self) -> str:
        return os.path.join(self.directory, f"{self.id}-json.log")

    @property
    def exit_file(self) -> str:
        return os.path.join(self.directory, "exit.json")

    @property
    def rootfs_dir(self) -> str:
        return os.path.join(self.directory, "rootfs")

    @property
    def merged(self) -> str:
        return os.path.join(self.rootfs_dir, "merged")

    @property
    def upper(self) -> str:
        return os.path.join(self.rootfs_dir, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.rootfs_dir, "work")

    def etc_file(self, name: str) -> str:
        return os.path.join(self.directory, name)  # hostname, hosts, resolv.conf

    # --- persistence --------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        # shallow: asdict() deep-copies the whole config only for json.dumps to read it
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["state"] = {f.name: getattr(self.state, f.name) for f in fields(self.state)}
        return record

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Container:
        state = State(**data.pop("state", {}))
        return cls(state=state, **data)

    def save(self, durable: bool = True) -> None:
        """Replace the record atomically; ``durable`` also waits for the disk. A record the
        shim's exit.json can rebuild (an exit, a removal) need not wait."""
        temporary = self.record_file + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(json.dumps(self.to_json()))  # one write: json.dump writes in pieces
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, self.record_file)

    @classmethod
    def load(cls, directory: str) -> Container:
        with open(os.path.join(directory, "container.json")) as handle:
            data = json.load(handle)
        data["directory"] = directory
        return cls.from_json(data)
