"""Container lifecycle: create, start, wait, kill, stop, restart, pause, remove, re-adopt.

One :class:`ContainerManager` per daemon. It turns Docker's create body into a
:class:`~agent.runtime.spec.ContainerSpec`, starts it through the shim
(:mod:`agent.runtime.launch`), watches every shim with a thread, and applies restart
policies. All state is on disk (``<root>/containers/<id>/container.json``), so a daemon
that restarts finds its running containers again (their shims keep running), and at boot
restarts those the policy says to.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from agent.containers import health, names, options, rootfs
from agent.containers.health import HealthMonitors
from agent.containers.janitor import TRASH_PREFIX, Janitor
from agent.containers.model import (
    CREATED,
    DEAD,
    EXITED,
    PAUSED,
    REMOVING,
    RESTARTING,
    RUNNING,
    Container,
)
from agent.containers.prepare import Preparer, merge_image_config, network_mode, write_file
from agent.errors import AgentError, BadRequest, Conflict, NotFound
from agent.runtime import (
    capabilities,
    cgroups,
    devices,
    launch,
    nsexec,
    seccomp,
    users,
)
from agent.runtime.logfile import LogOptions, timestamp
from agent.runtime.shim import ShimPaths

log = logging.getLogger(__name__)

_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
RESTART_BACKOFF_START = 0.1  # seconds; doubles per quick failure, as Docker does
RESTART_BACKOFF_MAX = 60.0
RESTART_RESET_AFTER = 10.0  # a run this long resets the back-off


class Network(Protocol):
    """What the manager needs from a network driver (the default bridge)."""

    def attach(self, container_id: str, netns_fd: int) -> Any: ...

    def detach(self, container_id: str) -> None: ...


class ImageSource(Protocol):
    def get(self, name_or_id: str) -> Any: ...


@dataclass
class ExecInstance:
    """An exec created for a running container (kept in memory, as dockerd does)."""

    id: str
    container_id: str
    config: dict[str, Any]  # Docker's ExecConfig
    started: bool = False
    running: bool = False
    pid: int = 0
    exit_code: int | None = None
    handle: nsexec.ExecProcess | None = None  # while it runs: its pipes or terminal


@dataclass
class Running:
    """What the daemon keeps in memory for a container whose shim is alive."""

    shim_pid: int
    pidfd: int
    our_child: bool
    cgroup: cgroups.Cgroup | None


def _start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: with the pid, it identifies a process uniquely."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return 0
    return int(data[data.rindex(b")") + 2 :].split()[19])


class ContainerManager:
    def __init__(
        self,
        root: str,
        images: ImageSource,
        volumes: Any,
        hierarchy: cgroups.Hierarchy | None,
        network: Network | None,
        on_event: Callable[[str, Container, dict[str, str]], None] | None = None,
        host_resolv_conf: str = "/etc/resolv.conf",
        run_root: str = "/run/vmctl/containers",
    ) -> None:
        self.root = os.path.join(root, "containers")
        os.makedirs(self.root, mode=0o710, exist_ok=True)
        # Sockets live on a short path: unix socket paths are limited to 107 bytes.
        self.run_root = run_root
        os.makedirs(run_root, mode=0o700, exist_ok=True)
        self.images = images
        self.volumes = volumes
        self.hierarchy = hierarchy
        self.network = network
        self.ports: Any = None  # agent.network.ports.PortPublisher, set by the engine
        self.networks: Any = None  # agent.network.attachments.Attachments, set by the engine
        self.on_event = on_event or (lambda *_: None)
        self.prepare = Preparer(self.get, volumes, host_resolv_conf)
        self.device_filters = devices.FilterCache()
        self.janitor = Janitor()
        self.health = HealthMonitors(self)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._containers: dict[str, Container] = {}
        self._running: dict[str, Running] = {}
        self._execs: dict[str, ExecInstance] = {}
        # attach requests waiting for the next start: called with the shim's socket path
        # before the container's command runs (None when the start failed)
        self._start_hooks: dict[str, list[Callable[[str | None], None]]] = {}
        self._shim_up: set[str] = set()  # containers whose shim's attach socket accepts
        # readers of a root filesystem (docker cp, export) keep it mounted while they run
        self._root_pins: dict[str, int] = {}
        self._starting: set[str] = set()
        self._closing = False

    def attach_socket(self, container: Container) -> str:
        return os.path.join(self.run_root, f"{container.id}.sock")

    # --- lookup -------------------------------------------------------------------------
    def load(self) -> None:
        """Read every container from disk and re-adopt or restart the running ones."""
        for entry in sorted(os.listdir(self.root)):
            directory = os.path.join(self.root, entry)
            if entry.startswith(TRASH_PREFIX):  # a removal the last run did not finish
                self.janitor.submit(functools.partial(shutil.rmtree, directory, True))
                continue
            try:
                container = Container.load(directory)
            except (OSError, ValueError, TypeError) as error:
                log.warning("ignoring unreadable container %s: %s", entry, error)
                continue
            self._containers[container.id] = container
        for container in list(self._containers.values()):
            self._recover(container)

    def all(self) -> list[Container]:
        with self._lock:
            return sorted(self._containers.values(), key=lambda c: c.created, reverse=True)

    def get(self, ref: str) -> Container:
        with self._lock:
            if ref in self._containers:
                return self._containers[ref]
            name = ref.lstrip("/")
            for container in self._containers.values():
                if container.name == name:
                    return container
            matches = [c for c in self._containers.values() if c.id.startswith(ref)]
            if len(matches) == 1 and ref:
                return matches[0]
            if len(matches) > 1:
                raise BadRequest(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def _name_in_use(self, name: str) -> Container | None:
        return next((c for c in self._containers.values() if c.name == name), None)

    # --- create -------------------------------------------------------------------------
    def create(self, body: dict[str, Any], name: str = "") -> Container:
        """Validate everything first, then write; a bad request leaves nothing behind."""
        if not isinstance(body, dict):
            raise BadRequest("the create request body must be a JSON object")
        image_ref = str(body.get("Image") or "")
        if not image_ref:
            raise BadRequest('no image specified: the create request needs "Image"')
        image = self.images.get(image_ref)  # raises a 404 "No such image"
        host_config: dict[str, Any] = dict(body.get("HostConfig") or {})
        config = merge_image_config(body, image.config.get("config") or {})
        self._validate(config, host_config)
        endpoints_config = self._endpoints_config(body, host_config)
        with self._lock:
            if name:
                if not _NAME.match(name):
                    raise BadRequest(
                        f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                        "are allowed"
                    )
                name = name.lstrip("/")
                other = self._name_in_use(name)
                if other is not None:
                    raise Conflict(
                        f'Conflict. The container name "/{name}" is already in use by '
                        f'container "{other.id}". You have to remove (or rename) that '
                        "container to be able to reuse that name."
                    )
            else:
                name = names.generate(lambda n: self._name_in_use(n) is not None)
            container_id = secrets.token_hex(32)
            directory = os.path.join(self.root, container_id)
            if host_config.get("Links"):  # kept as dockerd shows them: /target:/name/alias
                from agent.network.links import normalize

                host_config["Links"] = normalize(host_config["Links"], name)
            if not config.get("Hostname"):
                config["Hostname"] = container_id[:12]
            container = Container(
                id=container_id,
                name=name,
                created=timestamp(),
                image_id=image.id,
                image_name=image_ref,
                config=config,
                host_config=host_config,
                directory=directory,
                endpoints_config=endpoints_config,
            )
            try:
                os.makedirs(container.rootfs_dir, mode=0o710)
                container.save(durable=False)
                self.janitor.sync_file(container.record_file)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            self._containers[container_id] = container
        self.on_event("create", container, {})
        return container

    def _endpoints_config(
        self, body: dict[str, Any], host_config: dict[str, Any]
    ) -> dict[str, Any]:
        """NetworkingConfig.EndpointsConfig, checked."""
        requested = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        mode = network_mode(host_config)
        wanted = [mode] if mode not in ("bridge", "none", "host") and ":" not in mode else []
        for name, config in requested.items():
            if not isinstance(config, dict) and config is not None:
                raise BadRequest(f"EndpointsConfig of network {name} must be an object")
            if name not in ("bridge", "default", "none", "host") and name not in wanted:
                wanted.append(name)
        if wanted and self.networks is None:
            raise BadRequest(f"network {wanted[0]} not found: this host has no bridge networking")
        # as dockerd, a network that does not exist fails the start (404), not the create
        for link in host_config.get("Links") or []:
            target = str(link).partition(":")[0].strip("/")
            if not target or self._name_in_use(target) is None and target not in self._containers:
                raise BadRequest(f"could not get container for {target or link!r} (--link)")
        return {str(k): dict(v or {}) for k, v in requested.items()}

    def _validate(self, config: dict[str, Any], host_config: dict[str, Any]) -> None:
        health.validate(config.get("Healthcheck"))
        try:
            capabilities.resolve(
                host_config.get("CapAdd"),
                host_config.get("CapDrop"),
                bool(host_config.get("Privileged")),
            )
            options.ulimits(host_config.get("Ulimits"))
            options.device_rules(host_config.get("DeviceCgroupRules"))
            security = options.security_options(host_config.get("SecurityOpt"))
            if security.seccomp not in (None, "unconfined"):
                seccomp.load_profile(security.seccomp)
            for bind in host_config.get("Binds") or []:
                options.parse_bind(bind)
            for mount in host_config.get("Mounts") or []:
                options.parse_mount(mount)
            for target, opts in (host_config.get("Tmpfs") or {}).items():
                options.parse_tmpfs(target, opts)
            options.restart_policy(
                host_config.get("RestartPolicy"), bool(host_config.get("AutoRemove"))
            )
            log_config = host_config.get("LogConfig") or {}
            if log_config.get("Type") not in (None, "", "json-file"):
                raise options.OptionError(
                    f"log driver {log_config.get('Type')!r} is not supported: only json-file"
                )
            LogOptions.from_config(log_config.get("Config"))
            for entry in host_config.get("ExtraHosts") or []:
                if ":" not in entry:
                    raise options.OptionError(f"invalid argument {entry!r} for --add-host")
            if not config.get("Cmd") and not config.get("Entrypoint"):
                raise options.OptionError("no command specified")
            network_mode(host_config)
            from agent.network.ports import requested_ports

            requested_ports(config, host_config)
        except (
            options.OptionError,
            capabilities.CapabilityError,
            seccomp.SeccompError,
            ValueError,
        ) as error:
            raise BadRequest(str(error)) from None
        resources = cgroups.Resources.from_host_config(host_config)
        needed = resources.controllers_needed()
        if needed:
            if self.hierarchy is None:
                raise BadRequest(
                    "resource limits need cgroup v2, which this host does not have mounted; "
                    "run without --memory/--cpus/--pids-limit or in the vmctl VM"
                )
            missing = needed - self.hierarchy.available()
            if missing:
                raise BadRequest(
                    f"this host's cgroup v2 hierarchy lacks the {', '.join(sorted(missing))} "
                    "controller(s) the requested limits need; run without them or in the "
                    "vmctl VM"
                )

    # --- start --------------------------------------------------------------------------
    def start(self, ref: str) -> Container:
        container = self.get(ref)
        with self._lock:
            if container.state.status == PAUSED:
                raise Conflict("cannot start a paused container, try unpause instead")
            if container.state.started:
                return container  # Docker answers 304 Not Modified; the API layer maps it
            if container.state.status == REMOVING:
                raise Conflict(f"container {container.id[:12]} is marked for removal")
            container.state.stopped_by_user = False
        self._start(container)
        return container

    def _start(self, container: Container) -> None:
        with self._lock:
            self._starting.add(container.id)
        try:
            self._launch(container)
        finally:
            with self._lock:
                self._starting.discard(container.id)

    def _launch(self, container: Container) -> None:
        host_config = container.host_config
        cgroup = None
        endpoint: dict[str, Any] = {}
        started_at: list[str] = []
        started = None
        try:
            layers = [str(p) for p in self.images.get(container.image_id).layer_dirs]
            # Without a cgroup there is no device filter: then no device node in the root works.
            rootfs.mount_overlay(
                layers, container.upper, container.work, container.merged, self.hierarchy is None
            )
            spec, volume_names = self.prepare.spec(container)
            resources = cgroups.Resources.from_host_config(host_config)
            if self.hierarchy is not None:
                cgroup = self.hierarchy.create(container.id, resources)
                if not host_config.get("Privileged"):
                    self._confine_devices(cgroup, host_config)
            mode = network_mode(host_config)
            reserved = self._reserve_ports(container, mode)

            def on_ready(pid: int, in_cgroup: bool) -> None:
                if cgroup is not None and not in_cgroup:
                    cgroup.add_process(pid)
                if mode == "bridge" and self.network is not None:
                    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        attached = self.network.attach(container.id, fd)
                    finally:
                        os.close(fd)
                    endpoint.update(
                        IPAddress=attached.ip,
                        IPPrefixLen=attached.prefix,
                        Gateway=attached.gateway,
                        MacAddress=attached.mac,
                        HostVeth=attached.host_veth,
                    )
                    self.prepare.write_hosts(container, attached.ip)
                own_netns = mode not in ("host", "none") and not mode.startswith("container:")
                if self.networks is not None and own_netns:  # user networks, record of all
                    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        record = self.networks.attach(container, fd, dict(endpoint))
                    finally:
                        os.close(fd)
                    if record.get("IPAddress") != endpoint.get("IPAddress"):
                        self.prepare.write_hosts(container, record["IPAddress"])
                    endpoint.clear()
                    endpoint.update(record)
                if reserved and endpoint.get("IPAddress"):
                    self.ports.activate(
                        container.id,
                        endpoint["IPAddress"],
                        endpoint["IPPrefixLen"],
                        endpoint.get("HostVeth", ""),
                    )
                    endpoint["Ports"] = [b.to_json() for b in reserved]
                for hook in self._take_start_hooks(container.id, shim_up=True):
                    hook(self.attach_socket(container))
                started_at.append(timestamp())  # the command runs from the next instant

            self.prepare.write_etc_files(container, mode)
            started = launch.start(
                spec,
                ShimPaths(container.exit_file, container.log_file, self.attach_socket(container)),
                LogOptions.from_config((host_config.get("LogConfig") or {}).get("Config")),
                on_ready,
                self.prepare.seccomp(spec, host_config),
                cgroup_dir=str(cgroup.path) if cgroup else None,
            )
        except launch.StartError as error:
            self._start_failed(container, cgroup, str(error), error.code)
            status = 400 if error.code in (126, 127) else 500
            raise AgentError(status, f"failed to create task for container: {error}") from None
        except AgentError as error:
            self._start_failed(container, cgroup, error.message, 128)
            raise
        except (OSError, ValueError, rootfs.RootfsError, users.UserError) as error:
            self._start_failed(container, cgroup, str(error), 128)
            raise AgentError(500, f"cannot start container: {error}") from None
        with self._lock:
            state = container.state
            state.status = RUNNING
            state.pid = started.init_pid
            state.shim_pid = started.shim_pid
            state.shim_start = _start_time(started.shim_pid)
            state.started_at = started_at[0] if started_at else timestamp()
            state.exit_code = 0
            state.error = ""
            state.oom_killed = False
            state.has_been_started = True
            container.network = endpoint
            # Only a restart policy needs this record to survive a power cut (to start the
            # container again at the next boot); without one, skip the wait for the disk.
            policy, _ = options.restart_policy(host_config.get("RestartPolicy"), False)
            self.health.arm(container, fresh=True)
            container.save(durable=policy != "no")
            self._watch(container, started.shim_pid, our_child=True, cgroup=cgroup)
            self._changed.notify_all()
        self.on_event("start", container, {})
        del volume_names

    def _reserve_ports(self, container: Container, mode: str) -> list[Any]:
        """Allocate the container's published host ports before it runs (a taken one fails
        the start); only a container with its own address on a bridge publishes any."""
        if self.ports is None or mode in ("none", "host") or mode.startswith("container:"):
            return []
        from agent.network.ports import requested_ports

        requests = requested_ports(container.config, container.host_config)
        return list(self.ports.reserve(container.id, container.name, requests))

    def on_next_start(self, ref: str, hook: Callable[[str | None], None]) -> None:
        """Run ``hook(attach socket)`` when the container next starts, before its command
        runs (so an attach made before `start` sees all output); ``hook(None)`` if that
        start fails."""
        container = self.get(ref)
        with self._lock:
            live = container.id in self._shim_up
            if not live:
                self._start_hooks.setdefault(container.id, []).append(hook)
        if live:  # its command already runs: attach now
            hook(self.attach_socket(container))

    def _take_start_hooks(
        self, container_id: str, shim_up: bool
    ) -> list[Callable[[str | None], None]]:
        with self._lock:
            if shim_up:
                self._shim_up.add(container_id)
            else:
                self._shim_up.discard(container_id)
            return self._start_hooks.pop(container_id, [])

    def _confine_devices(self, cgroup: cgroups.Cgroup, host_config: dict[str, Any]) -> None:
        rules = devices.DEFAULT_RULES + options.device_rules(host_config.get("DeviceCgroupRules"))
        try:
            self.device_filters.attach(rules, str(cgroup.path))
        except OSError as error:
            raise AgentError(
                500,
                f"cannot restrict the container's devices: {error} (the kernel needs "
                "CONFIG_CGROUP_BPF; --privileged runs without the restriction)",
            ) from None

    def _start_failed(
        self, container: Container, cgroup: cgroups.Cgroup | None, message: str, code: int
    ) -> None:
        for hook in self._take_start_hooks(container.id, shim_up=False):
            hook(None)
        self._release(container, cgroup)
        with self._lock:
            container.state.status = CREATED if not container.state.has_been_started else EXITED
            container.state.error = message
            container.state.exit_code = code
            container.save()
            self._changed.notify_all()
        if container.host_config.get("AutoRemove"):
            # as dockerd: a --rm container that could not start is not left behind
            self._auto_remove(container)

    def _release(self, container: Container, cgroup: cgroups.Cgroup | None) -> None:
        """Give back what a run held: its cgroup, its network endpoint, its mounts."""
        rootfs.unmount(container.etc_file("shm"))
        if self.ports is not None:
            self.ports.withdraw(container.id)
        if cgroup is not None:
            try:
                cgroup.remove()
            except cgroups.CgroupError as error:
                log.warning("%s: %s", container.id[:12], error)
        if self.network is not None:
            self.network.detach(container.id)
        if self.networks is not None:
            self.networks.detach(container)
        with self._lock:
            if not self._root_pins.get(container.id):  # else the last reader unmounts it
                rootfs.unmount(container.merged)

    # --- watching -----------------------------------------------------------------------
    def _watch(
        self, container: Container, shim_pid: int, our_child: bool, cgroup: cgroups.Cgroup | None
    ) -> None:
        try:
            pidfd = os.pidfd_open(shim_pid)
        except ProcessLookupError:
            pidfd = -1
        self._running[container.id] = Running(shim_pid, pidfd, our_child, cgroup)
        thread = threading.Thread(
            target=self._wait_for_shim,
            args=(container,),
            name=f"watch-{container.id[:12]}",
            daemon=True,
        )
        thread.start()

    def _wait_for_shim(self, container: Container) -> None:
        running = self._running[container.id]
        if running.pidfd >= 0:
            select.select([running.pidfd], [], [])
            os.close(running.pidfd)
        if running.our_child:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(running.shim_pid, 0)
        self._exited(container)

    def _exited(self, container: Container) -> None:
        exit_code, finished = 255, timestamp()
        try:
            with open(container.exit_file) as handle:
                record = json.load(handle)
            exit_code = int(record["ExitCode"])
            finished = str(record["FinishedAt"])
        except (OSError, ValueError, KeyError):
            log.warning("%s: the shim left no exit status", container.id[:12])
        with self._lock:
            self._shim_up.discard(container.id)
            for exec_id in container.exec_ids:
                self._execs.pop(exec_id, None)
            container.exec_ids = []
            running = self._running.pop(container.id, None)
            cgroup = running.cgroup if running else None
            oom = cgroup.oom_killed() if cgroup is not None else False
            self._release(container, cgroup)
            state = container.state
            state.status = EXITED
            state.pid = 0
            state.shim_pid = 0
            state.exit_code = exit_code
            state.oom_killed = oom
            state.finished_at = finished
            self.health.disarm(container)
            restart = self._should_restart(container)
            if restart:
                state.status = RESTARTING
            if container.id in self._containers:
                container.save(durable=False)
            self._changed.notify_all()
        if oom:
            self.on_event("oom", container, {})
        self.on_event("die", container, {"exitCode": str(exit_code)})
        if restart and not self._closing:
            self._schedule_restart(container)
        elif container.host_config.get("AutoRemove"):
            self._auto_remove(container)

    def _auto_remove(self, container: Container) -> None:
        if container.id not in self._containers:
            return
        try:
            self.remove(container.id, force=True, volumes=True)
        except AgentError as error:
            log.warning("%s: auto-remove failed: %s", container.id[:12], error)

    def _should_restart(self, container: Container) -> bool:
        name, retries = options.restart_policy(container.host_config.get("RestartPolicy"), False)
        state = container.state
        if state.stopped_by_user or container.id not in self._containers:
            return False
        if name in ("always", "unless-stopped"):
            return True
        if name == "on-failure" and state.exit_code != 0:
            return not retries or state.restart_count < retries
        return False

    def _restarts_at_start(self, container: Container) -> bool:
        name, _ = options.restart_policy(container.host_config.get("RestartPolicy"), False)
        if name == "always" and container.id in self._containers:
            return True
        return self._should_restart(container)

    def _schedule_restart(self, container: Container) -> None:
        started = container.state.started_at
        ran_for = _seconds_between(started, container.state.finished_at)
        if ran_for >= RESTART_RESET_AFTER:
            delay = RESTART_BACKOFF_START
        else:
            delay = min(
                RESTART_BACKOFF_MAX,
                RESTART_BACKOFF_START * (2 ** min(container.state.restart_count, 10)),
            )

        def restart() -> None:
            time.sleep(delay)
            with self._lock:
                if (
                    container.id not in self._containers
                    or container.state.status != RESTARTING
                    or self._closing
                ):
                    return
                container.state.restart_count += 1
            try:
                self._start(container)
                self.on_event("restart", container, {})
            except AgentError as error:  # the start recorded why, as an exited container
                log.warning("%s: restart failed: %s", container.id[:12], error.message)
            except Exception:  # a bug: still leave it exited, not "restarting" for good
                log.exception("%s: restart failed", container.id[:12])
                with self._lock:
                    if container.state.status == RESTARTING:
                        container.state.status = EXITED
                        container.save()
                        self._changed.notify_all()

        threading.Thread(target=restart, name=f"restart-{container.id[:12]}", daemon=True).start()

    def _recover(self, container: Container) -> None:
        """After a daemon restart or a reboot: re-adopt a live shim or account for the exit."""
        state = container.state
        if state.status == RESTARTING:
            state.status = EXITED
        if state.status not in (RUNNING, PAUSED):
            if state.status == REMOVING:
                self._remove_files(container)
            elif state.status == EXITED and self._restarts_at_start(container):
                # As dockerd's start does: a restart was pending when the engine stopped,
                # or the container died while it shut down (the VM's poweroff), or it is
                # `always` (which, unlike unless-stopped, comes back after a user's stop).
                state.status = RESTARTING
                state.stopped_by_user = False
                self._schedule_restart(container)
            return
        alive = state.shim_pid and _start_time(state.shim_pid) == state.shim_start
        if alive:
            cgroup = self.hierarchy.open(container.id) if self.hierarchy else None
            self._shim_up.add(container.id)
            self._watch(container, state.shim_pid, our_child=False, cgroup=cgroup)
            self.health.arm(container, fresh=False)
            if self.ports is not None:
                self.ports.restore(container.id, container.network)
            if self.networks is not None:
                self.networks.restore(container)
            log.info("re-adopted running container %s", container.id[:12])
            return
        # The shim is gone: the VM rebooted, or everything was killed.
        if not os.path.exists(container.exit_file):
            write_file(
                container.exit_file,
                json.dumps({"ExitCode": 255, "Signal": 0, "FinishedAt": timestamp()}),
            )
        cgroup = self.hierarchy.open(container.id) if self.hierarchy else None
        self._running[container.id] = Running(0, -1, False, cgroup)
        self._exited(container)

    # --- signals and stopping ------------------------------------------------------------
    def kill(self, ref: str, signal_name: str | int | None = None) -> Container:
        container = self.get(ref)
        signum = parse_signal(signal_name or "KILL")
        with self._lock:
            if not container.state.running:
                raise Conflict(
                    f"cannot kill container: {ref}: container {container.id} is not running"
                )
            if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                container.state.stopped_by_user = True
            pid = container.state.pid
        self._signal(container, pid, signum)
        self.on_event("kill", container, {"signal": str(signum)})
        return container

    def _signal(self, container: Container, pid: int, signum: int) -> None:
        running = self._running.get(container.id)
        if signum == signal.SIGKILL and running and running.cgroup is not None:
            if container.state.status == PAUSED:
                running.cgroup.thaw()
            running.cgroup.kill()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def stop(self, ref: str, timeout: int | None = None, signal_name: str | None = None) -> bool:
        """Stop signal, then SIGKILL after the timeout. False when it was not running."""
        container = self.get(ref)
        stop_signal = parse_signal(signal_name or container.config.get("StopSignal") or "SIGTERM")
        with self._lock:
            if container.state.status == RESTARTING:  # cancel the pending restart
                container.state.stopped_by_user = True
                container.state.status = EXITED
                container.save()
                self._changed.notify_all()
                return True
            if not container.state.running:
                return False
            container.state.stopped_by_user = True
            container.save()
            pid = container.state.pid
        if timeout is None:
            timeout = container.config.get("StopTimeout")
            timeout = 10 if timeout is None else int(timeout)
        if container.state.status == PAUSED:
            self.unpause(container.id)
        self._signal(container, pid, stop_signal)
        self.on_event("kill", container, {"signal": str(stop_signal)})
        if timeout < 0 or not self.wait_stopped(container, timeout):
            if container.state.running:
                self._signal(container, pid, signal.SIGKILL)
            self.wait_stopped(container, None)
        self.on_event("stop", container, {})
        return True

    def wait_stopped(self, container: Container, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while container.state.status in (RUNNING, PAUSED):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def restart(
        self, ref: str, timeout: int | None = None, signal_name: str | None = None
    ) -> Container:
        container = self.get(ref)
        self.stop(container.id, timeout, signal_name)
        with self._lock:
            if container.state.status == RESTARTING:
                container.state.status = EXITED
        self.start(container.id)
        self.on_event("restart", container, {})
        return container

    def wait(self, ref: str, condition: str = "not-running", timeout: float | None = None) -> int:
        """Docker's wait: block until the condition holds; the exit code."""
        container = self.get(ref)
        if condition not in ("not-running", "next-exit", "removed"):
            raise BadRequest(f"invalid condition: {condition!r}")
        with self._lock:
            finished = container.state.finished_at
            deadline = None if timeout is None else time.monotonic() + timeout

            def done() -> bool:
                if condition == "removed":
                    return container.id not in self._containers
                if condition == "next-exit":
                    return (
                        container.state.finished_at != finished
                        and container.state.status not in (RUNNING, PAUSED)
                    )
                return container.state.status not in (RUNNING, PAUSED, RESTARTING)

            while not done():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise AgentError(408, "timed out waiting for the container")
                self._changed.wait(remaining)
            return container.state.exit_code

    def pause(self, ref: str) -> None:
        container = self.get(ref)
        with self._lock:
            if container.state.status != RUNNING:
                raise Conflict(f"container {container.id} is not running")
            running = self._running.get(container.id)
            if running is None or running.cgroup is None:
                raise AgentError(500, "pausing needs cgroup v2, which this host lacks")
            running.cgroup.freeze()
            container.state.status = PAUSED
            container.save()
        self.on_event("pause", container, {})

    def unpause(self, ref: str) -> None:
        container = self.get(ref)
        with self._lock:
            if container.state.status != PAUSED:
                raise Conflict(f"container {container.id} is not paused")
            running = self._running.get(container.id)
            if running is not None and running.cgroup is not None:
                running.cgroup.thaw()
            container.state.status = RUNNING
            container.save()
        self.on_event("unpause", container, {})

    # --- exec ---------------------------------------------------------------------------
    def exec_create(self, ref: str, body: dict[str, Any]) -> ExecInstance:
        container = self.get(ref)
        if not isinstance(body, dict) or not body.get("Cmd"):
            raise BadRequest("no exec command specified")
        if isinstance(body["Cmd"], str):
            body = {**body, "Cmd": [body["Cmd"]]}
        with self._lock:
            if container.state.status != RUNNING:
                if container.state.status == PAUSED:
                    raise Conflict(
                        f"container {container.id} is paused, unpause the container before exec"
                    )
                raise Conflict(f"container {container.id} is not running")
            instance = ExecInstance(secrets.token_hex(32), container.id, dict(body))
            self._execs[instance.id] = instance
            container.exec_ids.append(instance.id)
        self.on_event(_exec_action("exec_create", body), container, {"execID": instance.id})
        return instance

    def exec_get(self, exec_id: str) -> ExecInstance:
        with self._lock:
            instance = self._execs.get(exec_id)
        if instance is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return instance

    def exec_check(self, exec_id: str) -> tuple[ExecInstance, Container]:
        """The exec and its container, when the exec could start now (else 404 or 409)."""
        instance = self.exec_get(exec_id)
        container = self.get(instance.container_id)
        if instance.started:
            raise Conflict(f"exec {exec_id} has already been started")
        if container.state.status != RUNNING:
            raise Conflict(f"container {container.id} is not running")
        return instance, container

    def exec_start(self, exec_id: str) -> nsexec.ExecProcess:
        """Start an exec instance; the caller streams its I/O and then calls exec_finish."""
        with self._lock:
            instance, container = self.exec_check(exec_id)
            instance.started = True
            running = self._running.get(container.id)
            pid = container.state.pid
        try:
            process = self.prepare.process(container, instance.config)
            host_config = container.host_config
            privileged = bool(host_config.get("Privileged") or instance.config.get("Privileged"))
            seccomp_filter = None if privileged else self.prepare.seccomp_for(process, host_config)
            procs = (
                str(running.cgroup.path / "cgroup.procs") if running and running.cgroup else None
            )
            handle = nsexec.start(pid, procs, process, seccomp_filter)
        except (launch.StartError, users.UserError, OSError) as error:
            instance.exit_code = getattr(error, "code", 126)
            raise AgentError(
                400 if instance.exit_code in (126, 127) else 500,
                f"OCI runtime exec failed: {error}",
            ) from None
        instance.running = True
        instance.pid = handle.pid
        self.on_event(_exec_action("exec_start", instance.config), container, {"execID": exec_id})
        return handle

    def exec_finish(self, exec_id: str, handle: nsexec.ExecProcess) -> int:
        """Reap an exec's process (blocking) and record its exit code."""
        code = handle.wait()
        handle.close()
        instance = self.exec_get(exec_id)
        with self._lock:
            instance.running = False
            instance.exit_code = code
            instance.handle = None
            self._changed.notify_all()
        container = self._containers.get(instance.container_id)
        if container is not None:
            self.on_event("exec_die", container, {"execID": exec_id, "exitCode": str(code)})
        return code

    # --- removal ------------------------------------------------------------------------
    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        container = self.get(ref)
        with self._lock:
            if container.state.running or container.state.status == RESTARTING:
                if not force:
                    raise Conflict(
                        f'cannot remove container "/{container.name}": container is '
                        "running: stop the container before removing or force remove"
                    )
                container.state.stopped_by_user = True
        if container.state.running:
            self._signal(container, container.state.pid, signal.SIGKILL)
            self.on_event("kill", container, {"signal": str(int(signal.SIGKILL))})
            self.wait_stopped(container, None)
        with self._lock:
            if container.id not in self._containers:
                return
            # not saved: the directory is renamed away next, and a crash before that
            # leaves the container as it was, which a second `rm` removes
            container.state.status = REMOVING
            del self._containers[container.id]
            self._changed.notify_all()
        for hook in self._take_start_hooks(container.id, shim_up=False):
            hook(None)
        anonymous = [
            m["Name"] for m in container.mounts if m.get("Type") == "volume" and m.get("Anonymous")
        ]
        self._remove_files(container)
        if volumes:
            for name in anonymous:
                try:
                    self.volumes.remove(name, self.volume_users(name))
                except Exception as error:  # a volume another container took up stays
                    log.info("keeping volume %s: %s", name, error)
        self.on_event("destroy", container, {})

    def _remove_files(self, container: Container) -> None:
        rootfs.unmount(container.merged)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.attach_socket(container))
        self.janitor.delete_tree(container.directory)

    # --- files and resources of a container (cp, export, top, stats, update, rename) ------
    def cgroup_of(self, container: Container) -> cgroups.Cgroup | None:
        with self._lock:
            running = self._running.get(container.id)
            return running.cgroup if running is not None else None

    @contextlib.contextmanager
    def root_mounted(self, container: Container) -> Iterator[str]:
        """Keep the container's root filesystem mounted at ``container.merged`` meanwhile
        (a stopped container's is mounted for the reader and unmounted after the last)."""
        with self._lock:
            if container.id not in self._containers or container.state.status == REMOVING:
                raise NotFound(f"No such container: {container.id}")
            if not rootfs.is_mounted(container.merged):
                layers = [str(p) for p in self.images.get(container.image_id).layer_dirs]
                nodev = self.hierarchy is None  # as a start mounts it: it may start meanwhile
                rootfs.mount_overlay(
                    layers, container.upper, container.work, container.merged, nodev
                )
            self._root_pins[container.id] = self._root_pins.get(container.id, 0) + 1
        try:
            yield container.merged
        finally:
            with self._lock:
                left = self._root_pins.pop(container.id) - 1
                if left:
                    self._root_pins[container.id] = left
                elif not (container.state.running or container.id in self._starting):
                    rootfs.unmount(container.merged)

    def rename(self, ref: str, new_name: str) -> Container:
        container = self.get(ref)
        name = new_name.lstrip("/")
        if not name:
            raise BadRequest("Neither old nor new names may be empty")
        if not _NAME.match(name):
            raise BadRequest(
                f"Error when allocating new name: Invalid container name ({new_name}), only "
                "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        with self._lock:
            old = container.name
            if name == old:
                raise BadRequest("Renaming a container with the same name as its current name")
            other = self._name_in_use(name)
            if other is not None:
                raise Conflict(
                    f'Error when allocating new name: Conflict. The container name "/{name}" is '
                    f'already in use by container "{other.id}". You have to remove (or rename) '
                    "that container to be able to reuse that name."
                )
            container.name = name
            container.save()
        self.on_event("rename", container, {"oldName": "/" + old})
        return container

    def update(self, ref: str, body: Any) -> list[str]:
        """docker update: new limits (written to a running container's cgroup) and restart
        policy; the warnings to show."""
        from agent.containers.update import check_controllers, plan_update, warnings_for

        container = self.get(ref)
        plan = plan_update(container.host_config, body)
        check_controllers(plan.requested, self.hierarchy)
        warnings: list[str] = []
        with self._lock:
            if container.state.status == REMOVING:
                raise Conflict(f"container {container.id[:12]} is marked for removal")
            running = self._running.get(container.id)
            if container.state.running and running is not None and running.cgroup is not None:
                running.cgroup.apply(plan.resources)
                warnings = warnings_for(plan.resources, running.cgroup)
            container.host_config = plan.host_config
            container.save()
        self.on_event("update", container, {})
        return warnings

    def volume_users(self, name: str) -> list[str]:
        with self._lock:
            return [
                c.id
                for c in self._containers.values()
                if any(m.get("Name") == name for m in c.mounts)
            ]

    def image_users(self, image_id: str) -> str | None:
        with self._lock:
            for container in self._containers.values():
                if container.image_id == image_id:
                    word = "running" if container.state.running else "stopped"
                    return f"{word} container {container.id[:12]}"
        return None

    def close(self) -> None:
        """Daemon shutdown: containers keep running under their shims."""
        self._closing = True
        self.health.close()
        self.janitor.drain()


def _exec_action(action: str, config: dict[str, Any]) -> str:
    """dockerd names exec events with the command: "exec_create: sh -c date"."""
    return f"{action}: {' '.join(str(a) for a in config.get('Cmd') or [])}"


def _seconds_between(start: str, end: str) -> float:
    from agent.runtime.logfile import parse_timestamp

    try:
        return (parse_timestamp(end) - parse_timestamp(start)) / 1e9
    except ValueError:
        return 0.0


def parse_signal(value: str | int) -> int:
    """ "SIGTERM", "TERM", "15" or 15 → 15, as `docker kill -s` accepts them."""
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().upper()
        if text.isdigit():
            number = int(text)
        else:
            name = text if text.startswith("SIG") else "SIG" + text
            try:
                number = int(signal.Signals[name])
            except KeyError:
                raise BadRequest(f"Invalid signal: {value}") from None
    if not 0 < number < signal.NSIG:
        raise BadRequest(f"Invalid signal: {value}")
    return number


__all__ = ["ContainerManager", "parse_signal", "DEAD"]
