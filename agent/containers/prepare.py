"""Turning a container's record into what the runtime needs: the process, the mounts,
the namespaces, the seccomp filter and the files Docker manages in /etc.

Everything that reads the image's root (users, volume copy-up, mount targets) happens here,
in the daemon, before the fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from agent.containers import health, options, rootfs
from agent.containers.model import Container
from agent.errors import BadRequest, Conflict
from agent.runtime import capabilities, linux, seccomp, seccomp_default, users
from agent.runtime.rootpath import secure_join
from agent.runtime.spec import ContainerSpec, Mount, Process


class Preparer:
    def __init__(
        self,
        lookup: Callable[[str], Container],
        volumes: Any,
        host_resolv_conf: str = "/etc/resolv.conf",
    ) -> None:
        self.get = lookup
        self.volumes = volumes
        self.host_resolv_conf = host_resolv_conf
        self.host_gateway = ""  # the host's address for host-gateway (set by the engine)
        self._lock = threading.Lock()
        self._seccomp_cache: dict[frozenset[str], object] = {}

    def seccomp(self, spec: ContainerSpec, host_config: dict[str, Any]) -> object | None:
        if spec.privileged:
            return None
        return self.seccomp_for(spec.process, host_config)

    def seccomp_for(self, process: Process, host_config: dict[str, Any]) -> object | None:
        security = options.security_options(host_config.get("SecurityOpt"))
        if security.seccomp == "unconfined":
            return None
        caps = process.capabilities
        if security.seccomp is not None:
            profile = seccomp.load_profile(security.seccomp)
            return seccomp.prepare(seccomp.compile_filter(profile, _cap_names(caps)))
        key = frozenset(caps)
        with self._lock:
            if key not in self._seccomp_cache:
                program = seccomp.compile_filter(seccomp_default.DEFAULT_PROFILE, _cap_names(caps))
                self._seccomp_cache[key] = seccomp.prepare(program)
            return self._seccomp_cache[key]

    def process(self, container: Container, overrides: dict[str, Any] | None = None) -> Process:
        """The container's main process, or an exec's with ``overrides`` (an ExecConfig)."""
        config, host_config = container.config, container.host_config
        extra = overrides or {}
        privileged = bool(host_config.get("Privileged") or extra.get("Privileged"))
        security = options.security_options(host_config.get("SecurityOpt"))
        identity = users.resolve(
            container.merged,
            str(extra.get("User") or config.get("User") or ""),
            host_config.get("GroupAdd"),
        )
        env = options.merge_env(config.get("Env"), extra.get("Env"))
        keys = {item.split("=", 1)[0] for item in env}
        if "PATH" not in keys:
            env.insert(0, f"PATH={options.DEFAULT_PATH}")
        if "HOSTNAME" not in keys:
            env.append(f"HOSTNAME={config.get('Hostname', '')}")
        tty = bool(extra.get("Tty") if overrides is not None else config.get("Tty"))
        if tty and "TERM" not in keys:
            env.append("TERM=xterm")
        if "HOME" not in keys:
            env.append(f"HOME={identity.home}")
        if overrides is None and network_mode(host_config) == "bridge":
            from agent.network import links

            for target, alias in links.targets(container, self.get):
                env += links.environment(container, target, alias)
        if overrides is not None:
            argv = list(extra.get("Cmd") or [])
            stdin = bool(extra.get("AttachStdin"))
        else:
            argv = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
            stdin = bool(config.get("OpenStdin"))
        return Process(
            argv=argv,
            env=env,
            cwd=str(extra.get("WorkingDir") or config.get("WorkingDir") or "/"),
            uid=identity.uid,
            gid=identity.gid,
            groups=identity.groups,
            tty=tty,
            stdin=stdin,
            capabilities=capabilities.resolve(
                host_config.get("CapAdd"), host_config.get("CapDrop"), privileged
            ),
            no_new_privileges=security.no_new_privileges,
            rlimits=options.ulimits(host_config.get("Ulimits")),
            console_size=console_size(
                (extra if overrides is not None else host_config).get("ConsoleSize")
            )
            if tty
            else None,
        )

    def spec(self, container: Container) -> tuple[ContainerSpec, list[str]]:
        host_config = container.host_config
        privileged = bool(host_config.get("Privileged"))
        process = self.process(container)
        process.reaper = bool(host_config.get("Init"))
        mounts, targets, volume_names = self._mounts(container)
        claimed = {m.target for m in mounts}
        managed = [
            Mount(path, container.etc_file(path.rsplit("/", 1)[1]))
            for path in rootfs.ETC_FILES
            if path not in claimed
        ]
        mounts = managed + mounts
        rootfs.prepare(container.merged, process.cwd, targets)
        shm_size = int(host_config.get("ShmSize") or 0) or 64 * 1024 * 1024
        config = container.config
        spec = ContainerSpec(
            id=container.id,
            rootfs=container.merged,
            process=process,
            hostname=str(config.get("Hostname") or ""),
            domainname=str(config.get("Domainname") or ""),
            mounts=mounts,
            readonly_rootfs=bool(host_config.get("ReadonlyRootfs")),
            privileged=privileged,
            shm_size=shm_size,
        )
        self._namespaces(container, spec)
        if str(host_config.get("IpcMode") or "") == "shareable":
            # its /dev/shm is mounted where other containers can bind it (--ipc container:)
            shm = container.etc_file("shm")
            os.makedirs(shm, mode=0o1777, exist_ok=True)
            if not rootfs.is_mounted(shm):
                linux.mount(
                    "shm",
                    shm,
                    "tmpfs",
                    linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                    f"mode=1777,size={shm_size}",
                )
            spec.shm_source = shm
        return spec, volume_names

    def _namespaces(self, container: Container, spec: ContainerSpec) -> None:
        host_config = container.host_config
        new = {"mnt", "uts", "ipc", "net", "pid"}
        if str(host_config.get("CgroupnsMode") or "private") == "private":
            new.add("cgroup")
        joins: dict[str, str] = {}
        modes = {
            "pid": str(host_config.get("PidMode") or ""),
            "ipc": str(host_config.get("IpcMode") or ""),
            "uts": str(host_config.get("UTSMode") or ""),
        }
        mode = network_mode(host_config)
        # a user-defined network, like the default bridge, is a new namespace of its own
        modes["net"] = mode if mode in ("host", "none") or ":" in mode else ""
        for kind, value in modes.items():
            if value == "host":
                new.discard(kind)
            elif value.startswith("container:"):
                other = self.get(value.split(":", 1)[1])
                if not other.state.running:
                    raise Conflict(
                        f"cannot join the {kind} namespace of container "
                        f"{other.id[:12]}: it is not running"
                    )
                new.discard(kind)
                joins[kind] = f"/proc/{other.state.pid}/ns/{kind}"
                if kind == "ipc":  # POSIX shared memory lives in /dev/shm: share it too
                    if str(other.host_config.get("IpcMode") or "") != "shareable":
                        raise Conflict(
                            f"cannot join the IPC namespace of container {other.id[:12]}: "
                            "it is not shareable (start it with --ipc shareable)"
                        )
                    spec.shm_source = other.etc_file("shm")
            elif value in ("", "private", "shareable", "none", "bridge", "default"):
                if kind == "ipc" and value == "none":
                    raise BadRequest("--ipc none is not supported; use private or shareable")
                continue
            else:
                raise BadRequest(f"invalid {kind} mode: {value}")
        if modes["net"] == "host":
            spec.hostname = ""
        spec.new_namespaces = new
        spec.join_namespaces = joins

    def _mounts(
        self, container: Container
    ) -> tuple[list[Mount], list[tuple[str, bool]], list[str]]:
        host_config = container.host_config
        requests = [options.parse_bind(b) for b in host_config.get("Binds") or []]
        requests += [options.parse_mount(m) for m in host_config.get("Mounts") or []]
        requests += [options.parse_tmpfs(t, o) for t, o in (host_config.get("Tmpfs") or {}).items()]
        claimed = {r.target for r in requests}
        requests += self._volumes_from(host_config.get("VolumesFrom") or [], claimed)
        claimed = {r.target for r in requests}
        for target in container.config.get("Volumes") or {}:
            if target not in claimed:  # the image's VOLUME: an anonymous volume
                requests.append(options.MountRequest("volume", "", target))
        mounts: list[Mount] = []
        targets: list[tuple[str, bool]] = []
        volume_names: list[str] = []
        inspect: list[dict[str, Any]] = []
        for request in requests:
            if request.kind == "bind":
                source = request.source
                if not os.path.exists(source):
                    if not request.create_source:
                        raise BadRequest(
                            f'invalid mount config for type "bind": bind '
                            f"source path does not exist: {source}"
                        )
                    os.makedirs(source, exist_ok=True)
                is_file = not os.path.isdir(source)
                mounts.append(
                    Mount(
                        request.target,
                        source,
                        None,
                        0,
                        None,
                        request.readonly,
                        options.PROPAGATION.get(request.propagation, 0),
                        request.recursive,
                    )
                )
                targets.append((request.target, is_file))
                inspect.append(_mount_record("bind", source, request))
            elif request.kind == "volume":
                volume = self._volume_for(container, request)
                volume_names.append(volume.name)
                mounts.append(
                    Mount(request.target, volume.mountpoint, None, 0, None, request.readonly)
                )
                targets.append((request.target, False))
                inspect.append(_mount_record("volume", volume.mountpoint, request, volume.name))
            else:
                flags, data = options.mount_options(request.options, linux_flags_default_tmpfs())
                mounts.append(
                    Mount(request.target, "tmpfs", "tmpfs", flags, data or None, request.readonly)
                )
                targets.append((request.target, False))
                inspect.append(_mount_record("tmpfs", "", request))
        container.mounts = inspect
        return mounts, targets, volume_names

    def _volumes_from(self, sources: list[str], claimed: set[str]) -> list[options.MountRequest]:
        """--volumes-from NAME[:ro|rw]: the other container's binds and volumes, same paths."""
        requests = []
        for item in sources:
            name, _, mode = item.partition(":")
            if mode not in ("", "ro", "rw"):
                raise BadRequest(f"invalid mode for volumes-from: {item}")
            other = self.get(name)
            for record in other.mounts:
                if record["Type"] not in ("bind", "volume") or record["Destination"] in claimed:
                    continue
                readonly = mode == "ro" if mode else not record.get("RW", True)
                source = record["Source"] if record["Type"] == "bind" else record["Name"]
                requests.append(
                    options.MountRequest(record["Type"], source, record["Destination"], readonly)
                )
        return requests

    def _volume_for(self, container: Container, request: options.MountRequest) -> Any:
        name = request.source
        recorded = next(
            (
                m
                for m in container.mounts
                if m.get("Type") == "volume" and m.get("Destination") == request.target
            ),
            None,
        )
        if not name and recorded is not None:
            name = recorded["Name"]  # the same anonymous volume across restarts
        volume = (
            self.volumes.create(name)
            if name
            else self.volumes.create("", labels={"com.docker.volume.anonymous": ""})
        )
        if not volume.populated:
            if request.nocopy:
                self.volumes.mark_populated(volume)
            else:
                self.volumes.populate(volume, secure_join(container.merged, request.target))
        return volume

    def write_etc_files(self, container: Container, mode: str) -> None:
        host_config = container.host_config
        hostname = str(container.config.get("Hostname") or "")
        if mode == "host":
            hostname = os.uname().nodename
        write_file(container.etc_file("hostname"), hostname + "\n")
        self.write_hosts(container, "")
        try:
            with open(self.host_resolv_conf) as handle:
                host_resolv = handle.read()
        except OSError:
            host_resolv = ""
        text = rootfs.resolv_conf(
            host_resolv,
            host_config.get("Dns") or [],
            host_config.get("DnsSearch") or [],
            host_config.get("DnsOptions") or [],
        )
        if mode not in ("bridge", "none", "host") and not mode.startswith("container:"):
            from agent.network.attachments import embedded_resolv_conf

            text = embedded_resolv_conf(text)  # a user-defined network: the embedded DNS
        write_file(container.etc_file("resolv.conf"), text)

    def write_hosts(self, container: Container, address: str) -> None:
        from agent.network import links

        extra = [
            f"{e.rpartition(':')[0]}:{self.host_gateway}"
            if e.endswith(":host-gateway") and self.host_gateway
            else e
            for e in container.host_config.get("ExtraHosts") or []
        ]
        on_default_bridge = network_mode(container.host_config) == "bridge" and address
        if on_default_bridge and self.host_gateway:  # as Docker Desktop: the host by name
            extra.append(f"host.docker.internal:{self.host_gateway}")
        text = rootfs.hosts_file(str(container.config.get("Hostname") or ""), address, extra)
        if on_default_bridge:
            for target, alias in links.targets(container, self.get):
                text += "".join(links.hosts_entries(target, alias))
        write_file(container.etc_file("hosts"), text)


