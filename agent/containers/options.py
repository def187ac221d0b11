"""Parse the parts of Docker's HostConfig that are strings with their own little syntax.

Each parser raises :class:`OptionError` (a 400 to API clients) with Docker's wording where
it is known, so a bad `--ulimit` or `-v` fails at create time and nothing is half-made.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

from agent.runtime import devices, linux


class OptionError(ValueError):
    """An invalid option in a create request."""


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ULIMITS: dict[str, int] = {
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": 10,  # RLIMIT_LOCKS; the resource module has no name for it
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}

PROPAGATION: dict[str, int] = {
    "private": linux.MS_PRIVATE,
    "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED,
    "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE,
    "rslave": linux.MS_SLAVE | linux.MS_REC,
}

_FLAG_OPTIONS: dict[str, tuple[int, bool]] = {  # option -> (flag, set it?)
    "ro": (linux.MS_RDONLY, True),
    "rw": (linux.MS_RDONLY, False),
    "nosuid": (linux.MS_NOSUID, True),
    "suid": (linux.MS_NOSUID, False),
    "nodev": (linux.MS_NODEV, True),
    "dev": (linux.MS_NODEV, False),
    "noexec": (linux.MS_NOEXEC, True),
    "exec": (linux.MS_NOEXEC, False),
    "noatime": (linux.MS_NOATIME, True),
    "relatime": (linux.MS_RELATIME, True),
    "strictatime": (linux.MS_STRICTATIME, True),
    "sync": (linux.MS_SYNCHRONOUS, True),
}


def device_rules(items: list[str] | None) -> tuple[devices.Rule, ...]:
    """--device-cgroup-rule: extra allow rules such as ``c 42:* rmw``."""
    try:
        return tuple(devices.Rule.parse(str(item)) for item in items or [])
    except ValueError as error:
        raise OptionError(str(error)) from None


def ulimits(items: list[dict[str, Any]] | None) -> list[tuple[int, int, int]]:
    result = []
    for item in items or []:
        name = str(item.get("Name", ""))
        if name not in ULIMITS:
            raise OptionError(f"invalid ulimit type: {name}")
        soft, hard = int(item.get("Soft", 0)), int(item.get("Hard", 0))
        if soft > hard:
            raise OptionError(
                f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )
        result.append((ULIMITS[name], _unlimited(soft), _unlimited(hard)))
    return result


def _unlimited(value: int) -> int:
    return resource.RLIM_INFINITY if value < 0 else value


@dataclass(frozen=True)
class SecurityOptions:
    no_new_privileges: bool = False
    seccomp: str | None = None  # None: default profile; "unconfined"; else a profile's JSON


def security_options(items: list[str] | None) -> SecurityOptions:
    no_new_privileges = False
    seccomp: str | None = None
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            key, sep, value = item.partition(":")
        if key == "no-new-privileges":
            if value in ("", "true"):
                no_new_privileges = True
            elif value == "false":
                no_new_privileges = False
            else:
                raise OptionError(f"invalid --security-opt 2: {item!r}")
        elif key == "seccomp":
            if not value:
                raise OptionError(f"invalid --security-opt: {item!r}")
            seccomp = value
        elif key in ("apparmor", "label", "systempaths", "writable-cgroups", "mask", "unmask"):
            continue  # no LSM in the guest; the path options are not supported yet
        else:
            raise OptionError(f"invalid --security-opt 1: {item!r}")
    return SecurityOptions(no_new_privileges, seccomp)


def mount_options(text: str, default_flags: int = 0) -> tuple[int, str]:
    """ "ro,noexec,size=64m" → (flags, "size=64m") for a tmpfs or a remount."""
    flags = default_flags
    data = []
    for option in filter(None, (o.strip() for o in text.split(","))):
        if option in _FLAG_OPTIONS:
            flag, on = _FLAG_OPTIONS[option]
            flags = flags | flag if on else flags & ~flag
        else:
            data.append(option)
    return flags, ",".join(data)


@dataclass(frozen=True)
class MountRequest:
    """One -v, --mount or --tmpfs, before volumes are resolved to host paths."""

    kind: str  # "bind", "volume" or "tmpfs"
    source: str  # host path, volume name ("" for anonymous), or ""
    target: str
    readonly: bool = False
    propagation: str = ""
    options: str = ""  # tmpfs data options
    nocopy: bool = False
    recursive: bool = True
    create_source: bool = False  # -v creates a missing host directory; --mount does not


def _check_target(target: str, spec: str) -> None:
    if not target.startswith("/"):
        raise OptionError(f"invalid mount config: mount path must be absolute: {spec!r}")
    if target == "/":
        raise OptionError("invalid specification: destination can't be '/'")


def parse_bind(spec: str) -> MountRequest:
    """A -v/--volume (HostConfig.Binds) entry: src:dst[:opts]."""
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        raise OptionError(f"invalid volume specification: '{spec}'")
    source, target = parts[0], parts[1]
    options = parts[2].split(",") if len(parts) == 3 else []
    readonly = False
    propagation = ""
    nocopy = False
    for option in options:
        if option in ("ro", "rw"):
            readonly = option == "ro"
        elif option in PROPAGATION:
            propagation = option
        elif option == "nocopy":
            nocopy = True
        elif option in ("z", "Z", "consistent", "cached", "delegated", ""):
            continue
        else:
            raise OptionError(f"invalid mode: {option}")
    _check_target(target, spec)
    if source.startswith("/"):
        return MountRequest("bind", source, target, readonly, propagation, create_source=True)
    if "/" in source:
        raise OptionError(f"invalid volume specification: '{spec}': a host path must be absolute")
    return MountRequest("volume", source, target, readonly, nocopy=nocopy)


def parse_mount(item: dict[str, Any]) -> MountRequest:
    """A --mount entry (HostConfig.Mounts)."""
    kind = str(item.get("Type", "")).lower()
    target = str(item.get("Target", ""))
    source = str(item.get("Source", "") or "")
    readonly = bool(item.get("ReadOnly", False))
    if kind not in ("bind", "volume", "tmpfs"):
        raise OptionError(f"mount type unknown or not supported: {kind or '(empty)'}")
    _check_target(target, target)
    if kind == "bind":
        options = item.get("BindOptions") or {}
        if not source.startswith("/"):
            raise OptionError(
                'invalid mount config for type "bind": invalid mount path: '
                f"'{source}' mount path must be absolute"
            )
        propagation = str(options.get("Propagation", "") or "")
        if propagation and propagation not in PROPAGATION:
            raise OptionError(f"invalid propagation mode: {propagation}")
        return MountRequest(
            "bind",
            source,
            target,
            readonly,
            propagation,
            recursive=not options.get("NonRecursive", False),
            create_source=bool(options.get("CreateMountpoint", False)),
        )
    if kind == "volume":
        options = item.get("VolumeOptions") or {}
        return MountRequest(
            "volume", source, target, readonly, nocopy=bool(options.get("NoCopy", False))
        )
    if source:
        raise OptionError('invalid mount config for type "tmpfs": source must not be set')
    tmpfs = item.get("TmpfsOptions") or {}
    data = []
    if tmpfs.get("SizeBytes"):
        data.append(f"size={int(tmpfs['SizeBytes'])}")
    if tmpfs.get("Mode"):
        data.append(f"mode={int(tmpfs['Mode']):o}")
    return MountRequest("tmpfs", "", target, readonly, options=",".join(data))


def parse_tmpfs(target: str, options: str) -> MountRequest:
    _check_target(target, target)
    return MountRequest("tmpfs", "", target, options=options)


def restart_policy(policy: dict[str, Any] | None, auto_remove: bool) -> tuple[str, int]:
    policy = policy or {}
    name = str(policy.get("Name", "") or "no")
    retries = int(policy.get("MaximumRetryCount", 0) or 0)
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise OptionError(f"invalid restart policy '{name}'")
    if retries and name != "on-failure":
        raise OptionError(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        )
    if retries < 0:
        raise OptionError("invalid restart policy: maximum retry count cannot be negative")
    if auto_remove and name != "no":
        raise OptionError("can't create 'AutoRemove' container with restart policy")
    return name, retries


def merge_env(image_env: list[str] | None, user_env: list[str] | None) -> list[str]:
    """The image's environment overridden by the user's, key by key, order kept."""
    merged: dict[str, str] = {}
    for item in [*(image_env or []), *(user_env or [])]:
        key = item.split("=", 1)[0]
        merged[key] = item
    return list(merged.values())
