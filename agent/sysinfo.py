"""Facts about the machine the engine runs on, named the way the Engine API names them."""

from __future__ import annotations

import os
import sys
import time

import agent

# uname machine -> Go's GOARCH, which is what Docker clients expect in Arch fields
_GO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
GIT_COMMIT_ENV = "VMCTL_AGENT_GIT_COMMIT"
BUILD_TIME_ENV = "VMCTL_AGENT_BUILD_TIME"


def go_arch(machine: str | None = None) -> str:
    """The architecture in Go's naming (x86_64 -> amd64); unknown names pass through."""
    machine = machine or os.uname().machine
    return _GO_ARCH.get(machine, machine)


def kernel_version() -> str:
    return os.uname().release


def python_version() -> str:
    """E.g. "python3.11.2": reported where dockerd reports its Go version."""
    return "python{}.{}.{}".format(*sys.version_info[:3])


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5), with shell-style quotes removed."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        quote = value[:1]
        if quote in ("'", '"') and len(value) >= 2 and value.endswith(quote):
            value = value[1:-1]
            if quote == '"':
                import re  # (not at the top: the agent's start-up never needs it)

                # what a double-quoted value may escape
                value = re.sub(r'\\(["\\$`])', r"\1", value)
        fields[key.strip()] = value
    return fields


def os_description(paths: tuple[str, ...] = OS_RELEASE_PATHS) -> str:
    """PRETTY_NAME from os-release (e.g. "Debian GNU/Linux 12 (bookworm)"), else "Linux"."""
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                fields = parse_os_release(file.read())
        except OSError:
            continue
        return fields.get("PRETTY_NAME") or fields.get("NAME") or "Linux"
    return "Linux"


def git_commit() -> str:
    """The commit the agent was built from, as the image builder exports it; else "unknown"."""
    return os.environ.get(GIT_COMMIT_ENV, "").strip() or "unknown"


def build_time() -> str:
    """When the agent was built: from the environment, else the package's mtime (RFC 3339).

    The docker CLI re-formats an RFC 3339 time for display and prints anything else as is.
    """
    value = os.environ.get(BUILD_TIME_ENV, "").strip()
    if value:
        return value
    try:
        mtime = os.stat(agent.__file__).st_mtime
    except (OSError, TypeError):
        return "unknown"
    if mtime <= 0:  # reproducible archives often zero their mtimes: that is not a build time
        return "unknown"
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000+00:00", time.gmtime(mtime))