def network_mode(host_config: dict[str, Any]) -> str:
    """bridge, none, host, container:<id>, or the name of a user-defined network (whose
    existence the manager checks)."""
    mode = str(host_config.get("NetworkMode") or "default")
    if mode in ("default", "bridge"):
        return "bridge"
    if mode in ("none", "host") or mode.startswith("container:"):
        return mode
    if ":" in mode or not mode.strip():
        raise options.OptionError(f"network {mode} not found")
    return mode


def linux_flags_default_tmpfs() -> int:
    from agent.runtime import linux

    return linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def _mount_record(
    kind: str, source: str, request: options.MountRequest, name: str = ""
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "Type": kind,
        "Source": source,
        "Destination": request.target,
        "Mode": "ro" if request.readonly else "",
        "RW": not request.readonly,
        "Propagation": request.propagation or ("rprivate" if kind == "bind" else ""),
    }
    if kind == "volume":
        record.update(Name=name, Driver="local", Anonymous=not request.source)
    return record


def _cap_names(caps: set[str]) -> set[str]:
    return {"CAP_" + c for c in caps}


def write_file(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def merge_image_config(body: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """Docker's create: the request's Config with the image's defaults filled in."""
    config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
    config["Env"] = options.merge_env(image.get("Env"), body.get("Env"))
    if body.get("Entrypoint") is not None:
        entrypoint = body["Entrypoint"]
        config["Entrypoint"] = [entrypoint] if isinstance(entrypoint, str) else entrypoint
        if not body.get("Cmd"):
            config["Cmd"] = None  # a new entrypoint drops the image's CMD
    else:
        config["Entrypoint"] = image.get("Entrypoint")
        if not body.get("Cmd"):
            config["Cmd"] = image.get("Cmd")
    if isinstance(config.get("Cmd"), str):
        config["Cmd"] = [config["Cmd"]]
    for key in ("WorkingDir", "User", "StopSignal"):
        if not config.get(key) and image.get(key):
            config[key] = image[key]
    labels = dict(image.get("Labels") or {})
    labels.update(body.get("Labels") or {})
    config["Labels"] = labels
    volumes = dict(image.get("Volumes") or {})
    volumes.update(body.get("Volumes") or {})
    config["Volumes"] = volumes or None
    exposed = dict(image.get("ExposedPorts") or {})
    exposed.update(body.get("ExposedPorts") or {})
    config["ExposedPorts"] = exposed or None
    check = health.merge_healthcheck(body.get("Healthcheck"), image.get("Healthcheck"))
    if check is not None:
        config["Healthcheck"] = check
    config["Image"] = body.get("Image")
    return config


def console_size(value: object) -> tuple[int, int] | None:
    """ConsoleSize as the CLI sends it ([rows, cols]); [0, 0] or junk means unknown."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    try:
        rows, cols = int(value[0]), int(value[1])
    except (TypeError, ValueError):
        return None
    return (rows, cols) if 0 < rows < 65536 and 0 < cols < 65536 else None
