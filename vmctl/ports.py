"""Published ports on the host: the host agent's side of `docker run -p` for a machine.

Data path: QEMU's user-mode network forwards host ``HostIp:H`` to the guest's ``10.0.2.15:H``
(a `hostfwd`, added and removed at run time through QMP's ``human-monitor-command``; TCP
and UDP, no SSH on the way), where the engine's DNAT takes it to the container.

Control path: the host agent keeps ``GET /_vmctl/publisher`` open to the guest engine over
its SSH transport (see agent/api/publisher.py). The engine asks for each container's ports
before the container runs and waits for the answer, so a host port already in use fails
`docker run` with our message and nothing half-published. On each (re)connection the engine
first sends every port it publishes ("sync"): forwards beyond those are dropped, missing
ones added, which re-establishes them after a restart of either agent.

A binding without HostIp is published on the host's 127.0.0.1 only; any HostIp given is
used as asked (`-p 0.0.0.0:8080:80` listens on every interface of the host).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmctl.guest_events import EngineStream, Stream, StreamError, _close, _Reader

log = logging.getLogger(__name__)

NETDEV = "net0"  # the user-mode netdev's id (vmctl/qemu.py)
DEFAULT_HOST_IP = "127.0.0.1"  # "only there unless asked"
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
MAX_LINE = 1024 * 1024


@dataclass(frozen=True, order=True)
class Forward:
    proto: str  # "tcp" or "udp"
    host_ip: str
    host_port: int

    def describe(self) -> str:
        return f"{self.host_ip}:{self.host_port}/{self.proto}"


def host_address(requested: str) -> str:
    """Where on the host a binding listens: its HostIp, or 127.0.0.1 when none was given."""
    text = (requested or "").strip().strip("[]")
    if not text:
        return DEFAULT_HOST_IP
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid host IP address {requested!r}") from None
    if address.version != 4:
        raise ValueError(f"IPv6 host addresses are not supported ({requested})")
    return str(address)


def forward_for(port: dict[str, Any]) -> Forward:
    """A port of the engine's request: {"proto", "host_ip", "host_port"}."""
    proto = str(port.get("proto", "tcp"))
    if proto not in ("tcp", "udp"):
        raise ValueError(f"unsupported protocol {proto!r}")
    number = int(port.get("host_port", 0))
    if not 0 < number < 65536:
        raise ValueError(f"invalid host port {number}")
    return Forward(proto, host_address(str(port.get("host_ip") or "")), number)


def hostfwd_add_command(forward: Forward) -> str:
    """The monitor command forwarding the host port to the same port of the guest."""
    return (
        f"hostfwd_add {NETDEV} {forward.proto}:{forward.host_ip}:{forward.host_port}"
        f"-:{forward.host_port}"
    )


def hostfwd_remove_command(forward: Forward) -> str:
    return f"hostfwd_remove {NETDEV} {forward.proto}:{forward.host_ip}:{forward.host_port}"


def forwards_in_usernet(listing: str, guest_ssh_port: int = 22) -> list[Forward]:
    """The port forwards `info usernet` shows that this module would have made (host port
    equal to guest port; not the SSH one), e.g. left by a host agent that was restarted.

    Its lines look like ``TCP[HOST_FORWARD]  8   127.0.0.1 18555   10.0.2.15 18555  0  0``
    (``*`` for 0.0.0.0)."""
    found = []
    for line in listing.splitlines():
        words = line.split()
        if len(words) < 6 or "[HOST_FORWARD]" not in words[0]:
            continue
        proto = words[0].split("[", 1)[0].lower()
        host_ip = "0.0.0.0" if words[2] == "*" else words[2]
        try:
            host_port, guest_port = int(words[3]), int(words[5])
        except ValueError:
            continue
        if proto in ("tcp", "udp") and host_port == guest_port != guest_ssh_port:
            found.append(Forward(proto, host_ip, host_port))
    return found


def check_free(forward: Forward) -> str:
    """ "" if the host port can be bound now, else why not (QEMU's own error says little)."""
    kind = socket.SOCK_STREAM if forward.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if forward.proto == "tcp" and hasattr(socket, "SO_REUSEADDR"):
            # as QEMU binds it; TIME_WAIT leftovers do not block it
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((forward.host_ip, forward.host_port))
        except OSError as error:
            reason = (error.strerror or str(error)).lower()
            return f"host port {forward.describe()} is not available on the host: {reason}"
    return ""


def qmp_monitor(qmp_socket: Path) -> Callable[[str], str]:
    """Run one human monitor command through QMP; its output (empty on success)."""

    def run(command: str) -> str:
        from qemu.qmp.legacy import QEMUMonitorProtocol

        monitor = QEMUMonitorProtocol(str(qmp_socket))
        monitor.settimeout(5)
        monitor.connect()
        try:
            return str(monitor.cmd("human-monitor-command", **{"command-line": command}) or "")
        finally:
            monitor.close()

    return run


