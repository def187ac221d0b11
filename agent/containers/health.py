"""Health checks: the image's or the container's ``Healthcheck``, probed while it runs.

One monitor thread per running container with a check runs the test inside the container
the way `docker exec` runs a command (same namespaces, cgroup, user and confinement), but
without exec records or exec events, as dockerd's probes. ``["CMD", argv…]`` runs argv,
``["CMD-SHELL", text]`` runs the image's shell (``/bin/sh -c``) with the text, ``["NONE"]``
turns an inherited check off. A probe that outlives its timeout is killed (its exit code
is then -1).

State.Health follows dockerd: "starting" from each start, "healthy" after a probe exits 0,
"unhealthy" after ``Retries`` failures in a row (failures inside the start period do not
count while it is still starting); the last five results are kept, their output cut at
4096 bytes. A status change is the container event ``health_status: <status>``. The health
is part of the container record, so it survives a daemon restart, whose re-adoption of a
running container arms its monitor again; a container that stops is "unhealthy", as
dockerd reports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.containers.model import PAUSED, RUNNING, Container
from agent.errors import BadRequest
from agent.runtime import launch, nsexec, users
from agent.runtime.logfile import parse_timestamp, timestamp

if TYPE_CHECKING:
    from agent.containers.manager import ContainerManager

log = logging.getLogger(__name__)

STARTING, HEALTHY, UNHEALTHY, NO_CHECK = "starting", "healthy", "unhealthy", "none"
SECOND = 1_000_000_000  # the API gives durations in nanoseconds
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_INTERVAL = 5 * SECOND
DEFAULT_RETRIES = 3
MIN_DURATION = 1_000_000  # dockerd refuses durations under 1 ms (0 means the default)
LOG_ENTRIES = 5
MAX_OUTPUT = 4096
DEFAULT_SHELL = ["/bin/sh", "-c"]
_DURATIONS = ("Interval", "Timeout", "StartPeriod", "StartInterval")


@dataclass(frozen=True)
class Probe:
    argv: list[str]
    interval: float  # seconds
    timeout: float
    start_period: float
    start_interval: float
    retries: int


def validate(check: Any) -> None:
    """Refuse a Healthcheck dockerd would refuse (400), before anything is created."""
    if check is None:
        return
    if not isinstance(check, dict):
        raise BadRequest("Healthcheck must be an object")
    test = check.get("Test")
    if test is not None and (
        not isinstance(test, list) or not all(isinstance(word, str) for word in test)
    ):
        raise BadRequest("Healthcheck Test must be a list of strings")
    if test and test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise BadRequest(f"unknown Healthcheck Test type {test[0]!r} (CMD, CMD-SHELL or NONE)")
    if test and test[0] == "CMD-SHELL" and len(test) != 2:
        raise BadRequest("Healthcheck CMD-SHELL takes exactly one string (the shell command)")
    if test and test[0] == "CMD" and len(test) < 2:
        raise BadRequest("Healthcheck CMD needs a command")
    for key in _DURATIONS:
        value = check.get(key) or 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"Healthcheck {key} must be a duration in nanoseconds")
        if value and value < MIN_DURATION:
            raise BadRequest(f"{key} in Healthcheck cannot be less than 1ms")
    retries = check.get("Retries") or 0
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise BadRequest("Retries in Healthcheck cannot be negative")


def merge_healthcheck(mine: Any, image: Any) -> Any:
    """dockerd's merge of a container's (or commit's) check with the image's: a missing
    check is the image's, a given one takes the image's values for what it leaves zero."""
    if not isinstance(image, dict):
        return mine
    if not isinstance(mine, dict):
        return dict(image)
    merged = dict(mine)
    for key in ("Test", *_DURATIONS, "Retries"):
        if not merged.get(key) and image.get(key):
            merged[key] = image[key]
    return merged


def probe_of(config: dict[str, Any]) -> Probe | None:
    """The probe a container config asks for; None when it has no check (or NONE)."""
    check = config.get("Healthcheck")
    if not isinstance(check, dict):
        return None
    test = check.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        argv = [*(config.get("Shell") or DEFAULT_SHELL), *test[1:2]]
    elif test[0] == "CMD":
        argv = list(test[1:])
    else:
        return None
    if not argv:
        return None

    def seconds(key: str, default: int) -> float:
        return float(check.get(key) or default) / SECOND

    retries = check.get("Retries") or DEFAULT_RETRIES
    return Probe(
        argv=argv,
        interval=seconds("Interval", DEFAULT_INTERVAL),
        timeout=seconds("Timeout", DEFAULT_TIMEOUT),
        start_period=seconds("StartPeriod", 0),
        start_interval=seconds("StartInterval", DEFAULT_START_INTERVAL),
        retries=int(retries),
    )


def status_of(container: Container) -> str:
    """What `docker ps --filter health=…` compares: "none" without a check."""
    health = container.state.health
    return str(health.get("Status") or STARTING) if health else NO_CHECK


def status_suffix(container: Container) -> str:
    """`docker ps`'s words after "Up 5 seconds": " (healthy)", " (health: starting)"."""
    status = status_of(container)
    if status == NO_CHECK:
        return ""
    return " (health: starting)" if status == STARTING else f" ({status})"


@dataclass(frozen=True)
class Result:
    start: str
    end: str
    exit_code: int
    output: str

    def to_json(self) -> dict[str, Any]:
        return {
            "Start": self.start,
            "End": self.end,
            "ExitCode": self.exit_code,
            "Output": self.output,
        }


class HealthMonitors:
    """The monitor threads of one ContainerManager's running containers."""

    def __init__(self, manager: ContainerManager) -> None:
        self.manager = manager
        self._stops: dict[str, threading.Event] = {}

    def arm(self, container: Container, fresh: bool) -> None:
        """The container runs (``fresh``: it was just started, not re-adopted): start its
        monitor. The caller holds the manager's lock and saves the record."""
        self._cancel(container.id)
        probe = probe_of(container.config)
        if probe is None:
            container.state.health = None
            return
        health = container.state.health
        if fresh or not health:
            # as dockerd: a start begins "starting" again and keeps the earlier results
            log_entries = list(health.get("Log") or []) if health else []
            container.state.health = {"Status": STARTING, "FailingStreak": 0, "Log": log_entries}
        stop = threading.Event()
        self._stops[container.id] = stop
        threading.Thread(
            target=self._monitor,
            args=(container, probe, stop),
            name=f"health-{container.id[:12]}",
            daemon=True,
        ).start()

    def disarm(self, container: Container) -> None:
        """The container stopped: its monitor ends, its health is "unhealthy" (dockerd's
        word for a check that no longer runs). The caller holds the lock and saves."""
        self._cancel(container.id)
        if container.state.health:
            container.state.health["Status"] = UNHEALTHY

    def close(self) -> None:
        """Daemon shutdown: monitors end; the records keep the health they had."""
        for container_id in list(self._stops):
            self._cancel(container_id)

    def _cancel(self, container_id: str) -> None:
        stop = self._stops.pop(container_id, None)
        if stop is not None:
            stop.set()

    # --- the monitor thread -------------------------------------------------------------
    def _monitor(self, container: Container, probe: Probe, stop: threading.Event) -> None:
        started = _seconds(container.state.started_at)
        while True:
            in_start_period = (
                status_of(container) == STARTING
                and probe.start_period > 0
                and time.time() < started + probe.start_period
            )
            if stop.wait(probe.start_interval if in_start_period else probe.interval):
                return
            if container.state.status != RUNNING:
                continue  # paused (or on its way out): no probe, as no exec could run
            try:
                result = self._probe(container, probe)
            except Exception:  # a monitor must not die of one odd probe
                log.exception("%s: health probe failed", container.id[:12])
                continue
            self._record(container, probe, result, stop, started)

    def _probe(self, container: Container, probe: Probe) -> Result:
        manager = self.manager
        begin = timestamp()
        try:
            process = manager.prepare.process(container, {"Cmd": probe.argv})
            host_config = container.host_config
            privileged = bool(host_config.get("Privileged"))
            seccomp_filter = (
                None if privileged else manager.prepare.seccomp_for(process, host_config)
            )
            cgroup = manager.cgroup_of(container)
            procs = str(cgroup.path / "cgroup.procs") if cgroup is not None else None
            handle = nsexec.start(container.state.pid, procs, process, seccomp_filter)
        except (launch.StartError, users.UserError, OSError) as error:
            return Result(begin, timestamp(), -1, f"cannot run the health check: {error}")
        output, timed_out = _collect(handle, probe.timeout)
        if timed_out:
            _kill_below(handle.pid)
        code = _reap(handle.pid)
        handle.close()
        text = output[:MAX_OUTPUT].decode(errors="replace")
        if timed_out:
            return Result(
                begin, timestamp(), -1, f"Health check exceeded timeout ({_go(probe.timeout)})"
            )
        return Result(begin, timestamp(), code, text)

    def _record(
        self,
        container: Container,
        probe: Probe,
        result: Result,
        stop: threading.Event,
        started: float,
    ) -> None:
        with self.manager._lock:
            health = container.state.health
            if stop.is_set() or health is None or container.state.status not in (RUNNING, PAUSED):
                return  # the container stopped meanwhile: disarm() has the last word
            before = health.get("Status")
            health["Log"] = [*(health.get("Log") or []), result.to_json()][-LOG_ENTRIES:]
            if result.exit_code == 0:
                health["FailingStreak"] = 0
                health["Status"] = HEALTHY
            elif not (before == STARTING and _seconds(result.start) < started + probe.start_period):
                health["FailingStreak"] = int(health.get("FailingStreak") or 0) + 1
                if health["FailingStreak"] >= probe.retries:
                    health["Status"] = UNHEALTHY
            status = health["Status"]
            if container.id in self.manager._containers:
                container.save(durable=False)
        if status != before:
            self.manager.on_event(f"health_status: {status}", container, {})


def _seconds(text: str) -> float:
    try:
        return parse_timestamp(text) / SECOND
    except ValueError:
        return time.time()


def _go(seconds: float) -> str:
    """A duration as Go prints it: "500ms", "1.5s", "2m0s", "1h0m5s"."""
    ns = round(seconds * SECOND)
    if ns < SECOND:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size or unit == "ns":
                return f"{_fraction(ns, size)}{unit}"
    hours, rest = divmod(ns, 3600 * SECOND)
    minutes, rest = divmod(rest, 60 * SECOND)
    text = f"{_fraction(rest, SECOND)}s"
    if hours or minutes:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return text


def _fraction(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    digits = f"{part:0{len(str(unit)) - 1}d}".rstrip("0") if unit > 1 else ""
    return f"{whole}.{digits}" if digits else str(whole)


def _collect(handle: nsexec.ExecProcess, timeout: float) -> tuple[bytes, bool]:
    """Read the probe's stdout and stderr (together, as dockerd) until both close or the
    timeout passes; (output, timed out)."""
    deadline = time.monotonic() + timeout
    open_fds = [fd for fd in (handle.stdout, handle.stderr) if fd is not None]
    output = bytearray()
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(output), True
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                open_fds.remove(fd)
            elif len(output) < MAX_OUTPUT:
                output += data
    return bytes(output), False


def _reap(pid: int, grace: float = 5.0) -> int:
    """The helper's exit code; it is killed if it does not end within ``grace``."""
    deadline = time.monotonic() + grace
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return -1
        if done:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            grace, deadline = 0, time.monotonic() + 5
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(word) for word in handle.read().split()]
    return found


def _kill_below(pid: int) -> None:
    """SIGKILL every process under ``pid`` (the probe command the exec helper waits for,
    and what that started), so the helper exits too."""
    pending, doomed = _children(pid), []
    while pending:
        child = pending.pop()
        doomed.append(child)
        pending += _children(child)
    for child in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
