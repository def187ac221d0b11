"""A container's root filesystem: overlayfs over the image's layers, plus the files Docker
manages in it (/etc/hostname, /etc/hosts, /etc/resolv.conf) and the mount points it needs.

The overlay is mounted in the daemon's own mount namespace at ``rootfs/merged`` while the
container runs (so `docker cp` and `export` can read it); the container's init bind-mounts
it again inside its private namespace and pivots into it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from agent.runtime import linux
from agent.runtime.rootpath import ensure_file_in, makedirs_in

# Paths every container needs to exist in its root (made in the upper layer when missing,
# as Docker's "-init" layer does).
_DIRS = ("/proc", "/sys", "/dev", "/etc")
ETC_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")

HOSTS_HEADER = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


class RootfsError(Exception):
    pass


def is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                if line.split()[4] == real:
                    return True
    except OSError:
        pass
    return False


def mount_overlay(
    layers: Sequence[str], upper: str, work: str, merged: str, nodev: bool = False
) -> None:
    """Mount the layers (lowest first) with ``upper`` on top at ``merged``. Device nodes
    in it work (as in Docker) unless ``nodev``: the device filter decides which."""
    for path in (upper, work, merged):
        os.makedirs(path, mode=0o755, exist_ok=True)
    if is_mounted(merged):
        return
    lower = ":".join(reversed(layers))  # overlayfs lists the top-most lower layer first
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if len(options) >= 4096:
        raise RootfsError(f"the image has too many layers ({len(layers)}) for one overlay mount")
    try:
        linux.mount("overlay", merged, "overlay", linux.MS_NODEV if nodev else 0, options)
    except OSError as error:
        raise RootfsError(f"cannot mount the container's root filesystem: {error}") from None


def unmount(merged: str) -> None:
    for _ in range(2):
        try:
            linux.umount(merged, linux.MNT_DETACH)
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise


def prepare(merged: str, workdir: str, targets: Sequence[tuple[str, bool]]) -> None:
    """Make the directories and files mounts land on: the kernel filesystems, the managed
    /etc files, the working directory and each user mount's target (dir, or file for a
    bind of a file)."""
    for path in _DIRS:
        makedirs_in(merged, path)
    for path in ETC_FILES:
        ensure_file_in(merged, path)
    if workdir and workdir != "/":
        makedirs_in(merged, workdir)
    for target, is_file in targets:
        if is_file:
            ensure_file_in(merged, target)
        else:
            makedirs_in(merged, target)


def hosts_file(hostname: str, address: str, extra_hosts: Sequence[str]) -> str:
    lines = [HOSTS_HEADER]
    for entry in extra_hosts:
        name, _, ip = entry.partition(":")
        if not ip:
            raise ValueError(f"invalid argument {entry!r} for --add-host: expected host:ip")
        lines.append(f"{ip}\t{name}\n")
    if address:
        lines.append(f"{address}\t{hostname}\n")
    return "".join(lines)


def resolv_conf(
    host_resolv: str, dns: Sequence[str], search: Sequence[str], options: Sequence[str]
) -> str:
    """The container's resolv.conf: the host's (the guest's) servers unless --dns is given.

    Loopback servers mean nothing inside a network namespace, so they are dropped (with
    none left, the guest's user-mode DNS relay at 10.0.2.3 is not assumed: Docker then uses
    public servers, which an offline VM cannot reach; an empty list is more honest).
    """
    servers = list(dns)
    domains = list(search)
    opts = list(options)
    if not servers:
        for line in host_resolv.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver" and not words[1].startswith("127."):
                servers.append(words[1])
            elif words and words[0] == "search" and not domains:
                domains = words[1:]
            elif words and words[0] == "options" and not opts:
                opts = words[1:]
    text = "".join(f"nameserver {s}\n" for s in servers)
    if domains:
        text += "search " + " ".join(domains) + "\n"
    if opts:
        text += "options " + " ".join(opts) + "\n"
    return text