class HostForwards:
    """The forwards this machine holds on the host, by container."""

    def __init__(
        self,
        monitor: Callable[[str], str],
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.on_change = on_change  # told the listing after each change (status.json)
        self._lock = threading.Lock()
        self.by_container: dict[str, list[Forward]] = {}
        self._looked_for_leftovers = False

    def publish(self, container: str, ports: list[dict[str, Any]]) -> str:
        """Forward every port of a container, or none: the error, "" when all are up."""
        try:
            wanted = [forward_for(p) for p in ports]
        except (ValueError, TypeError) as invalid:
            return str(invalid)
        with self._lock:
            self._withdraw(container)
            held = {f for forwards in self.by_container.values() for f in forwards}
            done: list[Forward] = []
            for forward in wanted:
                if forward in held or forward in done:
                    error = f"host port {forward.describe()} is already published by the machine"
                else:
                    error = check_free(forward) or self._add(forward)
                if error:
                    for added in done:
                        self._remove(added)
                    return error
                done.append(forward)
            if done:
                self.by_container[container] = done
                self._changed()
                log.info(
                    "published %s for container %s",
                    ", ".join(f.describe() for f in done),
                    container[:12],
                )
        return ""

    def withdraw(self, container: str) -> None:
        with self._lock:
            self._withdraw(container)

    def sync(self, containers: dict[str, list[dict[str, Any]]]) -> None:
        """The engine's full list: drop what it no longer publishes, add what is missing."""
        with self._lock:
            if not self._looked_for_leftovers:
                self._looked_for_leftovers = True
                self._adopt_leftovers(containers)
            stale = [c for c in self.by_container if c not in containers]
        for container in stale:
            self.withdraw(container)
        for container, ports in containers.items():
            try:
                wanted = sorted(forward_for(p) for p in ports)
            except (ValueError, TypeError):
                wanted = []
            if sorted(self.by_container.get(container, [])) == wanted:
                continue
            error = self.publish(container, ports)
            if error:
                log.warning("cannot re-publish ports of container %s: %s", container[:12], error)

    def clear(self) -> None:
        with self._lock:
            for container in list(self.by_container):
                self._withdraw(container)

    def listing(self) -> list[str]:
        with self._lock:
            return self._listing()

    def _listing(self) -> list[str]:
        return sorted(f.describe() for fs in self.by_container.values() for f in fs)

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self._listing())
            except Exception:
                log.exception("reporting the published ports failed")

    def _adopt_leftovers(self, containers: dict[str, list[dict[str, Any]]]) -> None:
        """A new host agent for a running QEMU: keep the forwards still asked for (they
        work as they are), remove the others."""
        try:
            leftovers = set(forwards_in_usernet(self.monitor("info usernet")))
        except Exception as error:
            log.warning("cannot list QEMU's port forwards: %s", error)
            return
        for container, ports in containers.items():
            try:
                wanted = [forward_for(p) for p in ports]
            except (ValueError, TypeError):
                continue
            if wanted and all(f in leftovers for f in wanted):
                self.by_container[container] = wanted
                leftovers.difference_update(wanted)
                self._changed()
        for forward in sorted(leftovers):
            self._remove(forward)

    def _withdraw(self, container: str) -> None:
        forwards = self.by_container.pop(container, [])
        for forward in forwards:
            self._remove(forward)
        if forwards:
            self._changed()
            log.info("withdrew %s", ", ".join(f.describe() for f in forwards))

    def _add(self, forward: Forward) -> str:
        try:
            said = self.monitor(hostfwd_add_command(forward)).strip()
        except Exception as error:  # QMP unreachable: QEMU is going away
            return f"cannot reach QEMU's monitor: {error}"
        return f"QEMU refused to forward {forward.describe()}: {said}" if said else ""

    def _remove(self, forward: Forward) -> None:
        try:
            said = self.monitor(hostfwd_remove_command(forward)).strip()
        except Exception as error:
            log.warning("cannot remove the forward of %s: %s", forward.describe(), error)
            return
        if "removed" not in said:  # QEMU says "host forwarding rule for … removed"
            log.warning("removing the forward of %s: %s", forward.describe(), said)


class PortPublisher(EngineStream):
    """Keeps the publisher stream open (reconnecting with back-off) and answers requests."""

    what = "port publisher stream"

    def __init__(self, open_stream: Callable[[], Stream], forwards: HostForwards) -> None:
        super().__init__(open_stream)
        self.forwards = forwards
        self.synced = threading.Event()  # the engine's first list has been applied

    def request_path(self) -> str:
        return "/_vmctl/publisher"

    def handle_line(self, line: bytes) -> None:
        self._handle(line)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.forwards.clear()

    def _handle(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("ignoring an unreadable publisher request: %r", line[:200])
            return
        if not isinstance(message, dict):
            return
        op = message.get("op")
        error = ""
        if op == "sync":
            self.forwards.sync(dict(message.get("containers") or {}))
            self.synced.set()
        elif op == "publish":
            error = self.forwards.publish(
                str(message.get("container", "")), list(message.get("ports") or [])
            )
        elif op == "withdraw":
            self.forwards.withdraw(str(message.get("container", "")))
        else:
            error = f"unknown publisher operation {op!r}"
        if op in ("publish",) or error:
            # answered beside the stream, so the next request is read meanwhile
            threading.Thread(
                target=self._answer, args=(message.get("id"), error), daemon=True
            ).start()

    def _answer(self, request_id: object, error: str) -> None:
        body = json.dumps({"error": error}).encode()
        try:
            stream = self.open_stream()
        except Exception as failure:
            log.warning("cannot answer publish request %s: %s", request_id, failure)
            return
        try:
            stream.sendall(
                f"POST /_vmctl/publisher/{request_id} HTTP/1.1\r\nHost: engine\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            status, _ = _Reader(stream).head()
            if status >= 300:
                log.warning("the engine refused the answer to request %s: %s", request_id, status)
        except (StreamError, OSError) as failure:
            log.warning("cannot answer publish request %s: %s", request_id, failure)
        finally:
            _close(stream)
